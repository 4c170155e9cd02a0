"""One emulated node: a trio process that owns its pods' TAP devices and its overlay socket.

Setup is synchronous and registered on an ExitStack, so a failure at any step (or Ctrl-C, or
SIGTERM) removes whatever was created. Then one thin task per fd waits until it is readable,
drains up to a batch of frames into the shared batch buffer, runs the data plane once and writes
the results, all without yielding in between, so the tasks never see each other's half-batches.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import time

import trio

from fastpath.layout import R_DROP_TX_ERROR
from vrouter import control, outside, state
from vrouter.config import Cluster, ConfigError, load
from vrouter.dataplane import OVERLAY_TARGET, Dataplane
from vrouter.status import node_status
from vrouter.tap import HostError, PodPort, attach_pod, check_host

log = logging.getLogger("vrouter.node")

PROBE_INTERVAL = 0.2
KEEPALIVE_INTERVAL = 1.0


class Stop(Exception):
    """SIGTERM during setup: unwind it like Ctrl-C does."""


class _Signals:
    """Signal policy outside trio: during setup SIGINT/SIGTERM abort it (Stop); afterwards they
    only set a flag, so that trio's own receiver and our cleanup are never interrupted."""

    def __init__(self):
        self.main_pid = os.getpid()
        self.raising = True
        self.received: int | None = None

    def __call__(self, signum, frame):
        # pyroute2 forks helpers and stops them with SIGTERM: a forked copy of us must just exit,
        # never run the parent's cleanup (it would delete the parent's namespaces)
        if os.getpid() != self.main_pid:
            os._exit(0)
        self.received = signum
        if self.raising:
            raise Stop()


