"""vrouter beside the Linux kernel doing the same job, in one run, in one table.

    python3 -m benchmarks [--seconds 5] [--json FILE] [--no-scale] [--scale 4x16] [--scale-only] [--apply]

Builds the kernel reference (../shared/reference/kernel-cluster.sh: two nodes with a bridge, a
VXLAN device and iptables kube-proxy rules; override the path with VROUTER_KERNEL_REF) and a
vrouter cluster of the same shape (2 nodes x 2 pods, pod MTU 1450, a Service 10.96.0.10:5201 over
node 2's pods), plus the raw ceilings (benchmarks/ceiling.py: copy loops in Python and compiled
with the same system calls, nothing else), and measures the same things
in each: TCP throughput and 64-byte UDP packet rate same node and across nodes (iperf3), pod ->
ClusterIP TCP throughput and new connections per second (benchmarks/tcp_load.py), ping round
trips at 100 per second (1000 each; again with the nodes polling instead of sleeping, and the
wake-up of a sleeping process alone), and a scale row (nodes x pods started, time to ready,
memory per node). Prints one table with ratios to the kernel and to the ceilings, and writes it
as JSON. Needs root,
iproute2, iperf3 and iptables; removes everything it creates.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.ceiling import ceiling, wakeup_us
from benchmarks.measure import iperf_tcp, iperf_udp_kpps, percentile, ping_rtts, tcp_load
from tests.system.cluster import Cluster, netns_exec, new_prefix, wait_for

HERE = Path(__file__).resolve().parent
KERNEL_SCRIPT = Path(os.environ.get("VROUTER_KERNEL_REF",
                                    HERE.parent.parent / "shared" / "reference" / "kernel-cluster.sh"))
VIP, PORT = "10.96.0.10", 5201
SERVICE = f"""
---
apiVersion: v1
kind: Service
metadata: {{name: bench}}
spec:
  clusterIP: {VIP}
  selector: {{app: bench}}
  ports: [{{port: {PORT}, targetPort: {PORT}}}]
"""
TARGETS = {   # issue 9: vrouter/kernel (or vrouter/ceiling for the packet rates)
    "same-node TCP": 0.5, "cross-node TCP": 0.35, "pod -> ClusterIP TCP": 0.35,
    "same-node UDP 64 B": ("ceiling", 0.75), "cross-node UDP 64 B": ("ceiling", 0.75),
}
ADDED_P50_US, ADDED_P99_US = 30, 100   # ping RTT added per node process traversed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mib(pid: int) -> float:
    """The proportional set size: pages shared by n processes count 1/n in each."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


SCALE_SETTLE_SECONDS = 5.0   # after "ready" start-up work goes on (0.23 cores in a 32 x 8's first 5 s)
SCALE_IDLE_SECONDS = 10.0
SCALE_SAMPLE_PAIRS = 32


class Setups:
    """Where each measurement runs: namespaces and addresses per system."""

    def __init__(self, kref: str, cluster: Cluster):
        self.kref, self.cluster = kref, cluster
        c = cluster
        self.pairs = {   # (server netns, server ip, client netns)
            "kernel": {"same": (f"{kref}-p1-2", "10.244.1.3", f"{kref}-p1-1"),
                       "cross": (f"{kref}-p2-1", "10.244.2.2", f"{kref}-p1-1")},
            "vrouter": {"same": (c.pod("a2"), c.ip("a2"), c.pod("a1")),
                        "cross": (c.pod("b1"), c.ip("b1"), c.pod("a1"))},
        }
        self.backends = {"kernel": [f"{kref}-p2-1", f"{kref}-p2-2"],
                         "vrouter": [c.pod("b1"), c.pod("b2")]}


def measure_paths(setups: Setups, seconds: float, results: dict) -> None:
    for system, pairs in setups.pairs.items():
        for where, (server_ns, server_ip, client_ns) in pairs.items():
            results[f"{where}-node TCP"][system] = iperf_tcp(server_ns, server_ip, client_ns,
                                                             seconds)
            results[f"{where}-node UDP 64 B"][system] = iperf_udp_kpps(server_ns, server_ip,
                                                                       client_ns, seconds)


