"""Cluster state in etcd: how long from `vrouter apply` of a Service to the first connection
through it from every node, and what an idle node costs etcd.

    python3 -m benchmarks.apply [--applies 50] [--idle-seconds 30] [--lease-ttl 30] [--json FILE]

Builds what tests/system/test_etcd.py builds (a real etcd on a bridge between three host
namespaces, one node registered in each, none in the cluster file), applies a backend Pod per
node, then `--applies` times: a Service with a new clusterIP, while a prober in one pod on each
node tries to connect to it every 10 ms; the time is from the start of `vrouter apply` (the
command, in its own process, as a user runs it) to each prober's first connection, and the
row is the slowest node's, p50 and p99. Then every node idles `--idle-seconds` and the row is
the etcd requests it sent per second (its lease keepalives; its watch is one long request).
Needs root; removes everything it creates. Also an optional row of `python3 -m benchmarks`
(`--apply`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import percentile
from tests.system.cluster import wait_for
from tests.system.etcdcluster import EtcdCluster
from tests.system.test_services import SERVER, TCP_PORT, UDP_PORT

PROBER = r"""
import socket, sys, time
# one line per Service: "ADDRESS PORT"; answers with the monotonic time of the first connection
for line in sys.stdin:
    address, port = line.split()
    while True:
        s = socket.socket()
        s.settimeout(0.01)
        try:
            s.connect((address, int(port)))
            s.close()
            break
        except OSError:
            s.close()
            time.sleep(0.005)
    print(time.monotonic(), flush=True)
"""


def pods(prefix: str, names) -> str:
    return "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {prefix}-p{k + 1}, labels: {{app: bench}}}}
spec: {{nodeName: {node}}}
""" for k, node in enumerate(names))


def service(k: int) -> tuple[str, str]:
    vip = f"10.96.{1 + k // 250}.{1 + k % 250}"
    return vip, f"""apiVersion: v1
kind: Service
metadata: {{name: bench-{k}}}
spec:
  clusterIP: {vip}
  selector: {{app: bench}}
  ports: [{{port: 80, targetPort: {TCP_PORT}}}]
"""


def measure(applies: int = 50, idle_seconds: float = 30, lease_ttl: int = 30) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="vrouter-bench-apply-"))
    cluster = EtcdCluster(tmp, lease_ttl=lease_ttl)
    procs: list[subprocess.Popen] = []
    try:
        cluster.start().start_all()
        cluster.apply(pods(cluster.prefix, cluster.names))
        for k, name in enumerate(cluster.names):
            pod = cluster.pod(f"p{k + 1}")
            wait_for(lambda: pod in {p["pod"] for p in cluster.status(name)["ports"]},
                     timeout=60, what=f"{pod} on {name}")
            procs.append(subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, SERVER,
                                           pod, str(TCP_PORT), str(UDP_PORT)]))
        for k in range(3):
            wait_for(lambda: f":{TCP_PORT}" in cluster.sh(f"p{k + 1}", "ss", "-ltn").stdout,
                     what="server")
        probers = [subprocess.Popen(["ip", "netns", "exec", cluster.pod(f"p{k + 1}"),
                                     sys.executable, "-c", PROBER], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True) for k in range(3)]
        procs += probers
        slowest, commands = [], []
        for k in range(applies):
            vip, text = service(k)
            path = tmp / f"svc{k}.yaml"
            path.write_text(text)
            for p in probers:
                p.stdin.write(f"{vip} 80\n")
                p.stdin.flush()
            start = time.monotonic()
            result = cluster.vrouter("apply", "-f", str(path), "--cluster", str(cluster.path))
            commands.append(time.monotonic() - start)
            if result.returncode != 0:
                raise RuntimeError(result.stderr)
            firsts = [float(p.stdout.readline()) for p in probers]
            slowest.append(max(firsts) - start)
        before = {n: cluster.status(n)["store"]["requests"] for n in cluster.names}
        time.sleep(idle_seconds)   # the measurement: what idling costs
        after = {n: cluster.status(n)["store"]["requests"] for n in cluster.names}
        idle = {n: (after[n] - before[n]) / idle_seconds for n in cluster.names}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cluster.stop()
    slowest, commands = sorted(slowest), sorted(commands)
    return {"applies": applies, "apply_to_all_nodes_p50_ms": percentile(slowest, 0.5) * 1000,
            "apply_to_all_nodes_p99_ms": percentile(slowest, 0.99) * 1000,
            "apply_command_p50_ms": percentile(commands, 0.5) * 1000,
            "idle_requests_per_second_per_node": sum(idle.values()) / len(idle),
            "idle_seconds": idle_seconds, "lease_ttl": lease_ttl, "leftovers": cluster.leftovers()}


def row(r: dict) -> str:
    return (f"{'apply -> every node':<26} Service to a first connection from all 3 nodes: p50 "
            f"{r['apply_to_all_nodes_p50_ms']:.0f} ms, p99 {r['apply_to_all_nodes_p99_ms']:.0f} "
            f"ms over {r['applies']} applies (the apply command alone p50 "
            f"{r['apply_command_p50_ms']:.0f} ms); idle node: "
            f"{r['idle_requests_per_second_per_node']:.2f} etcd requests/s "
            f"(lease TTL {r['lease_ttl']} s)")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.apply",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--applies", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--lease-ttl", type=int, default=30)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = measure(args.applies, args.idle_seconds, args.lease_ttl)
    print(row(result))
    if result["leftovers"]:
        print(f"left behind: {result['leftovers']}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if result["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())
