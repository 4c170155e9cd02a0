"""Where the CPU goes while traffic runs, vrouter and the kernel reference in the same run: for a
cross-node TCP stream and a same-node 64-byte UDP flood, the machine's busy share, the busiest
threads (user and system time, from /proc), and for vrouter's node processes perf's split
between the kernel, the compiled fast path (perf shows numba's code as [JIT]) and libc, with the
kernel functions on top.

    .venv/bin/python -m benchmarks.profile [--seconds 8]

It complements benchmarks.stages (the stages' own cost, no I/O): together they say whether a
gap to the kernel is in the stages, in the system calls and copies around them, or in waiting.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.__main__ import KERNEL_SCRIPT
from benchmarks.measure import iperf_tcp, iperf_udp_kpps
from tests.system.cluster import Cluster, new_prefix

TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP = 2.0   # seconds of traffic before the window: the stream's slow start, ARP


def thread_times() -> dict[tuple[int, int, str], tuple[int, int]]:
    """(pid, tid, comm) -> (user, system) clock ticks of every thread on the machine."""
    times = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2:].split()
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                times[(int(pid), int(tid), comm)] = (int(fields[11]), int(fields[12]))
        except OSError:
            pass   # gone meanwhile
    return times


def cpu_ticks() -> tuple[int, int]:
    """(all, idle) clock ticks of the machine."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]


def window(traffic, seconds: float, perf_pids=(), perf_out: str | None = None) -> dict:
    """Run `traffic()` (returns its rate) in a thread; measure a window of `seconds` inside it."""
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(rate=traffic()))
    runner.start()
    time.sleep(WARM_UP)
    before, (all0, idle0) = thread_times(), cpu_ticks()
    perf = None
    if perf_pids and perf_out:
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "250", "-o", perf_out, "-p",
                                 ",".join(map(str, perf_pids)), "--", "sleep", str(seconds)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    after, (all1, idle1) = thread_times(), cpu_ticks()
    if perf:
        perf.wait()
    runner.join()
    span = seconds * TICKS
    threads = []
    for key, (user, system) in after.items():
        if key in before:
            du, ds = user - before[key][0], system - before[key][1]
            if du + ds > 0.03 * span:
                threads.append(((du + ds) / span, du / span, ds / span, key))
    result["busy"] = 1 - (idle1 - idle0) / (all1 - all0)
    result["threads"] = sorted(threads, reverse=True)[:6]
    return result


def perf_split(path: str) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """([(share, dso)], [(share, kernel symbol)]) of a perf recording."""
    def report(sort: str) -> list[tuple[float, str]]:
        out = subprocess.run(["perf", "report", "-q", "-i", path, "--sort", sort, "--stdio"],
                             capture_output=True, text=True).stdout
        rows = []
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0].endswith("%"):
                rows.append((float(parts[0][:-1]), " ".join(parts[1:])))
        return rows
    dsos: dict[str, float] = {}
    for share, dso in report("dso"):
        name = "compiled fast path" if dso.startswith("[JIT]") else dso
        dsos[name] = dsos.get(name, 0.0) + share
    symbols = [(s, name.replace("[k] ", "")) for s, name in report("sym") if "[k]" in name][:8]
    return sorted(((v, k) for k, v in dsos.items()), reverse=True), symbols


def show(label: str, unit: str, result: dict) -> None:
    print(f"\n{label}: {result['rate']:.2f} {unit}; the machine {100 * result['busy']:.0f}% busy "
          f"({os.cpu_count()} cores)")
    for cores, user, system, (pid, tid, comm) in result["threads"]:
        print(f"  {comm[:15]:15s} pid {pid:<7d} {cores:.2f} cores (user {user:.2f}, "
              f"system {system:.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring window per test")
    args = parser.parse_args()
    with_perf = shutil.which("perf") is not None
    kref, prefix = new_prefix(), new_prefix()
    tmp = Path(tempfile.mkdtemp(prefix="vrouter-profile-"))
    pods = [{"name": f"{prefix}-a1", "node": "node-a"}, {"name": f"{prefix}-a2", "node": "node-a"},
            {"name": f"{prefix}-b1", "node": "node-b"}]
    cluster = Cluster(tmp, pods_per_node=(0, 0), extra_pods=pods, prefix=prefix)
    seconds = args.seconds
    traffic_seconds = seconds + 2 * WARM_UP
    try:
        subprocess.run(["bash", str(KERNEL_SCRIPT), "up", kref], check=True, capture_output=True)
        cluster.start()
        nodes = [cluster.status(n)["pid"] for n in ("node-a", "node-b")]
        c = cluster
        tests = [
            ("cross-node TCP", "Gbit/s", iperf_tcp,
             (f"{kref}-p2-1", "10.244.2.2", f"{kref}-p1-1"), (c.pod("b1"), c.ip("b1"), c.pod("a1"))),
            ("same-node UDP 64 B", "kpps", iperf_udp_kpps,
             (f"{kref}-p1-2", "10.244.1.3", f"{kref}-p1-1"), (c.pod("a2"), c.ip("a2"), c.pod("a1"))),
        ]
        for name, unit, measure, kernel_pair, vrouter_pair in tests:
            show(f"{name}, kernel", unit,
                 window(lambda: measure(*kernel_pair, traffic_seconds), seconds))
            perf_out = str(tmp / "perf.data")
            show(f"{name}, vrouter", unit,
                 window(lambda: measure(*vrouter_pair, traffic_seconds), seconds,
                        nodes if with_perf else (), perf_out))
            if with_perf and os.path.exists(perf_out):
                dsos, symbols = perf_split(perf_out)
                print("  perf, the node processes: " + ", ".join(f"{d} {s:.0f}%" for s, d in dsos
                                                                if s >= 1))
                print("  kernel functions on top: " + ", ".join(f"{n} {s:.1f}%"
                                                               for s, n in symbols))
                os.unlink(perf_out)
        if not with_perf:
            print("\n(perf is not installed: no split of the node processes' time)")
    finally:
        cluster.stop()
        subprocess.run(["bash", str(KERNEL_SCRIPT), "down", kref], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
