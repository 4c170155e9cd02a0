"""Faults and restarts on a real cluster: `vrouter up` restarts a node killed under traffic and
it comes back with its pods (the file's and a runtime one); `vrouter down` cleans up after a
killed `up`; a pod whose netns vanishes is detached without the node spinning; nodes import the
launcher's code; the control socket and the metrics endpoint hold up against idle and greedy
clients; `vrouter down` never signals a reused pid."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.system.cluster import Cluster, attached as attached_pods, list_netns, netns_exec, wait_for
from tests.system.test_live_pods import namespaces, vrouter
from tests.system.test_metrics import free_port_pair
from vrouter.host import state

RESUME_WITHIN = 5.0   # seconds from the kill to the first answer through the restarted node


class Pinger:
    """`ping -D` from a pod in the background: the wall-clock times of its replies."""

    def __init__(self, cluster, pod: str, dst: str, interval: float = 0.1):
        self.dst = dst
        self.replies: list[float] = []
        self.proc = subprocess.Popen(["ip", "netns", "exec", cluster.pod(pod), "ping", "-D",
                                      "-n", "-i", str(interval), "-W", "1", dst],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            match = re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)
            if match:
                self.replies.append(float(match.group(1)))

    def first_reply_after(self, moment: float) -> float | None:
        return next((t for t in self.replies if t > moment), None)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(10)


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (every thread), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])   # fields 14 and 15


def node_processes(cluster) -> list[str]:
    ps = subprocess.run(["pgrep", "-f", f"run {cluster.path.name} --node"], capture_output=True,
                        text=True)
    return ps.stdout.split()


def tun_devices() -> set[str]:
    """TUN/TAP devices of this (the host's) network namespace."""
    out = subprocess.run(["ip", "-o", "link", "show", "type", "tun"], capture_output=True,
                         text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def ports_of(cluster, node: str) -> set[str]:
    return {p["pod"] for p in cluster.status(node)["ports"]}


def test_a_killed_node_comes_back_with_its_pods_and_a_killed_up_is_cleaned_by_down(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1))
    taps_before = tun_devices()
    with namespaces(f"{cluster.prefix}-rt", f"{cluster.prefix}-gone") as (rt, gone):
        for netns in (rt, gone):
            attached = vrouter("attach", cluster.prefix, "--node", "node-b", "--netns", netns)
            assert attached.returncode == 0, attached.stderr
        rt_ip = "10.244.2.3"
        dns_b = f"{cluster.prefix}-dns-node-b"
        expected_b = {cluster.pod("b1"), rt, dns_b}
        assert ports_of(cluster, "node-b") == expected_b | {gone}
        old = cluster.status("node-b")
        old_process = state.identity(old["pid"])
        pingers = [Pinger(cluster, "a1", cluster.ip("b1")), Pinger(cluster, "a1", rt_ip)]
        try:
            wait_for(lambda: all(p.replies for p in pingers), what="pings through node-b")
            # one runtime pod's netns goes while node-b is down: its record must be released
            os.kill(old["pid"], signal.SIGSTOP)
            subprocess.run(["ip", "netns", "del", gone], check=True)
            killed_at = time.time()
            os.kill(old["pid"], signal.SIGKILL)

            def back():
                try:
                    status = cluster.status("node-b")
                except (OSError, ValueError):
                    return False
                return status["pid"] != old["pid"] and status["ready"]
            wait_for(back, timeout=60, what="node-b restarted by vrouter up")
            wait_for(lambda: all(p.first_reply_after(killed_at) for p in pingers), timeout=30,
                     what="pings answered again")
            for p in pingers:
                assert p.first_reply_after(killed_at) - killed_at <= RESUME_WITHIN, \
                    (p.dst, p.first_reply_after(killed_at) - killed_at)
        finally:
            for p in pingers:
                p.stop()

        # it came back as it was: the file's pod, the runtime pod (same address and MAC), DNS
        new = cluster.status("node-b")
        assert {p["pod"] for p in new["ports"]} == expected_b
        ports = {p["pod"]: p for p in new["ports"]}
        assert (ports[rt]["ip"], ports[rt]["mac"]) == (rt_ip, "0a:58:0a:f4:02:03")
        assert attached_pods(cluster.prefix) == [rt]
        # nothing leaked: one node process each, the namespaces once, one interface each
        assert len(node_processes(cluster)) == 2
        assert not state.is_running(old_process)
        record = state.read_record(cluster.prefix, "node-b")
        assert sorted(record["created_netns"]) == sorted([cluster.pod("b1"), dns_b])
        assert record["pid"] == new["pid"]
        ours = {n for n in list_netns() if n.startswith(cluster.prefix)}
        assert ours == {cluster.pod("a1"), cluster.pod("b1"), rt, f"{cluster.prefix}-dns-node-a",
                        dns_b, f"{cluster.prefix}-outside"}
        for netns in (cluster.pod("b1"), rt):
            links = json.loads(netns_exec(netns, "ip", "-j", "link").stdout)
            assert sorted(link["ifname"] for link in links) == ["eth0", "lo"], links
        assert tun_devices() == taps_before   # no TAP left in the host's namespace

        # now `vrouter up` itself dies: the nodes run on, unsupervised; `down` cleans it all
        pids = [cluster.status(n)["pid"] for n in ("node-a", "node-b")]
        cluster.proc.send_signal(signal.SIGKILL)
        cluster.proc.wait()
        assert cluster.status("node-a")["ready"] and len(node_processes(cluster)) == 2
        down = vrouter("down", cluster.prefix)
        assert down.returncode == 0, down.stderr
        assert f"removed network namespace {cluster.pod('b1')}" in down.stdout
        assert all(state.start_time(pid) is None for pid in pids)   # exited (zombies at most)
        assert cluster.leftovers() == [f"netns {rt}"]   # the runtime's namespace is not ours
        assert "eth0" not in netns_exec(rt, "ip", "-br", "link").stdout
        assert not state.cluster_dir(cluster.prefix).exists()
    cluster.reader.join(30)
    output = cluster.output()
    assert "node node-b was killed by SIGKILL; restarting it" in output, output[-3000:]
    assert f"pod {gone} attached at runtime is gone (its network namespace" in output


def test_a_pod_whose_netns_vanishes_is_detached_and_the_node_does_not_spin(make_cluster):
    prefix = f"vt{os.urandom(3).hex()}"
    lost = {"name": f"{prefix}-a3", "node": "node-a", "labels": {"app": "lost"}}
    service = """
---
apiVersion: v1
kind: Service
metadata: {name: lost}
spec:
  clusterIP: 10.96.0.60
  selector: {app: lost}
  ports: [{port: 80, targetPort: 8080}]
"""
    cluster = make_cluster(pods_per_node=(2, 1), extra_pods=[lost], services=service,
                           prefix=prefix)
    a3 = lost["name"]
    with namespaces(f"{prefix}-ctr") as (ctr,):
        attached = vrouter("attach", prefix, "--node", "node-a", "--netns", ctr,
                           "--label", "app=lost")
        assert attached.returncode == 0, attached.stderr
        backends = lambda: {f["frontend"]: f["backends"]   # noqa: E731
                            for f in cluster.status("node-b")["services"]}["10.96.0.60:80/TCP"]
        wait_for(lambda: len(backends()) == 2, what="node-b to see both endpoints")
        node_a = cluster.status("node-a")["pid"]
        # traffic among the other pods, and towards the pod that will vanish
        pingers = [Pinger(cluster, "a1", cluster.ip("a2"), 0.05),
                   Pinger(cluster, "a1", cluster.ip("b1"), 0.05),
                   Pinger(cluster, "a2", cluster.ip(a3), 0.05)]
        try:
            wait_for(lambda: all(p.replies for p in pingers), what="pings")
            start = cpu_ticks(node_a)
            time.sleep(3)   # a measuring window, not a wait for something
            baseline = cpu_ticks(node_a) - start

            subprocess.run(["ip", "netns", "del", a3], check=True)   # no CNI DEL, no detach
            subprocess.run(["ip", "netns", "del", ctr], check=True)
            wait_for(lambda: not ports_of(cluster, "node-a") & {a3, ctr}, timeout=30,
                     what="node-a to detach the pods whose netns went")
            start = cpu_ticks(node_a)
            time.sleep(3)
            after = cpu_ticks(node_a) - start
            # a node spinning on the dead fds burns a whole core: ~100 times the baseline
            assert after <= 5 * max(baseline, 2), (baseline, after)

            status = cluster.status("node-a")
            assert status["faults"]["pods_lost"] == 2 and status["ready"]
            wait_for(lambda: backends() == [], what="node-b to drop both endpoints")
            assert ctr not in attached_pods(prefix)   # released
            assert a3 not in state.read_record(prefix, "node-a")["created_netns"]
            moment = time.time()
            wait_for(lambda: all(p.first_reply_after(moment) for p in pingers[:2]),
                     what="the other pods still talking")
        finally:
            for p in pingers:
                p.stop()
        metrics = vrouter("metrics", prefix, "--node", "node-a")
        assert 'vrouter_faults_total{fault="pods_lost"} 2.0' in metrics.stdout
        shown = vrouter("status", prefix, "--node", "node-a")
        assert "faults contained: pods_lost 2" in shown.stdout, shown.stdout
        # a reload tries the file's pod again: vrouter makes its namespace anew
        reload = vrouter("reload", prefix)
        assert reload.returncode == 0, reload.stderr
        assert a3 in ports_of(cluster, "node-a") and a3 in list_netns()


@pytest.fixture(scope="module")
def decoyed(tmp_path_factory):
    """A cluster started from a directory that holds other `vrouter` and `fastpath` packages
    (what `python -m` would put first on a node's path), with metrics on."""
    tmp = tmp_path_factory.mktemp("decoyed")
    for package in ("vrouter", "fastpath"):
        (tmp / package).mkdir()
        (tmp / package / "__init__.py").write_text(
            f"raise ImportError('the {package} of the working directory')")
    cluster = Cluster(tmp, pods_per_node=(1, 1), options={"metricsPort": free_port_pair()})
    cluster.start(python_flags=("-P",))   # the launcher itself ignores the working directory
    yield cluster
    cluster.stop()
    assert not cluster.leftovers()


def test_nodes_import_the_launchers_vrouter_and_fastpath(decoyed):
    import fastpath
    import vrouter as ours
    for node in ("node-a", "node-b"):
        code = decoyed.status(node)["code"]
        assert code == {"python": sys.executable, "vrouter": ours.__file__,
                        "fastpath": fastpath.__file__}


def test_an_idle_control_client_holds_up_nobody_and_is_timed_out(decoyed):
    path = str(state.socket_path(decoyed.prefix, "node-a"))
    before = decoyed.status("node-a")["faults"]["control_timeouts"]
    with socket.socket(socket.AF_UNIX) as idle:
        idle.settimeout(60)
        idle.connect(path)   # and says nothing
        wait_for(lambda: decoyed.status("node-a")["control"]["connections"] == 2,
                 what="the node to hold the idle connection")
        assert decoyed.status("node-a")["ready"]   # answered meanwhile
        answer = json.loads(idle.makefile("rb").readline())   # closed by the node, in time
        assert answer["ok"] is False and "no request within" in answer["error"]
    assert decoyed.status("node-a")["faults"]["control_timeouts"] == before + 1


def test_rapid_scrapes_reach_the_data_path_at_most_about_once_a_second(decoyed):
    url = decoyed.status("node-a")["metrics"]
    scrapes = 200
    first = decoyed.status("node-a")["datapath"]["requests"]
    started = time.monotonic()
    for _ in range(scrapes):
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200
    elapsed = time.monotonic() - started
    last = decoyed.status("node-a")["datapath"]["requests"]
    # the requests besides the scrapes' snapshots: a keepalive a second, and one status
    allowed = 2 * (int(elapsed) + 2) + 1
    if scrapes < 5 * allowed:
        pytest.fail(f"{scrapes} scrapes took {elapsed:.1f} s: too slow to tell a cache from none")
    assert last - first <= allowed, (last - first, elapsed)


def test_down_never_signals_a_process_that_only_shares_a_recorded_pid(tmp_path):
    """A node record whose pid names another process now (its start time differs): `vrouter
    down` leaves that process alone and still removes the record."""
    cluster = Cluster(tmp_path, pods_per_node=(1, 1))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        record = state.record_path(cluster.prefix, "node-a")
        record.parent.mkdir(parents=True)
        identity = state.identity(bystander.pid)
        record.write_text(json.dumps({**identity, "start_time": identity["start_time"] - 1,
                                      "node": "node-a", "created_netns": [], "source": {}}))
        down = vrouter("down", str(cluster.path))
        assert down.returncode == 0, down.stderr
        assert bystander.poll() is None
        assert not record.exists() and not Path(state.cluster_dir(cluster.prefix)).exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_node_that_keeps_dying_is_given_up_and_down_stops_a_running_up(tmp_path):
    cluster = Cluster(tmp_path, pods_per_node=(1, 1))
    try:
        cluster.start(up_args=("--max-restarts", "1"))
        lines = cluster.lines
        first = cluster.status("node-b")["pid"]
        os.kill(first, signal.SIGKILL)

        def restarted():
            try:
                status = cluster.status("node-b")
            except (OSError, ValueError):
                return False
            return status["pid"] != first and status["ready"]
        wait_for(restarted, timeout=60, what="the first restart")
        os.kill(cluster.status("node-b")["pid"], signal.SIGKILL)
        wait_for(lambda: any("giving up on it" in line for line in lines), timeout=30,
                 what="vrouter up to give up on node-b")
        given_up = next(json.loads(line) for line in lines if "giving up on it" in line)
        assert given_up["level"] == "ERROR" and given_up["message"].startswith(
            "node node-b was killed by SIGKILL; it was restarted 1 times within 60 s"), given_up
        # the rest runs on, supervised
        assert cluster.proc.poll() is None and cluster.status("node-a")["ready"]
        assert cluster.sh("a1", "ping", "-c", "1", "-W", "2", "10.244.1.1").returncode == 0
        # `vrouter down` while up runs: up is stopped first, so nothing is restarted
        down = vrouter("down", cluster.prefix)
        assert down.returncode == 0, down.stderr
        assert f"stopped vrouter up (pid {cluster.proc.pid})" in down.stdout
        assert cluster.proc.wait(60) == 0
        cluster.reader.join(30)
        assert sum("started again" in line for line in lines) == 1, lines
    finally:
        cluster.stop()
    assert cluster.leftovers() == []
