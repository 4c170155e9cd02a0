"""Running a node's data plane in tests and benchmarks, sans-IO: frames in, (target, bytes) out.

A stand-in for the node's I/O edge (fastpath.io, which tests/fastpath/test_io.py drives over
real file descriptors): it loads frames into a Dataplane's batch as a TAP read or a recvmmsg
would, runs the compiled fast path, answers what it hands to the slow path, routes what the
gateway originates back through it, and reads the output batch as records. Targets are port
numbers (pods 0..P-1, then the uplink) or OVERLAY_TARGET + peer index.
"""
from __future__ import annotations

from typing import NamedTuple

from fastpath.dispatch import forward
from fastpath.groups import Frames, Output
from fastpath.layout import (
    BATCH, F_ROWS, O_DONE, O_FRAME, O_KIND, O_LEN, O_ROW, O_SEGMENT, O_SOCKET, O_SRC, O_START,
    O_TARGET, OUT_OVERLAY, OUT_PORT, OUT_SLOW, SRC_DATA, VNET_HDR_LEN,
)
from vrouter.node.dataplane import NO_VNET, Dataplane, load_datagrams as _load_datagrams
from vrouter.node.dataplane import load_into, vnet_header

OVERLAY_TARGET = 1 << 20


def still_clock(at: float = 1_000_000.0):
    """A clock that does not move: the data plane's view of time (peer liveness, MAC ageing,
    conntrack expiry) then depends on what a test does, not on how fast the machine runs it
    (with the wall clock, a test slower than 3 s finds its overlay peers down)."""
    return lambda: at


class Emitted(NamedTuple):
    """One write or send of the data plane, as tests see it."""
    target: int        # port, or OVERLAY_TARGET + peer
    data: bytes        # the frame (ports) or one VXLAN datagram (overlay)
    vnet: bytes        # ports: the virtio-net header written in front of the frame
    socket: int        # overlay: which send socket (outer UDP source port)


def collect(dp: Dataplane, frames: Frames, out: Output) -> list[Emitted]:
    """The output batch as records: flood copies and GSO trains expanded, slow-path rows and
    rows GRO merged away left out."""
    emitted = []
    for row in out.rows[:int(out.fill[F_ROWS])].tolist():
        kind, length, target = row[O_KIND], row[O_LEN], row[O_TARGET]
        if row[O_DONE] or kind == OUT_SLOW:
            continue
        source = out.data[0] if row[O_SRC] == SRC_DATA else frames.buf[row[O_ROW]]
        data = source[row[O_START]:row[O_START] + length]
        if kind == OUT_OVERLAY:
            size = row[O_SEGMENT] or length
            emitted += [Emitted(OVERLAY_TARGET + target, data[k:k + size].tobytes(), b"",
                                row[O_SOCKET]) for k in range(0, length, size)]
            continue
        vnet = vnet_header(frames.meta[row[O_FRAME]])
        ports = [target] if kind == OUT_PORT else sorted(p for p in dp.ports if p != target)
        emitted += [Emitted(p, data.tobytes(), vnet, 0) for p in ports]
    return emitted


def run(dp: Dataplane, frames: Frames, n: int) -> list[Emitted]:
    """Forward n loaded frames, answer what goes to the slow path, then route what the gateway
    originates; everything written or sent, in order."""
    emitted: list[Emitted] = []
    routed: list[bytes] = []
    i = 0
    while True:
        dp.out.fill[:] = 0
        i = forward(frames, i, n, dp.now, dp.tables, dp.out)
        emitted += collect(dp, frames, dp.out)
        l2, more = dp.handle_slow(dp.slow_items(dp.out))
        emitted += [Emitted(port, frame, NO_VNET, 0) for port, frame in l2]
        routed += more
        if i >= n:
            break
    for first in range(0, len(routed), BATCH):
        emitted += run(dp, dp.gw, dp.load_gateway(routed[first:first + BATCH]))
    return emitted


def load_frames(dp: Dataplane, items) -> int:
    """(in_port, frame, virtio-net header) triples into the rx batch, one row each."""
    return load_into(dp.rx, items)


def load_datagrams(dp: Dataplane, rows: list[tuple[int, list[bytes]]]) -> int:
    """(outer source IPv4 as int, [VXLAN datagrams]) per row of the rx batch, back to back as a
    UDP GRO train lies in a receive buffer; returns the frame count."""
    return _load_datagrams(dp.rx, rows)


def process(dp: Dataplane, frames: list[tuple[int, bytes]], detail: bool = False) -> list:
    """Run (in_port, frame) pairs (no virtio-net header) through the data plane. Returns
    (target, bytes) pairs, or Emitted records with `detail`."""
    out = []
    for first in range(0, len(frames), BATCH):
        chunk = [(p, f, NO_VNET) for p, f in frames[first:first + BATCH]]
        out += run(dp, dp.rx, load_frames(dp, chunk))
    return out if detail else [(e.target, e.data) for e in out]


def process_tap(dp: Dataplane, in_port: int, reads: list[bytes]) -> list[Emitted]:
    """Run what reads of port `in_port`'s TAP returned (virtio-net header + frame)."""
    out = []
    for first in range(0, len(reads), BATCH):
        chunk = [(in_port, r[VNET_HDR_LEN:], r[:VNET_HDR_LEN].ljust(VNET_HDR_LEN, b"\0"))
                 for r in reads[first:first + BATCH]]
        out += run(dp, dp.rx, load_frames(dp, chunk))
    return out


def process_datagrams(dp: Dataplane, datagrams: list[tuple[int, object]], segment: int = 0,
                      detail: bool = False) -> list:
    """Run (outer_source_ip_int, payload) pairs through the data plane, one receive buffer row
    each. A payload is one VXLAN datagram; or, with `segment`, a UDP GRO train cut into
    datagrams of that size; or a list of datagrams lying back to back in the row."""
    rows = []
    for source, payload in datagrams:
        if isinstance(payload, (bytes, bytearray)):
            size = segment or len(payload)
            payload = [payload[k:k + size] for k in range(0, len(payload), size)]
        rows.append((source, payload))
    out = run(dp, dp.rx, load_datagrams(dp, rows))
    return out if detail else [(e.target, e.data) for e in out]


def keepalives(dp: Dataplane) -> list[Emitted]:
    """The node's overlay keepalives, routed through the fast path as the data path does."""
    if not dp.keepalive_frames:
        return []
    return run(dp, dp.gw, dp.load_gateway(dp.keepalive_frames))
