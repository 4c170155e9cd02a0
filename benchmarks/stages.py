"""Per-stage profile of the fast path: what one call of fastpath.dispatch.forward costs for each
kind of traffic, on one core, no I/O.

    python3 -m benchmarks.stages [--repeat 2000]

Each scenario loads a batch once, then restores the input rows from a copy and runs forward()
over it `repeat` times; the cost of restoring the rows is measured alone and subtracted. The
differences between scenarios are the stages' own costs: bridge vs route, route vs overlay
encapsulation, service NAT, segmentation (GSO) and coalescing (GRO) of 64 KiB.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from fastpath.dispatch import forward
from fastpath.groups import Frames
from fastpath.layout import M_LEN, M_ROW, M_START
from tests.fastpath.test_gso import (
    A_IP, A_MAC, B_IP, B_MAC, GW_A, REMOTE_IP, UNDERLAY_A, overlay_train, superframe,
)
from tests.fastpath.test_services import SERVICE, VIP
from tests.harness import load_datagrams, load_frames, process
from vrouter.model import config
from vrouter.node.dataplane import Dataplane


def small(dst, dst_mac, proto="udp", sport=1000):
    l4 = UDP(sport=sport, dport=5201) if proto == "udp" else TCP(sport=sport, dport=80, flags="A")
    return bytes(Ether(src=A_MAC, dst=dst_mac) / IP(src=A_IP, dst=dst) / l4 / (b"x" * 18))


def loaded(dp: Dataplane, how) -> tuple[Frames, int, np.ndarray, np.ndarray]:
    """Load a batch with `how(dp)` and keep a copy of its rows and meta to restore."""
    n = how(dp)
    rows = int(dp.rx.meta[:n, M_ROW].max()) + 1
    used = int((dp.rx.meta[:n, M_START] + dp.rx.meta[:n, M_LEN]).max())
    return dp.rx, n, dp.rx.buf[:rows, :used].copy(), dp.rx.meta[:n].copy()


def time_forward(dp: Dataplane, how, repeat: int) -> tuple[float, int]:
    frames, n, buf, meta = loaded(dp, how)
    rows, used = buf.shape
    out = dp.out
    now = dp.now
    call = forward.overloads[forward.signatures[0]].entry_point   # no dispatch cost per call
    call(frames, 0, n, now, dp.tables, out)

    def restore():
        frames.buf[:rows, :used] = buf
        frames.meta[:n] = meta
        out.fill[:] = 0

    best = float("inf")
    for _round in range(3):   # the best of three rounds: the machine has other work too
        start = time.perf_counter()
        for _ in range(repeat):
            restore()
        baseline = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeat):
            restore()
            call(frames, 0, n, now, dp.tables, out)
        best = min(best, time.perf_counter() - start - baseline)
    return best / repeat, n


def load_tap(port, reads):
    """TAP reads: virtio-net header + frame."""
    return lambda dp: load_frames(dp, [(port, r[10:], r[:10]) for r in reads])


def load_plain(port, frames):
    return lambda dp: load_frames(dp, [(port, f, bytes(10)) for f in frames])


def load_overlay(rows):
    return lambda dp: load_datagrams(dp, [(UNDERLAY_A, datagrams) for datagrams in rows])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    text = open("configs/demo.yaml").read() + SERVICE
    cluster = config.parse(text, "demo.yaml", check_host=False)
    Dataplane(cluster, "node-a").warm_up()   # compile first: peers of later data planes stay up
    node_a, node_b = Dataplane(cluster, "node-a"), Dataplane(cluster, "node-b")
    train = overlay_train(Dataplane(cluster, "node-a"), bytes(65000), 1398)[:44]   # one GSO send
    big = superframe(bytes(65000), 1398)[1]
    big_local = superframe(bytes(65000), 1398, dst=B_IP)[1]
    to_b = [small(REMOTE_IP, GW_A, sport=1000 + k) for k in range(64)]
    singles = [[bytes(VXLAN(vni=1, flags=0x08) / Ether(src="0e:76:0a:f4:01:00", dst="0e:76:0a:f4:02:00")
                      / IP(src=A_IP, dst=REMOTE_IP, ttl=63) / UDP(sport=1000 + k, dport=5201)
                      / (b"x" * 18))] for k in range(64)]
    # established service flows first, so the timed runs hit conntrack
    process(node_a, [(0, small(VIP, GW_A, "tcp", 2000 + k)) for k in range(64)])
    scenarios = [
        ("bridged, 64 x 64 B", node_a, load_plain(0, [small(B_IP, B_MAC)] * 64)),
        ("routed to a local pod, 64 x 64 B", node_a, load_plain(0, [small(B_IP, GW_A)] * 64)),
        ("to the overlay, 64 x 64 B", node_a, load_plain(0, to_b)),
        ("from the overlay, 64 x 64 B", node_b, load_overlay(singles)),
        ("ClusterIP, established, 64 x 64 B", node_a,
         load_plain(0, [small(VIP, GW_A, "tcp", 2000 + k) for k in range(64)])),
        ("super-frame 64 KB routed locally", node_a, load_tap(0, [big_local])),
        ("super-frame 64 KB to the overlay (GSO)", node_a, load_tap(0, [big])),
        (f"GRO train of {len(train)} segments", node_b, load_overlay([train])),
    ]
    print(f"{'scenario':<42} {'us/call':>9} {'ns/frame':>9}")
    for name, dp, how in scenarios:
        seconds, n = time_forward(dp, how, args.repeat)
        print(f"{name:<42} {seconds * 1e6:9.2f} {seconds * 1e9 / n:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
