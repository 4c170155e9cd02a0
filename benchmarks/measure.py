"""Measurements run inside pod namespaces, the same for the kernel reference, vrouter and the
raw ceiling: iperf3 TCP throughput and 64-byte UDP packet rate, ping round trips, and
benchmarks/tcp_load.py (one TCP stream, or connections per second) for Services."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.system.cluster import iperf3, netns_exec

TCP_LOAD = str(Path(__file__).with_name("tcp_load.py"))


def iperf_tcp(server_ns: str, server_ip: str, client_ns: str, seconds: float) -> float:
    """Gbit/s received."""
    report = iperf3(server_ns, server_ip, client_ns, seconds=seconds)
    return report["end"]["sum_received"]["bits_per_second"] / 1e9


def iperf_udp_kpps(server_ns: str, server_ip: str, client_ns: str, seconds: float) -> float:
    """Thousands of 64-byte frames (18-byte UDP payload, FCS counted) that arrived per second,
    the sender going as fast as it can."""
    report = iperf3(server_ns, server_ip, client_ns, "-u", "-b", "0", "-l", "18", seconds=seconds)
    end = report["end"]["sum"]
    return (end["packets"] - end["lost_packets"]) / end["seconds"] / 1e3


def ping_rtts(client_ns: str, dst: str, count: int = 300, interval: float = 0.01) -> list[float]:
    """Round-trip times in ms, sorted (ping at 1/interval per second)."""
    result = netns_exec(client_ns, "ping", "-c", str(count), "-i", str(interval), "-W", "1", dst,
                        timeout=count * interval + 30)
    times = sorted(float(part.split("=")[1]) for line in result.stdout.splitlines()
                   for part in line.split() if part.startswith("time="))
    if len(times) < count * 0.9:
        raise RuntimeError(f"ping {dst} from {client_ns}: {len(times)} of {count} answered")
    return times


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def tcp_load(netns: str, *args: str, timeout: float) -> dict:
    result = netns_exec(netns, sys.executable, TCP_LOAD, *args, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"tcp_load {' '.join(args)} in {netns} failed:\n{result.stderr}")
    return json.loads(result.stdout)
