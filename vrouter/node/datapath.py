"""The node's data-path thread: it owns the TAPs and overlay sockets while it runs.

It loops over fastpath.io.serve, which sleeps in epoll_wait with the GIL released and moves
traffic in compiled code; serve comes back to Python only for the slow path (scapy), for requests
from the control side (trio), and when a peer went silent or came back: the node's beat (once a
second, on whole seconds of the machine's monotonic clock, busy or idle: keepalives, expired
state freed) runs inside serve, and only a change of the peers' liveness comes here, to
`on_beat` (then trio hears of it). 32 idle nodes share two cores. Everything that touches the
tables (status, reload, ARP probes) runs here, between two batches, submitted with `call` (or
`run` from trio), so the fast path never sees a half-made change.

Faults: an exception in the slow path (one frame's handling) or in a request is counted, logged
(throttled) and contained: the frame is dropped, the request's caller gets the exception, the
loop goes on. A TAP whose device vanished (the pod's netns was deleted) is taken out of the
epoll set at once (it would report an error forever) and handed to the node to detach
(`on_port_gone`). If the loop itself fails (epoll_wait fails, a bug outside those guards), the
thread records the failure and calls `on_failure`: the node then exits with a code of its own
(3), keeping its pods' namespaces, and its supervisor restarts it (see vrouter.node.process).

Why a thread and not a trio task per fd: waking trio for a frame costs ~100 us on this machine
class, a raw epoll wake-up ~40-60 us, and busy-polling after traffic (state ST_SPIN_NS) removes
even that for the reply of a request; see the README's latency notes.
"""
from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time
from typing import Callable

import numpy as np
import trio

from fastpath.io import (
    BATCH_FRAMES, FD_NONE, FD_OVERLAY, FD_WAKE, ST_BEAT_NS, ST_GATEWAY_N, ST_GONE_PORT,
    ST_SPIN_NS, TX_BYTES, TX_FRAMES, WHY_BEAT, WHY_CAPTURE, WHY_ERROR, WHY_FLOWS, WHY_PORT_GONE,
    WHY_SLOW, serve,
)
from fastpath.layout import BATCH
from fastpath.reasons import R_DROP_TX_ERROR
from vrouter.node.capture import Captures
from vrouter.node.dataplane import Dataplane
from vrouter.node.flowlog import Batch, collect
from vrouter.node.nodeio import (
    new_fd_port, new_io, new_rx_ring, new_state, new_tx_ring, sockaddr_in,
)

log = logging.getLogger("vrouter.node.datapath")

# the buckets of Stats.batch_sizes by their upper bound (a Prometheus histogram's "le")
BATCH_BUCKETS = ("1", "3", "7", "15", "31", "63", "127", "+Inf")
FAULT_LOG_INTERVAL = 10.0   # seconds between two log lines of one kind of fault
BEAT_NS = 1_000_000_000     # the beat: keepalives, sweeps (fastpath.io._beat)


