"""`vrouter capture`, the node's side: frames at a port as the node reads them (as received) or
writes them (as sent, after NAT), streamed as pcapng with one interface per port.

The I/O edge copies captured frames into a ring (fastpath.io._capture; when nobody captures it
costs one test per frame). The data-path thread drains the ring whenever serve returns (it
returns at least every FLUSH_MS while a capture runs) and hands each session its frames in one
batch; the session's trio task writes them as pcapng to its client.
"""
from __future__ import annotations

import io
import itertools
import os
import time

import trio
from scapy.utils import RawPcapNgWriter

from fastpath.io import CAPTURE_RX, CAPTURE_TX, ST_TIMEOUT_MS

FLUSH_MS = 50           # at most this late while capturing
IDLE_TIMEOUT_MS = 1000
QUEUED_BATCHES = 256    # per session; beyond that the client is too slow and batches are dropped
MAX_SESSIONS = 8        # captures running on one node at once
LINKTYPE_ETHERNET = 1


class PcapNgStream(RawPcapNgWriter):
    """scapy's pcapng writer (its blocks and interface table), writing into a stream."""

    def __init__(self, stream):
        super().__init__(os.devnull)
        self.f.close()
        self.f = stream
        self.linktype = LINKTYPE_ETHERNET
        self._write_header(None)

    def frame(self, data: bytes, time_ns: int, ifname: str, sent: bool) -> None:
        self._write_packet(data, linktype=LINKTYPE_ETHERNET, sec=time_ns / 1e9,
                           ifname=ifname.encode(), direction=2 if sent else 1)


class Session:
    def __init__(self, points: dict[int, int], names: dict[int, str], token):
        self.points = points        # port -> CAPTURE_RX | CAPTURE_TX
        self.names = names          # port -> interface name in the capture
        self.token = token
        self.send, self.receive = trio.open_memory_channel(QUEUED_BATCHES)
        self.dropped = 0

    def offer(self, frames: list) -> None:
        """From the data-path thread: this session's frames of a drained batch."""
        mine = [f for f in frames if self.points.get(f[0], 0) & (CAPTURE_TX if f[1] else CAPTURE_RX)]
        if not mine:
            return

        def put():
            try:
                self.send.send_nowait(mine)
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.dropped += len(mine)
        try:
            self.token.run_sync_soon(put)
        except RuntimeError:
            pass   # trio is gone: the node is stopping

    async def pcapng(self):
        """Chunks of a pcapng stream, until the client goes (the caller stops iterating)."""
        buffer = io.BytesIO()
        writer = PcapNgStream(buffer)
        yield _take(buffer)
        async for frames in self.receive:
            for port, sent, time_ns, data in frames:
                writer.frame(data, time_ns, self.names.get(port, f"port{port}"), sent)
            yield _take(buffer)


def _take(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data


class Captures:
    """The data path's capture sessions; all but `add`/`remove` run in the data-path thread."""

    def __init__(self, datapath):
        self.datapath = datapath
        self.sessions: dict[int, Session] = {}
        self.ids = itertools.count(1)
        self.refused = 0   # sessions refused: MAX_SESSIONS were running
        self.slow_dropped = 0   # frames dropped for sessions that have ended: their client was slow

    def add(self, session: Session) -> int | None:
        """The session's key, or None when MAX_SESSIONS run already (counted)."""
        if len(self.sessions) >= MAX_SESSIONS:
            self.refused += 1
            return None
        key = next(self.ids)
        self.sessions[key] = session
        self._arm()
        return key

    def remove(self, key: int) -> None:
        session = self.sessions.pop(key, None)
        if session is not None:
            self.slow_dropped += session.dropped
        self._arm()

    def drops(self) -> dict:
        """Captured frames that never reached a client: the ring was full (the data-path thread
        did not drain it in time), or a client read too slowly (its queue was full)."""
        return {"capture_dropped_ring_full": int(self.datapath.io.capture.fill[2]),
                "capture_dropped_slow_reader": self.slow_dropped
                + sum(s.dropped for s in self.sessions.values())}

    def _arm(self) -> None:
        capture, state = self.datapath.io.capture, self.datapath.state
        capture.points[:] = 0
        for session in self.sessions.values():
            for port, bits in session.points.items():
                capture.points[port] |= bits
        capture.active[0] = 1 if self.sessions else 0
        state[ST_TIMEOUT_MS] = FLUSH_MS if self.sessions else IDLE_TIMEOUT_MS
        if not self.sessions:
            capture.fill[:2] = 0

    def written(self, port: int, frame: bytes) -> None:
        """A frame the slow path wrote itself (an ARP answer): after what the ring holds."""
        self.drain()
        for session in self.sessions.values():
            session.offer([(port, True, time.time_ns(), frame)])

    def drain(self) -> None:
        capture = self.datapath.io.capture
        rows = int(capture.fill[0])
        if not rows:
            return
        index = capture.index[:rows].tolist()
        data = capture.data[0]
        frames = [(where >> 1, bool(where & 1), time_ns, data[start:start + length].tobytes())
                  for start, length, where, time_ns in index]
        capture.fill[:2] = 0
        for session in self.sessions.values():
            session.offer(frames)