def measure_latency(setups: Setups, results: dict, node_pids: list[int]) -> dict:
    cpu = {}
    for system, pairs in setups.pairs.items():
        for where, (_server_ns, server_ip, client_ns) in pairs.items():
            before = sum(cpu_seconds(p) for p in node_pids) if system == "vrouter" else 0
            start = time.monotonic()
            rtts = ping_rtts(client_ns, server_ip, count=1000)
            if system == "vrouter":
                cpu[where] = (sum(cpu_seconds(p) for p in node_pids) - before) \
                    / (time.monotonic() - start)
            results[f"{where}-node ping p50"][system] = percentile(rtts, 0.5)
            results[f"{where}-node ping p99"][system] = percentile(rtts, 0.99)
    return cpu


def measure_service(setups: Setups, seconds: float, threads: int, results: dict) -> dict:
    servers = []
    failed = {}
    try:
        for backends in setups.backends.values():
            for netns in backends:
                servers.append(subprocess.Popen(["ip", "netns", "exec", netns, sys.executable,
                                                 str(HERE / "tcp_load.py"), "serve", str(PORT)]))
                wait_for(lambda: f":{PORT}" in netns_exec(netns, "ss", "-ltn").stdout,
                         what=f"server in {netns}")
        for system in ("kernel", "vrouter"):
            client = setups.pairs[system]["same"][2]
            stream = tcp_load(client, "stream", VIP, str(PORT), f"{seconds:g}", timeout=seconds + 60)
            rate = tcp_load(client, "connect", VIP, str(PORT), f"{seconds:g}", str(threads),
                            timeout=seconds + 60)
            results["pod -> ClusterIP TCP"][system] = stream["gbps"]
            results["pod -> ClusterIP conn/s"][system] = rate["per_second"]
            failed[system] = rate["failed"]
    finally:
        for server in servers:
            server.kill()
            server.wait()
    return failed


def measure_ceilings(seconds: float, results: dict) -> None:
    for kind, rows in (("tap", "same-node"), ("udp", "cross-node")):
        for column, compiled in (("ceiling", False), ("compiled", True)):
            with ceiling(kind, compiled) as (netns, ips):
                results[f"{rows} TCP"][column] = iperf_tcp(netns[1], ips[1], netns[0], seconds)
                results[f"{rows} UDP 64 B"][column] = iperf_udp_kpps(netns[1], ips[1], netns[0],
                                                                    seconds)
                if compiled:   # the round trip through copy loops that do nothing else
                    rtts = ping_rtts(netns[0], ips[1], count=1000)
                    results[f"{rows} ping p50"][column] = percentile(rtts, 0.5)
                    results[f"{rows} ping p99"][column] = percentile(rtts, 0.99)


POLLING_US = 20_000   # longer than the pings' 10 ms apart: the nodes never sleep


def measure_polling(tmp: Path) -> dict:
    """The same pings through nodes that never sleep (busyPollMicroseconds longer than the
    pings' interval): what a node traversal costs without the wake-up, at a core per node."""
    cluster = Cluster(tmp, pods_per_node=(2, 1), options={"busyPollMicroseconds": POLLING_US})
    cluster.start()
    try:
        rtts = {"same": ping_rtts(cluster.pod("a1"), cluster.ip("a2"), count=1000),
                "cross": ping_rtts(cluster.pod("a1"), cluster.ip("b1"), count=1000)}
    finally:
        cluster.stop()
    return {f"{where} {q}": percentile(times, f) for where, times in rtts.items()
            for q, f in (("p50", 0.5), ("p99", 0.99))}


