"""`vrouter up` and `vrouter down`: every node of a config as its own process on this machine.

`up` is the nodes' supervisor: a node that exits (any way, kill -9 included) is started again,
at once the first time and then after a growing pause, at most RestartPolicy.max_restarts
times a minute; after that `up` gives up on that node (saying so) and keeps the others running.
A restarted node rebuilds itself from the cluster file, its record and the runtime attachment
records (vrouter.node.process), so its pods come back with their namespaces.

`up` records itself in /run/vrouter/CLUSTER/launcher.up, so that `vrouter down` stops it first
(else it would restart the nodes `down` stops). Nodes are forked from this process once it has
loaded the compiled fast path and everything else a node loads (vrouter.ops.forkednodes), so
they share those pages and run exactly the launcher's vrouter and fastpath, never a copy in the
working directory. A vrouter interpreter started anew (`python_command`) imports the same.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import fastpath
import vrouter
from vrouter.host import outside, programs, state
from vrouter.ops import control, forkednodes, logs
from vrouter.model.config import Cluster
from vrouter.node.compiling import ensure_compiled
from vrouter.host.tap import HostError, check_host, remove_netns

log = logging.getLogger("vrouter.up")

STOP_GRACE = 15.0
PODS_READY_TIMEOUT = 60.0   # seconds `up` waits for the pods' programs to be ready
SUPERVISE_INTERVAL = 0.2   # seconds between two looks at the nodes
EXIT_DATAPATH = 3          # a node's own code for "my data path failed" (vrouter.node.process)

# the child: sys.path as the launcher's (its package roots first), then the CLI
_BOOT = ("import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
         "from vrouter.ops.cli import main; sys.exit(main(sys.argv[1:]))")


class _Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise _Interrupted()


def import_path() -> list[str]:
    """The module search path that finds this process's own vrouter and fastpath first: their
    package roots, then this process's sys.path without the working directory (`-m` and `-c`
    put it first) and with relative entries made absolute."""
    roots: list[str] = []
    for module in (vrouter, fastpath):
        root = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
        if root not in roots:
            roots.append(root)
    path = list(roots)
    for entry in sys.path:
        if not entry:
            continue
        if not os.path.isabs(entry) and os.path.exists(entry):
            entry = os.path.abspath(entry)
        if entry not in path:
            path.append(entry)
    return path


def python_command() -> list[str]:
    """`python -I -c BOOT PATH`: isolated (no working directory or PYTHON* variables on the
    path), then the launcher's path set explicitly: editable installs, installed packages and
    PYTHONPATH checkouts alike give the child the launcher's files. Arguments after it are the
    CLI's (`run CONFIG --node N`)."""
    return [sys.executable, "-I", "-c", _BOOT, json.dumps(import_path())]


def node_args(cluster: Cluster, node_name: str) -> list[str]:
    """The CLI arguments that run one node of `cluster`."""
    args = [*logs.child_args(), "run", cluster.source, "--node", node_name]
    if cluster.manifests:
        args += ["--manifests", cluster.manifests]
    return args


def start_node(cluster: Cluster, node_name: str) -> forkednodes.ForkedNode:
    """A node forked from this (warmed) launcher; ps shows it as `vrouter run CONFIG --node N`."""
    args = node_args(cluster, node_name)
    return forkednodes.fork_node(args, " ".join(["vrouter", *args]))


@dataclass
class RestartPolicy:
    """When to restart a node that exited (sans-IO: times are given). The k-th restart within
    `window` seconds waits backoff[k] seconds (the first at once: a crash costs the pods the
    least); after `max_restarts` in a window, give up on the node."""
    max_restarts: int = 5
    window: float = 60.0
    backoff: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    history: dict[str, list[float]] = field(default_factory=dict)

    def next(self, node: str, now: float) -> float | None:
        """The pause before restarting `node`, which exited at `now`; None: give up."""
        recent = [t for t in self.history.get(node, []) if now - t < self.window]
        if len(recent) >= self.max_restarts:
            self.history[node] = recent
            return None
        delay = self.backoff[min(len(recent), len(self.backoff) - 1)]
        self.history[node] = recent + [now + delay]
        return delay

    def restarts(self, node: str) -> int:
        return len(self.history.get(node, []))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_DATAPATH:
        return f"exited with code {code} (its data path failed)"
    return f"exited with code {code}"


