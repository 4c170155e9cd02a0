"""A cluster of separate hosts around a real etcd, for the etcd datastore's acceptance tests.

PREFIX-lan is the network between the hosts: bridge br0 with etcd on 192.0.2.254 and .253
(TEST-NET-1, only ever inside these namespaces). Each host is a network namespace of its own (PREFIX-h1,
...) whose ul0 (192.0.2.K/24) is a port of br0, and runs one `vrouter run CONFIG --node nK
--underlay 192.0.2.K`: no node is listed in the cluster file, each registers itself. Commands
that talk to etcd (apply, get, delete, down) run inside PREFIX-lan; the control sockets are
files, so status works from anywhere. `stop` ends the nodes, etcd and every namespace, also
after a failure.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.etcdserver import EtcdServer
from tests.system.cluster import (
    READY_TIMEOUT, child_env, list_netns, netns_exec, new_prefix,
)
from vrouter.host import state
from vrouter.ops import control

ETCD_ADDRESS = "192.0.2.254"
ETCD_ALSO = "192.0.2.253"   # etcd answers here too: the cluster file has both endpoints
# TCP buffers of the LAN's and the hosts' own stacks (etcd and its clients; the pods' traffic
# has stacks of its own): 64 KiB at most, so that a watcher that stops reading falls behind
# etcd after a few hundred events, as on a slow link, instead of after tens of megabytes that
# autotuned loopback-fast buffers hold
SMALL_TCP = ["net.ipv4.tcp_rmem=4096 16384 65536", "net.ipv4.tcp_wmem=4096 16384 65536"]


def sh(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr}")


class EtcdCluster:
    def __init__(self, tmp_path: Path, hosts: int = 3, lease_ttl: int = 5, options=None):
        self.prefix = new_prefix()
        self.tmp = tmp_path
        self.lan = f"{self.prefix}-lan"
        self.hosts = [f"{self.prefix}-h{k + 1}" for k in range(hosts)]
        self.names = [f"n{k + 1}" for k in range(hosts)]
        self.underlays = [f"192.0.2.{k + 1}" for k in range(hosts)]
        self.lease_ttl = lease_ttl
        self.etcd = EtcdServer(address=ETCD_ADDRESS, netns=self.lan, also=(ETCD_ALSO,))
        self.doc = {"cluster": {"name": self.prefix, "podCIDR": "10.244.0.0/16",
                                "datastore": {"type": "etcd", "prefix": "/vrouter",
                                              "endpoints": self.etcd.urls,
                                              "leaseTTL": lease_ttl},
                                **(options or {})}}
        self.path = tmp_path / f"{self.prefix}.yaml"
        self.path.write_text(yaml.safe_dump(self.doc, sort_keys=False))
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.netns_before = list_netns()

    # --- the hosts and etcd -----------------------------------------------------------------

    def start(self) -> "EtcdCluster":
        try:
            sh("ip", "netns", "add", self.lan)
            sh("ip", "-n", self.lan, "link", "set", "lo", "up")
            # etcd's closed connections stop repeating their FIN soon, as when its host went
            # down: a client cut off meanwhile hears nothing of them afterwards
            sh("ip", "netns", "exec", self.lan, "sysctl", "-qw", *SMALL_TCP,
               "net.ipv4.tcp_orphan_retries=1")
            sh("ip", "-n", self.lan, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.lan, "addr", "add", f"{ETCD_ADDRESS}/24", "dev", "br0")
            sh("ip", "-n", self.lan, "addr", "add", f"{ETCD_ALSO}/24", "dev", "br0")
            sh("ip", "-n", self.lan, "link", "set", "br0", "up")
            for k, host in enumerate(self.hosts):
                sh("ip", "netns", "add", host)
                sh("ip", "-n", host, "link", "set", "lo", "up")
                sh("ip", "netns", "exec", host, "sysctl", "-qw", *SMALL_TCP)
                a, b = f"{self.prefix}a{k + 1}", f"{self.prefix}b{k + 1}"
                sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
                sh("ip", "link", "set", a, "netns", host, "name", "ul0")
                sh("ip", "link", "set", b, "netns", self.lan)
                sh("ip", "-n", self.lan, "link", "set", b, "master", "br0", "up")
                sh("ip", "-n", host, "addr", "add", f"{self.underlays[k]}/24", "dev", "ul0")
                sh("ip", "-n", host, "link", "set", "ul0", "up")
            self.etcd.start()
        except BaseException:
            self.stop()
            raise
        return self

    # --- nodes ------------------------------------------------------------------------------

    def start_node(self, k: int, wait: bool = True, extra: tuple = ()) -> subprocess.Popen:
        """Node nK+1 in its host; waits until it is ready (unless `wait` is False)."""
        name = self.names[k]
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.hosts[k], sys.executable, "-m", "vrouter",
                 "--log-format", "text", "run", str(self.path), "--node", name,
                 "--underlay", self.underlays[k], *extra],
                stdout=out, stderr=subprocess.STDOUT, env=child_env())
        self.procs[name] = proc
        if wait:
            self.wait_ready(name)
        return proc

    def wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready(name):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"node {name} exited ({proc.returncode}):\n"
                                     f"{self.log(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"node {name} not ready in time:\n{self.log(name)}")
            time.sleep(0.05)

    def _ready(self, name: str) -> bool:
        try:
            return self.status(name)["ready"]
        except (OSError, ValueError, KeyError):
            return False

    def log(self, name: str) -> str:
        try:
            return self.logs[name].read_text(errors="replace")[-6000:]
        except (KeyError, OSError):
            return ""

    def status(self, name: str) -> dict:
        return control.request(state.socket_path(self.prefix, name), "status")

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def start_all(self) -> "EtcdCluster":
        # compiled once first, as `vrouter up` does: three nodes compiling at once on two cores
        # after a change to the fast path outlast READY_TIMEOUT
        subprocess.run([sys.executable, "-c", "from vrouter.node.compiling import "
                        "ensure_compiled; ensure_compiled()"], env=child_env(), check=True,
                       timeout=READY_TIMEOUT)
        for k in range(len(self.hosts)):
            self.start_node(k, wait=False)
        for name in self.names:
            self.wait_ready(name)
        return self

    # --- commands -----------------------------------------------------------------------------

    def vrouter(self, *args: str, timeout=120) -> subprocess.CompletedProcess:
        """`python -m vrouter ARGS` inside the LAN, where etcd is."""
        return subprocess.run(["ip", "netns", "exec", self.lan, sys.executable, "-m", "vrouter",
                               *args], capture_output=True, text=True, timeout=timeout,
                              env=child_env())

    def apply(self, text: str, name: str = "manifest.yaml") -> subprocess.CompletedProcess:
        path = self.tmp / name
        path.write_text(text)
        result = self.vrouter("apply", "-f", str(path), "--cluster", str(self.path))
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def put_many(self, key: str, count: int, size: int) -> None:
        """`count` puts of `key` under the cluster's prefix, straight into etcd: a Namespace
        whose annotation (`size` bytes) changes every time."""
        script = (
            "import json, sys, trio\n"
            "from vrouter.store import etcd\n"
            "url, key, count, size = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), "
            "int(sys.argv[4])\n"
            "name = key.decode().rsplit('/', 1)[1]\n"
            "async def main():\n"
            "    async with etcd.Client([url]) as c:\n"
            "        for k in range(count):\n"
            "            doc = {'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {\n"
            "                'name': name, 'annotations': {'test/pad': str(k) * (size // "
            "len(str(k)))}}}\n"
            "            await c.put(key, json.dumps(doc).encode())\n"
            "trio.run(main)\n")
        full = f"{self.doc['cluster']['datastore']['prefix']}/{self.prefix}/{key}"
        subprocess.run(["ip", "netns", "exec", self.lan, sys.executable, "-c", script,
                        self.etcd.url, full, str(count), str(size)], check=True, timeout=120,
                       env=child_env())

    def get(self, kind: str, *args: str) -> dict:
        result = self.vrouter("get", kind, *args, "-o", "json", "--cluster", str(self.path))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def pod(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def sh(self, short: str, *cmd: str, timeout=60) -> subprocess.CompletedProcess:
        return netns_exec(self.pod(short), *cmd, timeout=timeout)

    # --- the end ------------------------------------------------------------------------------

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.lan in list_netns():
            if not self.etcd.running:
                try:
                    self.etcd.start()   # `down` releases what the nodes left in it
                except RuntimeError:
                    pass
            self.vrouter("down", str(self.path))
        self.etcd.close()
        # what is left on this machine (/run/vrouter/PREFIX), from a namespace of its own with
        # no route anywhere: its attempt to reach etcd must not leave it (from the host's own
        # namespace 192.0.2.0/24 may well be a real network)
        scratch = f"{self.prefix}-down"
        subprocess.run(["ip", "netns", "add", scratch], capture_output=True)
        try:
            subprocess.run(["ip", "netns", "exec", scratch, sys.executable, "-m", "vrouter",
                            "down", str(self.path)], capture_output=True, env=child_env(),
                           timeout=120)
        finally:
            subprocess.run(["ip", "netns", "del", scratch], capture_output=True)
        for netns in [*self.hosts, self.lan]:
            if netns in list_netns():
                subprocess.run(["ip", "netns", "del", netns], capture_output=True)

    def leftovers(self) -> list[str]:
        found = [f"netns {n}" for n in list_netns() - self.netns_before
                 if n.startswith(self.prefix)]
        if os.path.isdir("/etc/netns"):
            found += [f"/etc/netns/{n}" for n in os.listdir("/etc/netns")
                      if n.startswith(self.prefix)]
        ps = subprocess.run(["pgrep", "-f", self.path.name], capture_output=True, text=True)
        found += [f"process {pid}" for pid in ps.stdout.split()]
        if state.cluster_dir(self.prefix).exists():
            found.append(f"state dir {state.cluster_dir(self.prefix)}: "
                         f"{os.listdir(state.cluster_dir(self.prefix))}")
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
                  if f" {self.prefix}" in line]
        return found
