"""`vrouter up` and `vrouter down`: every node of a config as its own process on this machine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from vrouter.host import outside, state
from vrouter.ops import control, logs
from vrouter.model.config import Cluster
from vrouter.node.datapath import ensure_compiled
from vrouter.host.tap import HostError, check_host, remove_netns

STOP_GRACE = 15.0


class _Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise _Interrupted()


def node_command(cluster: Cluster, node_name: str) -> list[str]:
    command = [sys.executable, "-m", "vrouter", *logs.child_args(), "run", cluster.source,
               "--node", node_name]
    if cluster.manifests:
        command += ["--manifests", cluster.manifests]
    return command


def up(cluster: Cluster, timeout: float) -> int:
    try:
        check_host()
    except HostError as exc:
        print(f"vrouter: {exc}", file=sys.stderr)
        return 1
    running = [n.name for n in cluster.nodes if _live_record(cluster, n.name)]
    if running:
        print(f"vrouter: cluster {cluster.name!r} already runs node(s) {', '.join(running)}; "
              f"`vrouter down {cluster.source}` stops it", file=sys.stderr)
        return 1
    procs: dict[str, subprocess.Popen] = {}
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ensure_compiled()   # once, here: the nodes then load it instead of all compiling at once
        for node in cluster.nodes:
            procs[node.name] = subprocess.Popen(node_command(cluster, node.name))
        if not _wait_ready(cluster, procs, timeout):
            return 1
        print(summary(cluster), flush=True)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        dead = [name for name, p in procs.items() if p.poll() is not None]
        print(f"vrouter: node(s) {', '.join(dead)} exited; tearing the cluster down", file=sys.stderr)
        return 1
    except _Interrupted:
        print("\nvrouter: stopping the cluster", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(procs)
        down(cluster, quiet=True)
        for s, handler in old.items():
            signal.signal(s, handler)


def _wait_ready(cluster: Cluster, procs, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pending = set(procs)
    while pending:
        for name in list(pending):
            if procs[name].poll() is not None:
                print(f"vrouter: node {name!r} exited with code {procs[name].returncode} "
                      "during startup", file=sys.stderr)
                return False
            try:
                if control.request(state.socket_path(cluster.name, name), "status")["ready"]:
                    pending.discard(name)
            except (OSError, ValueError, KeyError):
                pass   # not listening yet (still compiling or attaching pods)
        if time.monotonic() > deadline:
            print(f"vrouter: node(s) {', '.join(sorted(pending))} not ready after {timeout:.0f}s",
                  file=sys.stderr)
            return False
        time.sleep(0.1)
    return True


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _live_record(cluster: Cluster, node_name: str):
    record = state.read_record(cluster.name, node_name)
    return record if record and state.pid_alive(record["pid"]) else None


def down(cluster: Cluster, quiet: bool = False) -> int:
    """Stop the cluster's node processes and remove namespaces they recorded as theirs."""
    for node in cluster.nodes:
        record = state.read_record(cluster.name, node.name)
        if record is None:
            continue
        pid = record.get("pid")
        if pid and pid != os.getpid() and state.pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            while state.pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if state.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        for name in record.get("created_netns", []):
            remove_netns(name)
            if not quiet:
                print(f"removed network namespace {name}")
        state.remove_traces(cluster.name, node.name)
    if outside.release(cluster) and not quiet:   # left behind by nodes killed with SIGKILL
        print(f"removed network namespace {cluster.outside_netns}")
    return 0


def summary(cluster: Cluster) -> str:
    lines = [f"vrouter: cluster {cluster.name!r} is up ({cluster.source})", ""]
    for node in cluster.nodes:
        lines.append(f"  node {node.name}: podCIDR {node.pod_cidr}, gateway {node.gateway}, "
                     f"underlay {node.underlay}:{cluster.overlay.port}, address {node.address}")
        for pod in cluster.pods_of(node.name):
            lines.append(f"    pod {pod.namespace}/{pod.name:<14} {str(pod.ip):<15} netns {pod.netns}")
    pods = [p for p in cluster.pods if not p.dns_server and not p.awaiting_cni]
    lines += ["", "try:" + ("   (NetworkPolicies apply: some of these may be refused, see "
                            "vrouter status)" if cluster.policies else "")]
    if len(pods) >= 2:
        a = pods[0]
        near = next((p for p in pods[1:] if p.node == a.node), None)
        far = next((p for p in pods if p.node != a.node), None)
        if near:
            lines.append(f"  ip netns exec {a.netns} ping -c 3 {near.ip}        # same node: bridged")
        if far:
            lines.append(f"  ip netns exec {a.netns} ping -c 3 {far.ip}        # across the overlay")
        b = near or far
        lines.append(f"  ip netns exec {b.netns} iperf3 -s -D && ip netns exec {a.netns} iperf3 -c {b.ip}")
    if pods:
        lines.append(f"  ip netns exec {pods[0].netns} tcpdump -ni eth0")
    lines.append(f"  ip netns exec {cluster.outside_netns} ping -c 3 {cluster.nodes[0].address}"
                 "     # a node, from outside the cluster")
    exposed = [(s, sp) for s in cluster.services for sp in s.ports if sp.node_port]
    if exposed:
        service, sp = exposed[0]
        lines.append(f"  ip netns exec {cluster.outside_netns} curl {cluster.nodes[0].address}:"
                     f"{sp.node_port}     # NodePort of {service.key}")
    lines.append(f"  tcpdump -ni lo udp port {cluster.overlay.port}       # the VXLAN overlay")
    lines.append(f"  vrouter status {cluster.source}")
    lines += ["", "Ctrl-C stops the cluster and removes its namespaces and TAP devices."]
    return "\n".join(lines)