def up(cluster: Cluster, timeout: float, policy: RestartPolicy | None = None) -> int:
    try:
        check_host()
    except HostError as exc:
        print(f"vrouter: {exc}", file=sys.stderr)
        return 1
    running = [n.name for n in cluster.nodes if _live_record(cluster, n.name)]
    if state.is_running(state.read_launcher(cluster.name)):
        running.insert(0, "(its launcher)")
    if running:
        print(f"vrouter: cluster {cluster.name!r} already runs node(s) {', '.join(running)}; "
              f"`vrouter down {cluster.source}` stops it", file=sys.stderr)
        return 1
    # no node of the cluster runs: what an earlier run's controllers recorded is stale (a new
    # start begins from the file, as the same file always gives the same cluster)
    _forget_workload_records(cluster)
    procs: dict[str, forkednodes.ForkedNode] = {}
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        state.write_launcher(cluster.name, {"config": os.path.abspath(cluster.source),
                                            "manifests": cluster.manifests
                                            and os.path.abspath(cluster.manifests)})
        ensure_compiled(cluster)   # once, here: the nodes then load it instead of all compiling
        forkednodes.warm()  # and what else they load: forked from here, they share it
        for node in cluster.nodes:
            if node.kernel:   # the Linux kernel serves it (`vrouter kernel-node`), not vrouter
                print(f"vrouter: node {node.name} is marked kernel: set it up with `vrouter "
                      f"kernel-node {cluster.source} --node {node.name}` in its own namespace",
                      file=sys.stderr)
                continue
            procs[node.name] = start_node(cluster, node.name)
        if not _wait_ready(cluster, procs, timeout):
            return 1
        print(summary(cluster), flush=True)
        return _supervise(cluster, procs, policy or RestartPolicy())
    except _Interrupted:
        print("\nvrouter: stopping the cluster", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(procs)
        down(cluster, quiet=True)
        state.remove_launcher(cluster.name)
        for s, handler in old.items():
            signal.signal(s, handler)


def _supervise(cluster: Cluster, procs: dict[str, forkednodes.ForkedNode],
               policy: RestartPolicy) -> int:
    """Restart nodes that exit, as `policy` says, until interrupted (_Interrupted) or until no
    node is left (1). `procs` is kept current (the caller stops what is in it)."""
    due: dict[str, float] = {}   # node -> when to start it again
    while True:
        now = time.monotonic()
        for name, proc in list(procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del procs[name]
            delay = policy.next(name, now)
            if delay is None:
                log.error("node %s %s; it was restarted %d times within %.0f s: giving up on "
                          "it (the other nodes keep running; Ctrl-C or `vrouter down %s` "
                          "removes what it left)", name, describe_exit(code), policy.max_restarts,
                          policy.window, cluster.name)
                continue
            log.warning("node %s %s; restarting it%s (restart %d, at most %d within %.0f s)",
                        name, describe_exit(code), f" in {delay:g} s" if delay else "",
                        policy.restarts(name), policy.max_restarts, policy.window)
            due[name] = now + delay
        for name, when in list(due.items()):
            if now >= when:
                del due[name]
                procs[name] = start_node(cluster, name)
                log.info("node %s started again (pid %d)", name, procs[name].pid)
        if not procs and not due:
            log.error("every node of cluster %s has failed for good: stopping", cluster.name)
            return 1
        time.sleep(SUPERVISE_INTERVAL)


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
    _wait_pods_ready(cluster, procs)
    return True


def _wait_pods_ready(cluster: Cluster, procs) -> None:
    """Then the pods that have programs (or are a workload's): until they are ready, so that
    a Service answers as soon as `up` says the cluster is up; one that is not ready after
    PODS_READY_TIMEOUT is named (its program may be failing: see vrouter status)."""
    deadline = time.monotonic() + PODS_READY_TIMEOUT
    waiting: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        waiting = {}
        for name in procs:
            try:
                status = control.request(state.socket_path(cluster.name, name), "status")
            except (OSError, ValueError):
                waiting[name] = ["(not answering)"]
                continue
            if not status.get("pods_ready", True):
                waiting[name] = [p["pod"] for p in status["ports"]
                                 if (p.get("owner") or p.get("programs")) and not p.get("ready")]
        if not waiting:
            return
        time.sleep(0.1)
    for name, pods in sorted(waiting.items()):
        print(f"vrouter: node {name}: pod(s) {', '.join(pods)} not ready after "
              f"{PODS_READY_TIMEOUT:.0f}s (`vrouter status` says why)", file=sys.stderr)


def _stop(procs: dict[str, forkednodes.ForkedNode]) -> None:
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
    return record if state.is_running(record) else None


def down(cluster: Cluster, quiet: bool = False) -> int:
    """Stop the cluster's launcher (`up`) and node processes, remove the namespaces the nodes
    recorded as theirs and those of the cluster file's pods, and forget the cluster's runtime
    attachments. Processes are recognised by their recorded identity (pid and start time),
    never by a pid alone."""
    launcher = state.read_launcher(cluster.name)
    if launcher and launcher.get("pid") != os.getpid():
        # first: it would restart the nodes stopped below; it stops them itself
        if state.stop_process(launcher, 2 * STOP_GRACE) and not quiet:
            print(f"stopped vrouter up (pid {launcher['pid']})")
    # the nodes of the model and those recorded here (a node that registered itself)
    names = sorted({n.name for n in cluster.nodes} | {
        p.stem for p in state.cluster_dir(cluster.name).glob("*.json")} | {
        p.stem for p in state.cluster_dir(cluster.name).glob("*.lease")})
    stopped = []
    for name in names:
        record = state.read_record(cluster.name, name)
        if record is None:
            continue
        if record.get("pid") != os.getpid():
            state.stop_process(record, STOP_GRACE)
        for netns in record.get("created_netns", []):
            remove_netns(netns)
            if not quiet:
                print(f"removed network namespace {netns}")
        state.remove_traces(cluster.name, name)
        stopped.append(name)
    # the cluster file's own pods' namespaces, recorded or not: a node stopped in the middle
    # of attaching one may not have written it down yet
    for pod in cluster.pods:
        if pod.owns_netns and os.path.exists(pod.netns_path):
            remove_netns(pod.netns)
            if not quiet:
                print(f"removed network namespace {pod.netns}")
    _release_attachments(cluster, stopped)
    # what the nodes' programs left (children of programs of nodes killed with SIGKILL), and
    # what the workload controllers recorded
    left = programs.reap(cluster.name)
    if left and not quiet:
        print(f"stopped {left} leftover program process(es) of the cluster's pods")
    _forget_workload_records(cluster)
    if outside.release(cluster) and not quiet:   # left behind by nodes killed with SIGKILL
        print(f"removed network namespace {cluster.outside_netns}")
    if launcher and launcher.get("pid") != os.getpid():
        state.remove_launcher(cluster.name)   # (`up` removes its own after this)
    for name in names:
        state.forget_memory(cluster.name, name)   # the podCIDR it held: down is final
        state.remove_traces(cluster.name, name)   # and the directories, now empty
    return 0


def _forget_workload_records(cluster: Cluster) -> None:
    """With the file store the workload controllers' records end with the cluster (one
    machine); in etcd they stay, as Kubernetes' ReplicaSets do (other hosts' nodes may run)."""
    if cluster.datastore.type == "file":
        from vrouter.store.filestore import FileStore
        FileStore(cluster.name).remove_workloads()


def _release_attachments(cluster: Cluster, stopped: list[str]) -> None:
    """The runtime attachments nobody serves now: all of them with the file store (one
    machine), those of the nodes stopped here with etcd (other hosts' nodes keep theirs)."""
    from vrouter.store import run
    from vrouter.store.base import ATTACHMENTS, StoreError

    async def release(store):
        for key, value in (await store.list(ATTACHMENTS)).values().items():
            try:
                node = json.loads(value).get("node")
            except (ValueError, AttributeError):
                node = None
            if store.kind == "file" or node in stopped:
                await store.delete(key)
    try:
        run(cluster, release)
    except StoreError as exc:
        print(f"vrouter: warning: runtime attachments not released: the datastore does not "
              f"answer ({exc})", file=sys.stderr)


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
