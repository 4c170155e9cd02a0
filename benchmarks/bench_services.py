"""Pod -> ClusterIP over TCP: vrouter's Services fast path beside the kernel reference's iptables
ClusterIP, in the same run.

    python3 -m benchmarks.bench_services [--seconds 5] [--threads 4]

The kernel reference (../shared/reference/kernel-cluster.sh) DNATs 10.96.0.10:5201 with
kube-proxy-style iptables rules on node 1 to the two pods of node 2. The vrouter cluster has the
same shape: a client pod on node-a, two backends on node-b, and a Service 10.96.0.10:5201 over
them. Both run the same tool (benchmarks/tcp_load.py): one bulk TCP connection (Gbit/s) and
connections opened and closed by several threads (connections per second), each once to the
ClusterIP and once straight to a backend pod, so the cost of the service itself shows too. The
direct runs use another server port (5202): otherwise their 4-tuples would collide with the
ClusterIP runs' connections still remembered by conntrack (both the kernel's and vrouter's).
Needs root, iproute2 and iptables; everything it creates is removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_pods import KERNEL_SCRIPT
from tests.system.cluster import Cluster, netns_exec, new_prefix, wait_for

TOOL = str(Path(__file__).with_name("tcp_load.py"))
VIP, PORT, DIRECT_PORT = "10.96.0.10", 5201, 5202
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


def run_tool(netns: str, *args: str, timeout: float) -> dict:
    result = netns_exec(netns, sys.executable, TOOL, *args, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"tcp_load {' '.join(args)} in {netns} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--threads", type=int, default=4, help="client threads for connections/s")
    args = parser.parse_args()

    kref, prefix = new_prefix(), new_prefix()
    backend = {"labels": {"app": "bench"}}
    pods = [{"name": f"{prefix}-a1", "node": "node-a"},
            {"name": f"{prefix}-b1", "node": "node-b", **backend},
            {"name": f"{prefix}-b2", "node": "node-b", **backend}]
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="vrouter-bench-")), pods_per_node=(0, 0),
                      extra_pods=pods, services=SERVICE, prefix=prefix)
    servers: list[subprocess.Popen] = []
    rows = []
    try:
        subprocess.run(["bash", str(KERNEL_SCRIPT), "up", kref], check=True, capture_output=True)
        rules = netns_exec(f"{kref}-n1", "iptables", "-t", "nat", "-S", "PREROUTING").stdout
        if VIP not in rules:
            raise RuntimeError("the kernel reference has no iptables ClusterIP (iptables missing?)")
        cluster.start()
        setups = {   # client netns, backend netns, a backend's address
            "kernel": (f"{kref}-p1-1", [f"{kref}-p2-1", f"{kref}-p2-2"], "10.244.2.2"),
            "vrouter": (cluster.pod("a1"), [cluster.pod("b1"), cluster.pod("b2")],
                        cluster.ip(cluster.pod("b1"))),
        }
        for _client, backends, _direct in setups.values():
            for netns in backends:
                servers.append(subprocess.Popen(["ip", "netns", "exec", netns, sys.executable,
                                                 TOOL, "serve", str(PORT), str(DIRECT_PORT)]))
                wait_for(lambda: f":{PORT}" in netns_exec(netns, "ss", "-ltn").stdout,
                         what=f"server in {netns}")
        timeout = args.seconds + 60
        for target in ("ClusterIP", "pod IP"):
            results = {}
            for name, (client, _backends, direct) in setups.items():
                host, port = (VIP, PORT) if target == "ClusterIP" else (direct, DIRECT_PORT)
                stream = run_tool(client, "stream", host, str(port), f"{args.seconds:g}",
                                  timeout=timeout)
                rate = run_tool(client, "connect", host, str(port), f"{args.seconds:g}",
                                str(args.threads), timeout=timeout)
                results[name] = (stream["gbps"], rate["per_second"], rate["failed"])
            k, v = results["kernel"], results["vrouter"]
            rows.append((f"TCP throughput to {target}", "Gbit/s", k[0], v[0], ""))
            rows.append((f"new connections/s to {target}", "conn/s", k[1], v[1],
                         f"failed: kernel {k[2]}, vrouter {v[2]}"))
        conntrack = cluster.status("node-a")["conntrack"]
        counters = cluster.counters("node-a")
    finally:
        for server in servers:
            server.kill()
            server.wait()
        cluster.stop()
        subprocess.run(["bash", str(KERNEL_SCRIPT), "down", kref], capture_output=True)

    print(f"\npod -> service over TCP, client on node 1, 2 backends on node 2, "
          f"{args.seconds:g} s per test, {args.threads} connecting threads, {os.cpu_count()} cores")
    print(f"{'test':<36} {'unit':<7} {'kernel':>10} {'vrouter':>10} {'vrouter/kernel':>15}")
    for name, unit, k, v, note in rows:
        print(f"{name:<36} {unit:<7} {k:>10.2f} {v:>10.2f} {v / k:>15.3f}  {note}")
    print(f"\nvrouter node-a afterwards: {counters['svc_new_flows']} service flows opened, "
          f"{counters['ct_evicted']} conntrack entries evicted, {conntrack['entries']} live of "
          f"{conntrack['capacity']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
