"""One emulated node: a trio process that owns its pods' TAP devices and its overlay sockets.

Setup is synchronous and registered on an ExitStack, so a failure at any step (or Ctrl-C, or
SIGTERM) removes whatever was created. Then the data-path thread (vrouter.node.datapath) moves the
traffic, and trio runs the control side: the control socket, signals, ARP probes of the pods,
overlay keepalives. Whatever the control side does to the data plane runs in the data-path
thread between two batches.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import time

import trio

from vrouter.host import outside, state
from vrouter.ops import control
from vrouter.model.config import Cluster, ConfigError, load
from vrouter.node.dataplane import Dataplane
from vrouter.node.datapath import Datapath, ensure_compiled
from vrouter.ops.status import node_status
from vrouter.host.tap import HostError, PodPort, attach_pod, check_host
from vrouter.host.underlay import open_overlay

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
        self.created_netns: list[str] = []
        self.overlay = None
        self.datapath: Datapath | None = None
        self.started = time.time()
        self.reloads = {"ok": 0, "refused": 0, "last_error": None}

    # --- setup ------------------------------------------------------------------------------

    def setup(self, stack: contextlib.ExitStack) -> None:
        self.overlay = open_overlay(self.cluster, self.node, stack)
        stack.callback(state.remove_traces, self.cluster.name, self.name)
        for pod in self.cluster.pods_of(self.name):
            self.ports.append(attach_pod(self.cluster, pod, stack, self.created_netns))
            state.write_record(self.cluster.name, self.name, self.created_netns)
        state.write_record(self.cluster.name, self.name, self.created_netns)
        self.uplink = outside.attach(self.cluster, self.node, stack)
        self.datapath = Datapath(self.dp, [*self.ports, self.uplink], self.overlay,
                                 self.cluster.overlay.port, self.cluster.busy_poll_us)
        stack.callback(self.datapath.stop)   # before the TAPs and sockets close
        self.datapath.warm_up()
        # everything loaded so far (scapy, numba, pyroute2: ~10^5 objects) lives as long as the
        # node: keep it out of the collector's full passes, which otherwise stall the data path
        # for milliseconds every few seconds
        gc.collect()
        gc.freeze()

    # --- timers -------------------------------------------------------------------------------

    async def probe_pods(self) -> None:
        """ARP from the gateway until every pod answered: that is what `ready` means."""
        while not self.ready:
            self.datapath.call(lambda: self.datapath.write_l2(self.dp.slow.probes()))
            await trio.sleep(PROBE_INTERVAL)

    async def send_keepalives(self) -> None:
        await self.datapath.run(self.dp.mark_peers_seen_now)   # a grace period from now on
        while True:
            self.datapath.call(lambda: self.datapath.route(self.dp.keepalive_frames))
            await trio.sleep(KEEPALIVE_INTERVAL)

    # --- control ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return len(self.dp.slow.answered) == len(self.ports)

    async def status(self, _request: dict) -> dict:
        return await self.datapath.run(lambda: node_status(self))

    async def reload(self, _request: dict | None = None) -> dict:
        """Re-read the cluster file (and manifests); on any problem keep running as before."""
        try:
            cluster = load(self.cluster.source, manifests=self.cluster.manifests)
            summary = await self.datapath.run(lambda: self._swap(cluster))
        except (ConfigError, ValueError) as exc:
            log.warning("node %s: reload refused, keeping the running state: %s", self.name, exc)
            self.reloads["refused"] += 1
            self.reloads["last_error"] = str(exc)
            return {"ok": False, "error": str(exc)}
        self.cluster = cluster
        self.reloads["ok"] += 1
        log.info("node %s: reloaded: %s", self.name, summary)
        return {"ok": True, **summary}

    def _swap(self, cluster: Cluster) -> dict:
        """In the data-path thread: the new Service tables, then gratuitous ARPs for them."""
        summary = self.dp.reload(cluster)
        self.datapath.write_l2(self.dp.announce())
        return summary

    async def main(self) -> None:
        token = trio.lowlevel.current_trio_token()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                self.datapath.on_failure = lambda: token.run_sync_soon(nursery.cancel_scope.cancel)
                self.datapath.start()
                self.datapath.call(lambda: self.datapath.write_l2(self.dp.announce()))
                nursery.start_soon(self.probe_pods)
                nursery.start_soon(self.send_keepalives)
                nursery.start_soon(control.serve, state.socket_path(self.cluster.name, self.name),
                                   {"status": self.status, "reload": self.reload})
                log.info("node %s up: %d pods, underlay %s:%d, address %s in %s", self.name,
                         len(self.ports), self.node.underlay, self.cluster.overlay.port,
                         self.node.address, self.cluster.outside_netns)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(self.reload)
                        continue
                    log.info("node %s: %s, shutting down", self.name, signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        if self.datapath.failure is not None:
            raise HostError(f"node {self.name}: the data path failed: {self.datapath.failure}")


def run(cluster: Cluster, node_name: str) -> None:
    """Run one node in the foreground until SIGINT/SIGTERM; everything it created is removed."""
    check_host()
    ensure_compiled()
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
