"""A real cluster for system tests: `vrouter up` on a generated config with unique names.

Every name (cluster, pods, namespaces, underlay addresses) carries a random prefix, so parallel
runs do not collide; `stop` and the session finaliser leave nothing behind, also on failure.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from vrouter.host import state
from vrouter.model import config
from vrouter.node import control

READY_TIMEOUT = 180.0   # the first start in a fresh clone compiles the fast path


def new_prefix() -> str:
    return "vt" + secrets.token_hex(3)


_used_underlays: set[tuple[int, int]] = set()


def unique_underlay_octets() -> tuple[int, int]:
    """Two random octets for 127.A.B.N: distinct within this run, unlikely to clash across runs."""
    while True:
        pair = (secrets.randbelow(250) + 2, secrets.randbelow(200) + 20)
        if pair not in _used_underlays:
            _used_underlays.add(pair)
            return pair


def netns_exec(netns: str, *cmd: str, timeout=60, check=False) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True,
                          timeout=timeout, check=check)


def iperf3(server_ns: str, server_ip: str, client_ns: str, *args: str, seconds: float = 1) -> dict:
    """One iperf3 run between two namespaces (a one-off server); its JSON report."""
    netns_exec(server_ns, "iperf3", "-s", "-1", "-D", check=True)
    wait_for(lambda: ":5201" in netns_exec(server_ns, "ss", "-ltn").stdout, what="iperf3 server")
    result = netns_exec(client_ns, "iperf3", "-J", "-t", f"{seconds:g}", "-c", server_ip, *args,
                        timeout=seconds + 60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    return json.loads(result.stdout)


def snmp(netns: str) -> dict[str, dict[str, int]]:
    """A namespace's /proc/net/snmp by protocol: {"Ip": {"InReceives": ...}, "Udp": ...}."""
    found: dict[str, dict[str, int]] = {}
    lines = [line.split() for line in netns_exec(netns, "cat", "/proc/net/snmp").stdout.splitlines()]
    for names, values in zip(lines[0::2], lines[1::2]):
        found[names[0].rstrip(":")] = dict(zip(names[1:], map(int, values[1:])))
    return found


def udp_counters(netns: str) -> dict[str, int]:
    """The Udp: line of a namespace's /proc/net/snmp (InDatagrams, RcvbufErrors, ...)."""
    return snmp(netns)["Udp"]


def udp_delivered(before: dict, after: dict) -> int:
    """UDP datagrams a namespace's IP layer handed to UDP between two snmp() readings: every
    delivered datagram that was neither TCP nor ICMP. (Udp InDatagrams counts only what the
    application read: a datagram still queued when iperf3's server closes counts nowhere.)"""
    def delta(proto, key):
        return after[proto][key] - before[proto][key]
    return delta("Ip", "InDelivers") - delta("Tcp", "InSegs") - delta("Icmp", "InMsgs")


def child_env() -> dict:
    """The environment for `python -m vrouter` run from another directory: this checkout first."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def attached(cluster_name: str) -> list[str]:
    """The pods attached at runtime that the (file) store records."""
    from vrouter.store.filestore import FileStore
    return sorted(json.loads(item.value)["name"]
                  for item in FileStore(cluster_name).read("attachments/").values())


def list_netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def letters(k: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa': node k's letter (node-a, pod PREFIX-a1)."""
    name = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        name = chr(97 + r) + name
    return name