def _next_beat(now_ns: int) -> int:
    """The whole second of the monotonic clock after now_ns."""
    return (now_ns // BEAT_NS + 1) * BEAT_NS


class Faults:
    """Counts of contained faults, and a log line for each kind at most every few seconds (a
    frame that breaks the slow path may come thousands of times a second)."""

    KINDS = ("slow_path_errors", "request_errors", "beat_errors", "pods_lost")

    def __init__(self):
        self.counts = dict.fromkeys(self.KINDS, 0)
        self._logged: dict[str, float] = {}

    def count(self, kind: str, message: str, *args, exc_info=True) -> None:
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self._logged.get(kind, -FAULT_LOG_INTERVAL) >= FAULT_LOG_INTERVAL:
            self._logged[kind] = now
            log.error(message + " (%s so far: %d)", *args, kind, self.counts[kind],
                      exc_info=exc_info)


class Datapath:
    """The data-path thread of a node (see the module docstring)."""

    def __init__(self, dp: Dataplane, taps: dict, overlay, overlay_port: int,
                 busy_poll_us: int):
        """`taps`: port number -> TapPort, the pods' and the uplink's (port dp.uplink)."""
        self.dp = dp
        self.taps: dict = {}
        self.overlay = overlay
        self.epoll = select.epoll()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fd_port = new_fd_port()
        fd_port[overlay.rx.fileno()] = FD_OVERLAY
        self.epoll.register(overlay.rx.fileno(), select.EPOLLIN)
        fd_port[self.wake_fd] = FD_WAKE
        self.epoll.register(self.wake_fd, select.EPOLLIN)
        peers = [(str(p.underlay), overlay_port) for p in dp.peers]
        self.io = new_io(self.epoll.fileno(), dp.uplink + 1, [s.fileno() for s in overlay.tx],
                         peers, fd_port)
        for port, tap in taps.items():
            self.add_tap(port, tap)
        self.tx = new_tx_ring()
        self.rx = new_rx_ring(dp.rx)
        self.state = new_state(busy_poll_us)
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.request_count = 0       # control-side requests run between batches...
        self.longest_request_ns = 0  # ...and the longest one: the longest the data path paused
        self.captures = Captures(self)
        self.overlay_port = dp.uplink + 1   # the overlay's row in stats and capture
        self.stopping = False
        self.failure: BaseException | None = None
        self.faults = Faults()
        self.thread = threading.Thread(target=self._run, name="datapath", daemon=True)
        self.on_failure: Callable[[], None] = lambda: None
        # a pod's TAP went with its netns (in this thread; the node detaches the pod)
        self.on_port_gone: Callable[[int], None] = lambda port: None
        # the flow log's events drained from the ring (in this thread; the node names them)
        self.on_flows: Callable[[Batch], None] = lambda batch: None
        # in this thread, from `start_beat` on: the beat found a peer's liveness changed
        self.on_beat: Callable[[], None] | None = None

    def set_peers(self, overlay_port: int) -> None:
        """The data plane's peers changed (in this thread, between batches): their addresses
        for sendmmsg, by peer index."""
        addrs = b"".join(sockaddr_in(str(p.underlay), overlay_port) for p in self.dp.peers)
        # a datagram queued for a retry may still point into the old array: keep it a while
        self.retired = [*getattr(self, "retired", [])[-3:], self.io.peer_addrs]
        self.io = self.io._replace(
            peer_addrs=np.frombuffer(addrs or bytes(16), dtype=np.uint64).copy())

    # --- lifecycle -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the compiled data path on the real structures,
        before the node reports ready: serve returns at once for a pending wake-up."""
        self.wake()
        self._serve()
        self._drain_wake()

    def _serve(self) -> int:
        dp = self.dp
        return serve(dp.rx, dp.gw, dp.tables, dp.out, self.io, self.tx, self.rx, self.state)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread (it finishes its batch) and wait for it; then close what it used."""
        if self.epoll.closed:
            return
        self.stopping = True
        self.wake()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        if self.thread.is_alive():   # stuck in the slow path: it is a daemon, it dies with us
            log.warning("the data path did not stop within 10 s")
            return
        self.epoll.close()
        os.close(self.wake_fd)

    def wake(self) -> None:
        os.eventfd_write(self.wake_fd, 1)

    def start_beat(self, on_beat: Callable[[], None]) -> None:
        """Beat from the next whole second on (in this thread: from trio, via `run`); on_beat()
        runs here at the first beat and whenever a peer's liveness changes."""
        self.on_beat = on_beat
        self.dp.tables.peers.peer_up[:] = -1   # the first beat reports every peer
        self.state[ST_BEAT_NS] = _next_beat(time.monotonic_ns())

    def _peers_changed(self) -> None:
        if self.on_beat is None:
            return
        try:
            self.on_beat()
        except Exception as exc:
            self.faults.count("beat_errors", "the data path's beat failed: %r", exc)

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass

    def add_tap(self, port: int, tap) -> None:
        """Serve `tap` as port `port` from the next batch on (in the data-path thread, or
        before it starts)."""
        self.taps[port] = tap
        self.io.stats.port_stats[port] = 0   # a new pod's counts start at zero
        self.io.fd_port[tap.fd] = port
        self.io.tap_fds[port] = tap.fd
        self.epoll.register(tap.fd, select.EPOLLIN)

    def remove_tap(self, port: int):
        """Stop serving a port; returns its TapPort for the caller to close (None if it is not
        served: its device went, and `_port_gone` took it out already)."""
        tap = self.taps.pop(port, None)
        if tap is None:
            return None
        self.epoll.unregister(tap.fd)
        self.io.tap_fds[port] = -1
        self.io.fd_port[tap.fd] = FD_NONE
        return tap

    def _port_gone(self, port: int) -> None:
        """serve() found the port's TAP failing (WHY_PORT_GONE): stop polling it now, so the
        loop never spins on it, and let the node detach the pod the normal way."""
        if self.remove_tap(port) is None:
            return
        self.faults.count("pods_lost", "port %d: its TAP failed (the pod's network namespace is "
                          "gone?); not polled any more, detaching the pod", port, exc_info=False)
        try:
            self.on_port_gone(port)
        except Exception:
            log.exception("telling the node that port %d is gone failed", port)

    def describe(self) -> dict:
        """What `vrouter status` shows of the data path's set-up."""
        return {"busy_poll_us": int(self.state[ST_SPIN_NS]) // 1000,
                "overlay_source_ports": self.overlay.source_ports,
                "requests": self.request_count,
                "longest_request_us": self.longest_request_ns // 1000,
                "tap_offloads": "csum tso4 tso6" + (" uso4 uso6" if all(
                    t.uso for t in self.taps.values()) else "")}

    def traffic(self, port: int) -> dict:
        """Frames and bytes read from and written to a port (pods, the uplink, the overlay)."""
        rx_frames, rx_bytes, tx_frames, tx_bytes = self.io.stats.port_stats[port].tolist()
        return {"rx_frames": rx_frames, "rx_bytes": rx_bytes, "tx_frames": tx_frames,
                "tx_bytes": tx_bytes}

    def batch_sizes(self) -> dict:
        """How many frames the reads returned: counts per bucket, and the frames in all."""
        counts = self.io.stats.batch_sizes.tolist()
        return {"buckets": dict(zip(BATCH_BUCKETS, counts[:BATCH_FRAMES])),
                "frames": counts[BATCH_FRAMES]}

    # --- requests from the control side ----------------------------------------------------------

    def call(self, fn: Callable[[], object],
             done: Callable[[object, BaseException | None], None] | None = None) -> None:
        """Run fn() in the data-path thread between two batches; then done(result, error).
        Without `done` (nobody waits for it: keepalives, probes) an error is logged and
        counted as a request error."""
        self.requests.put((fn, done or self._report))
        self.wake()

    def _report(self, _result, error: BaseException | None) -> None:
        if error is not None:
            self.faults.count("request_errors", "a request in the data path failed: %r", error,
                              exc_info=(type(error), error, error.__traceback__))

    async def run(self, fn: Callable[[], object]):
        """From trio: run fn() in the data-path thread and return its result."""
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        box: list = []

        def done(result, error):
            box.append((result, error))
            token.run_sync_soon(finished.set)

        self.call(fn, done)
        await finished.wait()
        result, error = box[0]
        if error is not None:
            raise error
        return result

    def run_blocking(self, fn: Callable[[], object], timeout: float):
        """From any other thread (not trio's): run fn() in the data-path thread and wait for
        its result at most `timeout` seconds (TimeoutError)."""
        done = threading.Event()
        box: list = []

        def finished(result, error):
            box.append((result, error))
            done.set()
        self.call(fn, finished)
        if not done.wait(timeout):
            raise TimeoutError(f"the data path did not answer within {timeout:g} s")
        result, error = box[0]
        if error is not None:
            raise error
        return result

    def _serve_requests(self) -> None:
        while True:
            try:
                fn, done = self.requests.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter_ns()
            try:
                result, error = fn(), None
            except Exception as exc:   # the caller gets it; the data path goes on
                result, error = None, exc
            self.request_count += 1
            self.longest_request_ns = max(self.longest_request_ns,
                                          time.perf_counter_ns() - started)
            try:
                done(result, error)
            except RuntimeError:
                pass   # trio has already finished (shutdown)
            except Exception:
                log.exception("a data-path request's completion failed")

    # --- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stopping:
                why = self._serve()
                if why == WHY_SLOW:
                    self._slow_path()
                elif why == WHY_PORT_GONE:
                    self._port_gone(int(self.state[ST_GONE_PORT]))
                elif why == WHY_ERROR:
                    raise OSError("epoll_wait failed in the data path")
                elif why == WHY_BEAT:
                    self._peers_changed()
                elif why != WHY_CAPTURE and why != WHY_FLOWS:
                    self._drain_wake()
                if self.captures.sessions:
                    self.captures.drain()
                # the flow log, before any request can change what names its events
                batch = collect(self.dp)
                if batch is not None:
                    self.on_flows(batch)
                self._serve_requests()
        except BaseException as exc:
            self.failure = exc
            log.exception("the data path failed")
            self.on_failure()

    def _slow_path(self) -> None:
        """The frames serve() handed over, one at a time: one that breaks the slow path is
        dropped and counted, the others are answered."""
        dp = self.dp
        items = dp.slow_items(dp.out)
        dp.out.fill[:] = 0
        l2: list = []
        routed: list = []
        for item in items:
            try:
                answer, more = dp.handle_slow([item])
            except Exception as exc:
                self.faults.count("slow_path_errors", "the slow path failed on a frame from "
                                  "port %d (reason %d), dropped it: %r", item[1], item[2], exc)
                continue
            l2 += answer
            routed += more
        try:
            self.write_l2(l2)
            self.route(routed)
        except Exception as exc:
            self.faults.count("slow_path_errors", "sending the slow path's answers failed: %r",
                              exc)

    # --- frames the node originates ----------------------------------------------------------------

    def write_l2(self, frames: list[tuple[int, bytes]]) -> None:
        """Write (port, frame) pairs as they are (ARP, from the slow path)."""
        stats = self.io.stats.port_stats
        for port, frame in frames:
            try:
                self.taps[port].write(frame)
            except (OSError, KeyError):   # KeyError: the pod left meanwhile
                self.dp.counters[R_DROP_TX_ERROR] += 1
                continue
            stats[port, TX_FRAMES] += 1
            stats[port, TX_BYTES] += len(frame)
            if self.captures.sessions:
                self.captures.written(port, frame)

    def route(self, frames: list[bytes]) -> None:
        """Route packets the gateway originates (echo replies, ICMP errors) through
        the fast path; ARP requests it needs for outside neighbours go out too."""
        dp = self.dp
        for first in range(0, len(frames), BATCH):
            self.state[ST_GATEWAY_N] = dp.load_gateway(frames[first:first + BATCH])
            self._serve()   # forwards and writes just those, then returns
            items = dp.slow_items(dp.out)
            dp.out.fill[:] = 0
            self.write_l2(dp.handle_slow(items)[0])
