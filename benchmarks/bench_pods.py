"""Pod-to-pod throughput and packet rate: vrouter beside the Linux kernel, in the same run.

    python3 -m benchmarks.bench_pods [--seconds 5] [--profile DIR]

Builds the kernel reference (../shared/reference/kernel-cluster.sh: bridge + VXLAN + veth) and a
vrouter cluster of the same shape, runs the same iperf3 tests in both, prints each figure and the
ratio vrouter/kernel. Needs root, iperf3 and iproute2. Everything it creates is removed at the end.
"""
from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.system.cluster import Cluster, iperf3, new_prefix

HERE = Path(__file__).resolve().parent
KERNEL_SCRIPT = Path(os.environ.get("VROUTER_KERNEL_REF",
                                    HERE.parent.parent / "shared" / "reference" / "kernel-cluster.sh"))


def tcp_gbps(report: dict) -> float:
    return report["end"]["sum_received"]["bits_per_second"] / 1e9


def udp_kpps(report: dict) -> float:
    """Packets per second that arrived, with 64-byte frames (18-byte UDP payload)."""
    end = report["end"]["sum"]
    return (end["packets"] - end["lost_packets"]) / end["seconds"] / 1e3


TESTS = [
    # name, unit, iperf3 extra args, extractor
    ("TCP throughput", "Gbit/s", (), tcp_gbps),
    ("UDP 64-byte frames", "kpps", ("-u", "-b", "0", "-l", "18"), udp_kpps),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--profile", help="write a cProfile of each vrouter node into this directory")
    args = parser.parse_args()

    kref = new_prefix()
    tmp = Path(tempfile.mkdtemp(prefix="vrouter-bench-"))
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        os.environ["VROUTER_PROFILE"] = str(Path(args.profile).resolve() / "node")
    cluster = Cluster(tmp, pods_per_node=(2, 2))
    rows = []
    try:
        subprocess.run(["bash", str(KERNEL_SCRIPT), "up", kref], check=True, capture_output=True)
        cluster.start()
        paths = {
            "same node": ((f"{kref}-p1-2", "10.244.1.3", f"{kref}-p1-1"),
                          (cluster.pod("a2"), cluster.ip("a2"), cluster.pod("a1"))),
            "cross node": ((f"{kref}-p2-1", "10.244.2.2", f"{kref}-p1-1"),
                           (cluster.pod("b1"), cluster.ip("b1"), cluster.pod("a1"))),
        }
        for where, (kernel_path, vrouter_path) in paths.items():
            for name, unit, extra, extract in TESTS:
                k = extract(iperf3(*kernel_path, *extra, seconds=args.seconds))
                v = extract(iperf3(*vrouter_path, *extra, seconds=args.seconds))
                rows.append((f"{where}: {name}", unit, k, v))
    finally:
        cluster.stop()
        subprocess.run(["bash", str(KERNEL_SCRIPT), "down", kref], capture_output=True)

    print(f"\npod-to-pod, {args.seconds:g} s per test, iperf3, {os.cpu_count()} cores")
    print(f"{'test':<34} {'unit':<7} {'kernel':>9} {'vrouter':>9} {'vrouter/kernel':>15}")
    for name, unit, k, v in rows:
        print(f"{name:<34} {unit:<7} {k:>9.2f} {v:>9.2f} {v / k:>15.3f}")
    if args.profile:
        for path in sorted(Path(args.profile).glob("node.*")):
            print(f"\nprofile of {path.name} (top 12 by own time)")
            pstats.Stats(str(path)).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