def measure_scale(tmp: Path, nodes: int, pods: int) -> dict:
    """Start nodes x pods with `vrouter up` (fast path already compiled): time to ready, memory
    per node (RSS and PSS), the nodes' CPU while idle, and pings between sampled pod pairs
    across the whole mesh."""
    cluster = Cluster(tmp, pods_per_node=(pods,) * nodes)
    start = time.monotonic()
    cluster.start()
    ready = time.monotonic() - start
    try:
        pids = [cluster.status(n["name"])["pid"] for n in cluster.nodes]
        rss = [rss_mib(p) for p in pids]
        pss = [pss_mib(p) for p in pids]
        time.sleep(SCALE_SETTLE_SECONDS)
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(SCALE_IDLE_SECONDS)   # idle: what the nodes use with no traffic at all
        idle = (sum(cpu_seconds(p) for p in pids) - before) / SCALE_IDLE_SECONDS
        names = [p["name"] for p in cluster.pods]
        chooser = random.Random(nodes * 1000 + pods)
        pairs = [tuple(chooser.sample(names, 2)) for _ in range(SCALE_SAMPLE_PAIRS)]
        answered = sum(cluster.sh(a, "ping", "-c", "1", "-W", "2", cluster.ip(b)).returncode == 0
                       for a, b in pairs)
    finally:
        cluster.stop()
    return {"nodes": nodes, "pods": nodes * pods, "ready_seconds": ready,
            "rss_mib_per_node": sum(rss) / len(rss), "pss_mib_per_node": sum(pss) / len(pss),
            "idle_cpu_cores": idle, "pairs": len(pairs), "pairs_answered": answered}


def measure_start(tmp: Path) -> dict:
    """`vrouter up` of 2 nodes x 2 pods to "is up": first with an empty numba cache (as after
    an install: the launcher compiles the fast path, printing its progress), then again with
    that cache (every later start)."""
    cache = Path(tempfile.mkdtemp(prefix="vrouter-bench-cache-"))
    try:
        seconds = []
        for _ in range(2):
            cluster = Cluster(tmp, pods_per_node=(2, 2))
            start = time.monotonic()
            cluster.start(env={"NUMBA_CACHE_DIR": str(cache)}, timeout=900)
            seconds.append(time.monotonic() - start)
            cluster.stop()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"first_seconds": seconds[0], "later_seconds": seconds[1]}


def start_row(s: dict) -> str:
    return (f"{'start':<26} 2 nodes x 2 pods: first `vrouter up` (empty numba cache) ready in "
            f"{s['first_seconds']:.1f} s; later starts {s['later_seconds']:.1f} s")


def scale_row(s: dict) -> str:
    return (f"{'scale':<26} {s['nodes']} nodes x {s['pods'] // s['nodes']} pods: ready in "
            f"{s['ready_seconds']:.1f} s; per node process {s['pss_mib_per_node']:.0f} MiB PSS "
            f"({s['rss_mib_per_node']:.0f} MiB RSS); idle CPU {s['idle_cpu_cores']:.3f} cores "
            f"(all nodes); {s['pairs_answered']}/{s['pairs']} sampled pod pairs answer ping")


