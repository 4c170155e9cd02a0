"""What the flow log costs new connections, end to end: pod -> ClusterIP connections per second
(benchmarks/tcp_load.py connect, as `python3 -m benchmarks` measures them) on two clusters of
the same shape, one with the flow log off (cluster.flowLogEvents: 0), one with the default ring,
measured in turns so that both see the same machine.

    python3 -m benchmarks.flowlog [--seconds 5] [--rounds 3] [--threads 4]

Each cluster: 2 nodes, a client pod on node-a, a Service over two backends on node-b (every
connection is a start and an end in the flow log of both nodes). Prints every round (the two
clusters in turns, ABBA, as conntrack tables fill and the machine's load drifts) and the means. Needs root; removes everything it creates.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.__main__ import PORT, SERVICE, VIP
from benchmarks.measure import tcp_load
from tests.system.cluster import Cluster, netns_exec, new_prefix, wait_for

HERE = Path(__file__).resolve().parent


def new_cluster(flow_log_events: int | None) -> Cluster:
    prefix = new_prefix()
    backend = {"labels": {"app": "bench"}}
    pods = [{"name": f"{prefix}-a1", "node": "node-a"},
            {"name": f"{prefix}-b1", "node": "node-b", **backend},
            {"name": f"{prefix}-b2", "node": "node-b", **backend}]
    options = {"dns": {"address": "10.96.0.53"}}
    if flow_log_events is not None:
        options["flowLogEvents"] = flow_log_events
    return Cluster(Path(tempfile.mkdtemp(prefix="vrouter-bench-")), pods_per_node=(0, 0),
                   extra_pods=pods, services=SERVICE, prefix=prefix, options=options)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.flowlog",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    clusters = {"flow log off": new_cluster(0), "flow log on": new_cluster(None)}
    servers = []
    rates: dict[str, list[float]] = {name: [] for name in clusters}
    try:
        for cluster in clusters.values():
            cluster.start()
            for short in ("b1", "b2"):
                netns = cluster.pod(short)
                servers.append(subprocess.Popen(["ip", "netns", "exec", netns, sys.executable,
                                                 str(HERE / "tcp_load.py"), "serve", str(PORT)]))
                wait_for(lambda: f":{PORT}" in netns_exec(netns, "ss", "-ltn").stdout,
                         what=f"server in {netns}")
        for k in range(args.rounds):
            order = list(clusters.items())
            for name, cluster in order if k % 2 == 0 else order[::-1]:   # ABBA: drift cancels
                rate = tcp_load(cluster.pod("a1"), "connect", VIP, str(PORT), f"{args.seconds:g}",
                                str(args.threads), timeout=args.seconds + 60)
                if rate["failed"]:
                    raise RuntimeError(f"{name}: {rate['failed']} connections failed")
                rates[name].append(rate["per_second"])
                print(f"round {k + 1}: {name:<13} {rate['per_second']:8.0f} conn/s", flush=True)
        for name, cluster in clusters.items():
            flows = cluster.status("node-a")["flows"]
            print(f"{name}: node-a's flow log: {flows['events']} events, ring {flows['ring']}")
    finally:
        for server in servers:
            server.kill()
            server.wait()
        for cluster in clusters.values():
            cluster.stop()
            shutil.rmtree(cluster.path.parent, ignore_errors=True)
    off, on = sum(rates["flow log off"]), sum(rates["flow log on"])
    print(f"mean: off {off / args.rounds:.0f} conn/s, on {on / args.rounds:.0f} conn/s: the "
          f"flow log costs {(1 - on / off) * 100:+.1f}% of new connections per second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