class Cluster:
    def __init__(self, tmp_path: Path, pods_per_node=(2, 2), port=4789, extra_pods=(),
                 mtu=1500, underlays=None, services="", prefix=None, options=None,
                 kernel_nodes=()):
        self.prefix = prefix or new_prefix()
        if underlays is None:
            a, b = unique_underlay_octets()
            underlays = [f"127.{a}.{b}.{k + 1}" for k in range(len(pods_per_node))]
        self.nodes = [{"name": f"node-{letters(k)}", "underlay": underlays[k],
                       "podCIDR": f"10.244.{k + 1}.0/24"} for k in range(len(pods_per_node))]
        for k in kernel_nodes:   # served by `vrouter kernel-node`: the others must know
            self.nodes[k]["kernel"] = True
        self.pods = []
        for k, count in enumerate(pods_per_node):
            for j in range(count):
                self.pods.append({"name": f"{self.prefix}-{letters(k)}{j + 1}",
                                  "node": self.nodes[k]["name"]})
        self.pods.extend(extra_pods)
        self.doc = {"cluster": {"name": self.prefix, "podCIDR": "10.244.0.0/16",
                                "overlay": {"vni": 1, "port": port, "mtu": mtu},
                                **(options or {})},
                    "nodes": self.nodes, "pods": self.pods}
        self.path = tmp_path / f"{self.prefix}.yaml"
        self.path.write_text(yaml.safe_dump(self.doc, sort_keys=False) + services)
        self.pod_ips = {p.name: str(p.ip)
                        for p in config.load(self.path, check_host=False).pods}
        self.proc: subprocess.Popen | None = None
        self.netns_before = list_netns()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, python_flags: tuple[str, ...] = (), up_args: tuple[str, ...] = (),
              env: dict | None = None, timeout: float | None = None) -> "Cluster":
        # started as a user would, from the file's directory with a relative path: commands
        # that name the running cluster from elsewhere must still find its file
        self.proc = subprocess.Popen([sys.executable, *python_flags, "-m", "vrouter", "up",
                                      self.path.name, *up_args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=self.path.parent, env={**child_env(), **(env or {})})
        self.lines: list[str] = []   # what up (and its nodes) wrote, as it comes
        is_up = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith(f"vrouter: cluster {self.prefix!r} is up"):
                    is_up.set()
        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        # up says so once every node is ready, and from then on it supervises them
        deadline = time.monotonic() + (timeout or READY_TIMEOUT)
        while not is_up.wait(0.05):
            if self.proc.poll() is not None:
                self.reader.join(10)
                raise RuntimeError(f"vrouter up exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("cluster not ready in time")
        return self

    def output(self) -> str:
        return "".join(self.lines)

    def _ready(self, node: str) -> bool:
        try:
            return self.status(node)["ready"]
        except (OSError, ValueError, KeyError):
            return False

    def stop(self, sig=signal.SIGINT) -> str:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run([sys.executable, "-m", "vrouter", "down", str(self.path)],
                       capture_output=True)
        if self.proc:
            self.reader.join(30)   # the pipe ends when up and every node have gone
        return self.output() if self.proc else ""

    def leftovers(self) -> list[str]:
        """Namespaces, devices, processes and state this cluster still has on the machine."""
        found = [f"netns {n}" for n in list_netns() - self.netns_before if n.startswith(self.prefix)]
        if os.path.isdir("/etc/netns"):
            found += [f"/etc/netns/{n}" for n in os.listdir("/etc/netns")
                      if n.startswith(self.prefix)]
        ps = subprocess.run(["pgrep", "-f", self.path.name], capture_output=True, text=True)
        found += [f"process {pid}" for pid in ps.stdout.split()]
        if state.cluster_dir(self.prefix).exists():
            found.append(f"state dir {state.cluster_dir(self.prefix)}")
        return found

    # --- using it -----------------------------------------------------------------------------

    def status(self, node: str) -> dict:
        return control.request(state.socket_path(self.prefix, node), "status")

    def pod(self, short: str) -> str:
        """'a1' -> the pod's (and netns') full name."""
        return f"{self.prefix}-{short}"

    def ip(self, short: str) -> str:
        return self.pod_ips.get(short) or self.pod_ips[self.pod(short)]

    def sh(self, short: str, *cmd: str, timeout=60, check=False) -> subprocess.CompletedProcess:
        pod = short if short in list_netns() else self.pod(short)
        return netns_exec(pod, *cmd, timeout=timeout, check=check)

    def counters(self, node: str) -> dict:
        return self.status(node)["counters"]


def wait_for(predicate, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class SplitCluster(Cluster):
    """Two nodes as two machines: each in a network namespace of its own (PREFIX-u1, PREFIX-u2),
    joined by a veth underlay 192.0.2.1/.2 (TEST-NET-1, only ever inside these namespaces).
    Each node is served by vrouter (`vrouter run` under `ip netns exec`) or by the kernel
    (`vrouter kernel-node` there)."""

    UNDERLAY = ("192.0.2.1", "192.0.2.2")

    def __init__(self, tmp_path: Path, kinds=("vrouter", "kernel"), pods_per_node=(1, 1)):
        self.kinds = kinds
        super().__init__(tmp_path, pods_per_node=pods_per_node, underlays=self.UNDERLAY,
                         kernel_nodes=[k for k, kind in enumerate(kinds) if kind == "kernel"])
        self.hosts = [f"{self.prefix}-u{k + 1}" for k in range(len(kinds))]
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> "SplitCluster":
        from pyroute2 import IPRoute
        from pyroute2 import netns as pr_netns
        for host in self.hosts:
            pr_netns.create(host)
        with IPRoute() as ipr:
            ipr.link("add", ifname=f"{self.prefix}x", kind="veth", peer={"ifname": f"{self.prefix}y"})
            for k, (host, end) in enumerate(zip(self.hosts, "xy")):
                index = ipr.link_lookup(ifname=f"{self.prefix}{end}")[0]
                ipr.link("set", index=index, net_ns_fd=host, ifname="ul0")
        for host, address in zip(self.hosts, self.UNDERLAY):
            with IPRoute(netns=host) as ipr:
                for name in ("lo", "ul0"):
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                ipr.addr("add", index=ipr.link_lookup(ifname="ul0")[0], address=address,
                         prefixlen=24)
        for host, kind, node in zip(self.hosts, self.kinds, self.nodes):
            command = "run" if kind == "vrouter" else "kernel-node"
            argv = ["ip", "netns", "exec", host, sys.executable, "-m", "vrouter", command,
                    str(self.path), "--node", node["name"]]
            if kind == "vrouter":
                self.procs[node["name"]] = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                            stderr=subprocess.STDOUT, text=True)
            else:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, result.stdout + result.stderr
        deadline = time.monotonic() + READY_TIMEOUT
        for name, proc in self.procs.items():
            while not self._ready(name):
                assert proc.poll() is None, f"node {name} exited:\n{proc.stdout.read()}"
                assert time.monotonic() < deadline, f"node {name} not ready in time"
                time.sleep(0.05)
        return self

    def leftovers(self) -> list[str]:
        return super().leftovers() + [f"netns {h}" for h in self.hosts if h in list_netns()]

    def stop(self, sig=signal.SIGINT) -> str:
        from pyroute2 import netns as pr_netns
        output = ""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    output += proc.communicate(timeout=60)[0]
                except subprocess.TimeoutExpired:
                    proc.kill()
                    output += proc.communicate()[0]
        for host, kind, node in zip(self.hosts, self.kinds, self.nodes):
            if kind == "kernel" and host in list_netns():
                netns_exec(host, sys.executable, "-m", "vrouter", "kernel-node", str(self.path),
                           "--node", node["name"], "--down")
        subprocess.run([sys.executable, "-m", "vrouter", "down", str(self.path)],
                       capture_output=True)
        for host in self.hosts:
            if host in list_netns():
                pr_netns.remove(host)
        return output