def table(results: dict, extra: dict) -> str:
    """ceiling: the raw Python ceiling; compiled: the compiled one (c/kernel: the most a TAP
    copy loop reaches of the kernel here, whatever a router does besides copying)."""
    lines = [f"{'':<26} {'unit':<7} {'kernel':>9} {'vrouter':>9} {'ceiling':>9} "
             f"{'compiled':>9} {'v/kernel':>9} {'v/ceiling':>9} {'c/kernel':>9}  target"]
    units = {"TCP": "Gbit/s", "UDP 64 B": "kpps", "conn/s": "conn/s", "ping": "ms"}
    for name, row in results.items():
        unit = next(u for k, u in units.items() if k in name)
        k, v, c, cc = (row.get(key) for key in ("kernel", "vrouter", "ceiling", "compiled"))
        fmt = (lambda x: f"{x:9.3f}") if unit == "ms" else (lambda x: f"{x:9.2f}")
        cells = [fmt(x) if x is not None else f"{'':>9}" for x in (k, v, c, cc)]
        ratios = [f"{v / k:9.3f}" if k and v else f"{'':>9}",
                  f"{v / c:9.3f}" if c and v else f"{'':>9}",
                  f"{cc / k:9.3f}" if k and cc else f"{'':>9}"]
        target = TARGETS.get(name)
        mark = ""
        if isinstance(target, float):
            mark = f">= {target} {'met' if v / k >= target else 'MISSED'}"
        elif isinstance(target, tuple):
            mark = f">= {target[1]} of ceiling {'met' if v / c >= target[1] else 'MISSED'}"
        lines.append(f"{name:<26} {unit:<7} {' '.join(cells)} {' '.join(ratios)}  {mark}")
    for where, hops in (("same", 2), ("cross", 4)):
        kernel = [results[f"{where}-node ping {q}"]["kernel"] for q in ("p50", "p99")]

        def per_traversal(p50: float, p99: float) -> list[float]:
            return [(p50 - kernel[0]) * 1000 / hops, (p99 - kernel[1]) * 1000 / hops]
        added = per_traversal(*(results[f"{where}-node ping {q}"]["vrouter"]
                                for q in ("p50", "p99")))
        extra[f"{where}-node ping added per traversal us"] = added
        ok = added[0] <= ADDED_P50_US and added[1] <= ADDED_P99_US
        lines.append(f"{where + '-node RTT added/node':<26} {'us':<7} p50 {added[0]:6.1f}  "
                     f"p99 {added[1]:6.1f}  ({hops} node traversals; target <= {ADDED_P50_US} / "
                     f"{ADDED_P99_US}: {'met' if ok else 'MISSED'})")
        polling = extra.get("polling")
        if polling:
            spun = per_traversal(polling[f"{where} p50"], polling[f"{where} p99"])
            lines.append(f"{'  nodes polling':<26} {'us':<7} p50 {spun[0]:6.1f}  p99 {spun[1]:6.1f}"
                         f"  (busyPollMicroseconds {POLLING_US}: never asleep; pings "
                         f"{polling[where + ' p50']:.3f} / {polling[where + ' p99']:.3f} ms)")
        relay = results[f"{where}-node ping p50"].get("compiled")
        if relay:
            floor = per_traversal(relay, results[f"{where}-node ping p99"]["compiled"])
            lines.append(f"{'  compiled ceiling':<26} {'us':<7} p50 {floor[0]:6.1f}  "
                         f"p99 {floor[1]:6.1f}  (copy loops that only read and write, asleep "
                         "in epoll_wait between pings)")
    wake = extra.get("wake-up us")
    if wake:
        lines.append(f"{'wake-up of a process':<26} {'us':<7} p50 {wake[0]:6.1f}  p99 {wake[1]:6.1f}"
                     "  (asleep in read() 10 ms, woken through a pipe: what a sleeping node pays "
                     "for a ping's first frame)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="per throughput test")
    parser.add_argument("--threads", type=int, default=4, help="client threads for conn/s")
    parser.add_argument("--json", help="write the results here (default benchmarks/results/)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale row")
    parser.add_argument("--scale", default="4x16", help="nodes x pods per node for the scale row")
    parser.add_argument("--apply", action="store_true", help="also the etcd row: vrouter apply "
                        "of a Service to a first connection from every node, and an idle "
                        "node's etcd requests (benchmarks/apply.py)")
    parser.add_argument("--scale-only", action="store_true", help="only the scale row")
    parser.add_argument("--start", action="store_true", help="also the start row: the first "
                        "`vrouter up` from an empty numba cache (a minute or more), and a later one")
    parser.add_argument("--start-only", action="store_true", help="only the start row")
    args = parser.parse_args()
    if args.start_only:
        print(start_row(measure_start(Path(tempfile.mkdtemp(prefix="vrouter-bench-")))))
        return 0
    if args.scale_only:
        nodes, per_node = (int(x) for x in args.scale.split("x"))
        tmp = Path(tempfile.mkdtemp(prefix="vrouter-bench-"))
        print(scale_row(measure_scale(tmp, nodes, per_node)))
        return 0

    rows = ["same-node TCP", "cross-node TCP", "pod -> ClusterIP TCP", "same-node UDP 64 B",
            "cross-node UDP 64 B", "pod -> ClusterIP conn/s", "same-node ping p50",
            "same-node ping p99", "cross-node ping p50", "cross-node ping p99"]
    results: dict = {name: {} for name in rows}
    kref, prefix = new_prefix(), new_prefix()
    tmp = Path(tempfile.mkdtemp(prefix="vrouter-bench-"))
    backend = {"labels": {"app": "bench"}}
    pods = [{"name": f"{prefix}-a1", "node": "node-a"}, {"name": f"{prefix}-a2", "node": "node-a"},
            {"name": f"{prefix}-b1", "node": "node-b", **backend},
            {"name": f"{prefix}-b2", "node": "node-b", **backend}]
    cluster = Cluster(tmp, pods_per_node=(0, 0), extra_pods=pods, services=SERVICE, prefix=prefix,
                      options={"dns": {"address": "10.96.0.53"}})   # the reference has VIP .10
    extra: dict = {}
    try:
        subprocess.run(["bash", str(KERNEL_SCRIPT), "up", kref], check=True, capture_output=True)
        cluster.start()
        setups = Setups(kref, cluster)
        node_pids = [cluster.status(n)["pid"] for n in ("node-a", "node-b")]
        idle_cpu = sum(cpu_seconds(p) for p in node_pids)
        time.sleep(2)
        extra["node CPU idle (cores)"] = (sum(cpu_seconds(p) for p in node_pids) - idle_cpu) / 2
        measure_paths(setups, args.seconds, results)
        extra["node CPU during 100 Hz ping (cores)"] = measure_latency(setups, results, node_pids)
        extra["connect failures"] = measure_service(setups, args.seconds, args.threads, results)
        extra["counters node-a"] = {k: v for k, v in cluster.counters("node-a").items() if v}
        extra["counters node-b"] = {k: v for k, v in cluster.counters("node-b").items() if v}
    finally:
        cluster.stop()
        subprocess.run(["bash", str(KERNEL_SCRIPT), "down", kref], capture_output=True)
    measure_ceilings(args.seconds, results)
    extra["polling"] = measure_polling(tmp)
    wake = wakeup_us()
    extra["wake-up us"] = [percentile(wake, 0.5), percentile(wake, 0.99)]
    from benchmarks.userspace import slirp_tcp_gbps
    extra["slirp4netns TCP Gbit/s"] = slirp_tcp_gbps(args.seconds)
    if not args.no_scale:
        nodes, per_node = (int(x) for x in args.scale.split("x"))
        extra["scale"] = measure_scale(tmp, nodes, per_node)
    if args.start:
        extra["start"] = measure_start(tmp)
    if args.apply:
        from benchmarks import apply
        extra["apply"] = apply.measure()

    print(f"\nvrouter vs the Linux kernel, {args.seconds:g} s per test, {os.cpu_count()} cores, "
          f"{platform.release()}\n")
    print(table(results, extra))
    if "scale" in extra:
        print(scale_row(extra["scale"]))
    if "start" in extra:
        print(start_row(extra["start"]))
    slirp = extra["slirp4netns TCP Gbit/s"]
    if slirp is not None:
        vr = results["same-node TCP"].get("vrouter")
        print(f"{'userspace peer':<26} slirp4netns (podman's rootless networking), one TCP stream "
              f"namespace -> host: {slirp:.2f} Gbit/s; vrouter same-node TCP {vr:.2f} Gbit/s "
              f"({vr / slirp:.1f}x)")
    if "apply" in extra:
        from benchmarks import apply
        print(apply.row(extra["apply"]))
    cpu = extra["node CPU during 100 Hz ping (cores)"]
    print(f"{'node CPU':<26} idle {extra['node CPU idle (cores)']:.3f} cores; during a 100 Hz "
          f"ping same node {cpu['same']:.3f}, cross node {cpu['cross']:.3f} (both nodes)")
    print(f"{'connect failures':<26} {extra['connect failures']}")
    out = Path(args.json) if args.json else HERE / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, **extra, "seconds": args.seconds,
                               "kernel": platform.release(), "cores": os.cpu_count()}, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