class Node:
    def __init__(self, cluster: Cluster, node_name: str):
        self.cluster = cluster
        self.name = node_name
        self.node = cluster.node(node_name)
        self.dp = Dataplane(cluster, node_name)
        self.ports: list[PodPort] = []
        self.uplink: outside.UplinkPort | None = None
        self.tx: list = []   # what a port number writes to: the pods' TAPs, then the uplink
        self.created_netns: list[str] = []
        self.udp: socket.socket | None = None
        self.raw: socket.socket | None = None
        self.peer_addrs = [str(p.underlay) for p in self.dp.peers]
        self.started = time.time()

    # --- setup ------------------------------------------------------------------------------

    def setup(self, stack: contextlib.ExitStack) -> None:
        self.dp.warm_up()   # compile before creating anything, so readiness means "fast path hot"
        self._open_overlay(stack)
        stack.callback(state.remove_traces, self.cluster.name, self.name)
        for pod in self.cluster.pods_of(self.name):
            self.ports.append(attach_pod(self.cluster, pod, stack, self.created_netns))
            state.write_record(self.cluster.name, self.name, self.created_netns)
        state.write_record(self.cluster.name, self.name, self.created_netns)
        self.uplink = outside.attach(self.cluster, self.node, stack)
        self.tx = [*self.ports, self.uplink]

    def _open_overlay(self, stack: contextlib.ExitStack) -> None:
        addr = str(self.node.underlay)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stack.callback(udp.close)
        try:
            udp.bind((addr, self.cluster.overlay.port))
        except OSError as exc:
            why = ("it is not an address of this network namespace"
                   if exc.errno == 99 else exc.strerror)
            raise HostError(f"cannot bind the overlay socket to {addr}:{self.cluster.overlay.port} "
                            f"(node {self.name!r} underlay): {why}") from None
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        udp.setblocking(False)
        # a raw socket lets the fast path write outer IPv4/UDP itself, so the outer UDP source
        # port can carry the inner flow's hash (ECMP entropy) as Linux and VPP do
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        stack.callback(raw.close)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        raw.setblocking(False)
        self.udp, self.raw = udp, raw

    # --- the data path ----------------------------------------------------------------------

    def emit(self, out) -> None:
        for target, frame in out:
            try:
                if target < OVERLAY_TARGET:
                    self.tx[target].file.write(frame)
                else:
                    self.raw.sendto(frame, (self.peer_addrs[target - OVERLAY_TARGET], 0))
            except OSError:
                self.dp.counters[R_DROP_TX_ERROR] += 1

    async def pump_tap(self, port_no: int) -> None:
        port = self.tx[port_no]
        views = self.dp.rx.rx_views
        batch = len(views)
        while True:
            await trio.lowlevel.wait_readable(port.fd)
            lengths = []
            readinto = port.file.readinto
            while len(lengths) < batch:
                try:
                    got = readinto(views[len(lengths)])
                except OSError:
                    got = None
                if not got:
                    break
                lengths.append(got)
            if lengths:
                self.dp.load_received(lengths, port_no)
                self.emit(self.dp.run(len(lengths)))

    async def pump_overlay(self) -> None:
        views = self.dp.rx.overlay_views
        batch = len(views)
        recv = self.udp.recvfrom_into
        while True:
            await trio.lowlevel.wait_readable(self.udp.fileno())
            lengths, sources = [], []
            while len(lengths) < batch:
                try:
                    got, (src, _port) = recv(views[len(lengths)])
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue   # e.g. ICMP-reported errors surfacing on the socket
                lengths.append(got)
                sources.append(struct.unpack("!I", socket.inet_aton(src))[0])
            if lengths:
                self.dp.load_datagrams(lengths, sources)
                self.emit(self.dp.run(len(lengths)))

    async def probe_pods(self) -> None:
        """ARP from the gateway until every pod answered: that is what `ready` means."""
        while True:
            probes = self.dp.slow.probes()
            if not probes:
                return
            self.emit(probes)
            await trio.sleep(PROBE_INTERVAL)

    async def send_keepalives(self) -> None:
        self.dp.mark_peers_seen_now()   # the fast path compiled and pods attached meanwhile
        while True:
            self.emit(self.dp.keepalives())
            await trio.sleep(KEEPALIVE_INTERVAL)

    # --- control ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return len(self.dp.slow.answered) == len(self.ports)

    def status(self, _request: dict) -> dict:
        return node_status(self)

    def reload(self, _request: dict | None = None) -> dict:
        """Re-read the cluster file (and manifests); on any problem keep running as before."""
        try:
            cluster = load(self.cluster.source, manifests=self.cluster.manifests)
            summary = self.dp.reload(cluster)
        except (ConfigError, ValueError) as exc:
            log.warning("node %s: reload refused, keeping the running state: %s", self.name, exc)
            return {"ok": False, "error": str(exc)}
        self.cluster = cluster
        self.emit(self.dp.announce())
        log.info("node %s: reloaded: %s", self.name, summary)
        return {"ok": True, **summary}

    async def main(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                for port_no in range(len(self.tx)):
                    nursery.start_soon(self.pump_tap, port_no)
                self.emit(self.dp.announce())
                nursery.start_soon(self.pump_overlay)
                nursery.start_soon(self.probe_pods)
                nursery.start_soon(self.send_keepalives)
                nursery.start_soon(control.serve, state.socket_path(self.cluster.name, self.name),
                                   {"status": self.status, "reload": self.reload})
                log.info("node %s up: %d pods, underlay %s:%d, address %s in %s", self.name,
                         len(self.ports), self.node.underlay, self.cluster.overlay.port,
                         self.node.address, self.cluster.outside_netns)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        self.reload()
                        continue
                    log.info("node %s: %s, shutting down", self.name, signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break


def run(cluster: Cluster, node_name: str) -> None:
    """Run one node in the foreground until SIGINT/SIGTERM; everything it created is removed."""
    check_host()
    policy = _Signals()
    previous = {s: signal.signal(s, policy) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)   # reload: not yet
    try:
        with contextlib.ExitStack() as stack:
            node = Node(cluster, node_name)
            try:
                node.setup(stack)
            except Stop:
                log.info("node %s: interrupted during setup, cleaning up", node_name)
                return
            policy.raising = False
            if policy.received is None:
                _run_trio(node)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run_trio(node: Node) -> None:
    """trio.run, under cProfile when VROUTER_PROFILE names a file (benchmarks use it)."""
    profile_path = os.environ.get("VROUTER_PROFILE")
    if not profile_path:
        trio.run(node.main)
        return
    import cProfile
    profiler = cProfile.Profile()
    try:
        profiler.runcall(trio.run, node.main)
    finally:
        profiler.dump_stats(f"{profile_path}.{node.name}")
