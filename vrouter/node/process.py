"""One emulated node: a trio process that owns its pods' TAP devices and its overlay sockets.

Setup is synchronous and registered on an ExitStack, so a failure at any step (or Ctrl-C, or
SIGTERM) removes whatever was created. Then the data-path thread (vrouter.node.datapath) moves the
traffic and beats (overlay keepalives, expired state freed), and trio runs the control side: the
control socket, signals, ARP probes of the pods. Whatever the control side does to the data
plane runs in the data-path thread between two batches.

Faults are contained: a control request that raises is answered with the error (vrouter.node.
control), a background task that raises is logged, counted and started again, a pod whose netns
vanishes is detached. Only the data-path thread failing ends the node: it exits with
EXIT_DATAPATH (3) and, as after a kill -9, leaves its pods' namespaces and its record behind, so
that its restart (by `vrouter up`) reuses them: the pods' processes keep their sockets.
A node that starts where an earlier run of it crashed adopts what that run left (the record's
namespaces; the runtime attachments whose netns still exists).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import time

import trio

from fastpath.io import CAPTURE_RX, CAPTURE_TX
from vrouter.host import outside, programs as host_programs, state
from vrouter.host.tap import HostError, check_host, describe, interface_problem
from vrouter.host.underlay import open_overlay
from vrouter.model import attachments
from vrouter.model.config import Cluster, ConfigError, load
from vrouter.model.workloads import ready_key
from vrouter.node.registration import Registration
from vrouter.node.sync import Sync
from vrouter.store import open_store
from vrouter.store.base import ATTACHMENTS, Store, StoreError, Unreachable, attachment_key
from vrouter.node.capture import MAX_SESSIONS as MAX_CAPTURES, Session
from vrouter.node.controllers import WorkloadControllers
from vrouter.node.compiling import ensure_compiled
from vrouter.node.datapath import Datapath
from vrouter.node.dataplane import Dataplane
from vrouter.node.dnsserver import DnsServer, open_sockets
from vrouter.node import control, snapshot
from vrouter.node.flowfilter import FilterError, from_request
from vrouter.node.flowlog import FlowLog
from vrouter.node.healthcheck import HealthChecks
from vrouter.node.metrics import Metrics
from vrouter.node.pods import LocalPods, PodError
from vrouter.node.programs import Follower, Programs
from vrouter.node.trace import Tracer, TraceError

log = logging.getLogger("vrouter.node")

PROBE_INTERVAL = 0.2
FOLLOW_FLUSH = 0.25      # while someone follows the flow log, drain it at least this often


TASK_RESTART_DELAY = 1.0   # seconds before a background task that raised runs again

EXIT_DATAPATH = 3          # the data path failed: restart me (my namespaces are kept)


class Stop(Exception):
    """SIGTERM during setup: unwind it like Ctrl-C does."""


class DatapathFailed(Exception):
    """The data-path thread failed: the node ends, keeping its namespaces for its restart."""


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


class Wakeup:
    """Wakes every task waiting when it is set; a task that waits later waits for the next
    time. (Check the condition, then wait, with no await between: trio does not switch.)"""

    def __init__(self):
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class Node:
    def __init__(self, cluster: Cluster, node_name: str, underlay: str | None = None,
                 address: str | None = None):
        self.file = cluster               # the cluster file, as loaded (a reload re-reads it)
        self.cluster = cluster            # the live model: the file plus what the store holds
        self.name = node_name
        # the node as the file lists it, or as it registers (`--underlay`): see registration
        self.registration = Registration(cluster, node_name, underlay, address)
        self.node = cluster.node(node_name) if self.registration.listed else None
        self.store: Store | None = None   # opened in main(); setup uses one of its own
        self.sync = Sync(self)
        # idle tasks wait for these instead of polling (32 idle nodes share two cores)
        self.pods_changed = Wakeup()       # the live model changed (pods, readiness to probe)
        self.flows_followed = Wakeup()     # a client started following the flow log
        # absolute: commands and vrouter-cni name the cluster from any directory
        self.source = {"config": os.path.abspath(cluster.source),
                       "manifests": cluster.manifests and os.path.abspath(cluster.manifests)}
        self.pods = LocalPods(self)
        self.dp: Dataplane | None = None
        self.uplink: outside.UplinkPort | None = None
        self.created_netns: list[str] = []
        self.overlay = None
        self.datapath: Datapath | None = None
        self.nursery: trio.Nursery | None = None
        self.started = time.time()
        self.reloads = {"ok": 0, "refused": 0, "last_error": None}
        # attach requests (vrouter attach, vrouter-cni ADD): a refused one changed nothing
        self.attaches = {"ok": 0, "refused": 0, "last_error": None}
        self.refresh_errors = 0          # refreshes that failed in the background and were kept out
        self.tracer: Tracer | None = None   # made at the first trace (its batch is 8 MB)
        self.metrics: Metrics | None = None
        self.snapshots: snapshot.Snapshots | None = None   # what status, metrics, the page read
        self.flow_log = FlowLog(node_name)
        self.dns: DnsServer | None = None
        self.dns_sockets: tuple = ()
        self.health: HealthChecks | None = None
        # the data path failed: keep the namespaces and the record for the restart
        self.preserve = False
        self.adopting = False                 # an earlier run of this node crashed
        self.restored = False                 # runtime pods re-attached after the start
        self.control_stats = control.ServerStats()
        self.task_errors = 0                  # background tasks that raised (and ran again)
        # the pods' programs (vrouter.node.programs), and which local pods are ready
        # (ready_key()s, published in our registration for the other nodes' Services)
        self.programs = Programs(cluster.name, "", lambda: self.nursery)
        self.ready_pods: set[str] = set()
        self.failing_pods: set[str] = set()   # not ready, their programs failing
        self.controllers = WorkloadControllers(self)

    # --- setup ------------------------------------------------------------------------------

    def write_record(self) -> None:
        """Our record: the namespaces we made, and those of an earlier run not reused yet (and,
        for the file store, our registration: vrouter.store.filestore lists it)."""
        earlier = sorted(self.pods.adoptable - set(self.created_netns))
        self.registration.lost_pods = tuple(sorted(self.pods.lost))
        self.registration.ready_pods = tuple(sorted(self.ready_pods))
        self.registration.failing_pods = tuple(sorted(self.failing_pods))
        state.write_record(self.cluster.name, self.name, self.created_netns + earlier,
                           self.source, self.pods.lost,
                           self.registration.document() if self.registration.node else None)

    async def _start_store(self) -> None:
        """At start (a trio run of its own): register, release this node's runtime pods whose
        netns is gone (the others come back in main(), once the data path runs; a clean stop
        keeps them recorded too, `vrouter down` releases them), and read the store."""
        store = open_store(self.file)
        try:
            try:
                self.node = await self.registration.register(store)
                await self.sync_list(store)
                for a in self.attachments():
                    if a.pod.node == self.name and (problem := attachments.netns_problem(a)):
                        log.warning("node %s: pod %s attached at runtime is gone (%s): released",
                                    self.name, a.pod.name, problem)
                        await store.delete(attachment_key(a.pod.name))
                await self.sync_list(store)
            except StoreError as exc:
                raise HostError(f"node {self.name}: the datastore ({store.kind}) cannot be used: "
                                f"{exc}") from None
        finally:
            await store.aclose()

    async def sync_list(self, store: Store) -> None:
        self.store, kept = store, self.store
        try:
            await self.sync.list_now()
        finally:
            self.store = kept if kept is not None else store

    def _unregister(self) -> None:
        """After a failed start or a clean stop: our lease goes (and our key with it), unless
        the node failed and its restart takes the registration over."""
        if self.preserve or not self.registration.lease or self.registration.revoked:
            return

        async def revoke():
            store = open_store(self.file)
            try:
                with trio.move_on_after(5):
                    await self.registration.release(store)
            except StoreError as exc:
                log.warning("node %s: could not give its lease back (%s): it expires in %d s",
                            self.name, exc, self.file.datastore.lease_ttl)
            finally:
                await store.aclose()
        trio.run(revoke)

    def attachments(self) -> list[attachments.Attachment]:
        """The runtime attachments the store holds, as last read."""
        found = []
        for key, value in sorted(self.sync.items.items()):
            if key.startswith(ATTACHMENTS):
                try:
                    found.append(attachments.Attachment.from_json(json.loads(value)))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue   # the model reports it (vrouter.model.live)
        return found

    def _remove_traces(self) -> None:
        if not self.preserve:
            state.remove_traces(self.cluster.name, self.name)

    def _remove_unadopted(self) -> None:
        if not self.preserve:
            self.pods.remove_unadopted()

    def setup(self, stack: contextlib.ExitStack) -> None:
        previous = state.read_record(self.cluster.name, self.name)
        if state.is_running(previous) and previous["pid"] != os.getpid():
            raise HostError(f"node {self.name!r} of cluster {self.cluster.name!r} runs already "
                            f"(pid {previous['pid']}); `vrouter down {self.cluster.name}` "
                            "stops it")
        if previous:   # an earlier run crashed here: its namespaces are for our pods
            self.adopting = True
            self.pods.adoptable = set(previous.get("created_netns") or ())
            log.info("node %s: starting where an earlier run (pid %s) stopped", self.name,
                     previous.get("pid"))
        stack.callback(self._remove_traces)
        trio.run(self._start_store)
        stack.callback(self._unregister)
        self.programs.host_ip = str(self.node.address)
        self.overlay = open_overlay(self.cluster, self.node, stack)
        self.write_record()
        stack.callback(self._remove_unadopted)
        self.cluster = self.sync.build().cluster
        # what an earlier run's programs left (their children: the programs died with it)
        host_programs.reap(self.cluster.name, [p.name for p in self.cluster.pods_of(self.name)])
        self.dp = Dataplane(self.cluster, self.name)
        self.flow_log.ring_size = len(self.dp.tables.conntrack.flows.events)   # a power of two
        stack.callback(self.pods.close_all)
        stack.callback(self.programs.kill_all)   # before the pods' namespaces go
        for port, pod in sorted(self.dp.ports.items()):
            self.pods.attach_at_start(port, pod)
        self.pods.remove_unadopted()
        self.write_record()
        dns_pod = self.cluster.dns_pod(self.name)
        if dns_pod is not None:
            self.dns_sockets = open_sockets(dns_pod, stack)
        self.uplink = outside.attach(self.cluster, self.node, stack)
        self.datapath = Datapath(self.dp, {**self.pods.ports, self.dp.uplink: self.uplink},
                                 self.overlay, self.cluster.overlay.port, self.cluster.busy_poll_us)
        stack.callback(self.datapath.stop)   # before the TAPs and sockets close
        self.datapath.warm_up()
        self.snapshots = snapshot.Snapshots(self.datapath, lambda: snapshot.build(self))
        self.metrics = Metrics(self.snapshots)
        address = self.cluster.metrics_address(self.name)
        if address is not None:
            try:
                self.metrics.serve(address)
            except OSError as exc:
                raise HostError(f"node {self.name}: cannot serve metrics on {address[0]}:"
                                f"{address[1]} (cluster.metricsPort): {exc.strerror}") from None
            stack.callback(self.metrics.close)
        # everything loaded so far (scapy, numba, pyroute2: ~10^5 objects) lives as long as the
        # node: keep it out of the collector's full passes, which otherwise stall the data path
        # for milliseconds every few seconds
        gc.collect()
        gc.freeze()

    # --- timers -------------------------------------------------------------------------------

    async def supervised(self, task, *args) -> None:
        """Run a background task of the node; if it raises, log it, count it and run it again
        after a pause: a bug in one of them must not end the node."""
        while True:
            try:
                await task(*args)
                return
            except Exception:
                self.task_errors += 1
                log.exception("node %s: %s failed (%d task errors); running it again in %g s",
                              self.name, getattr(task, "__name__", task), self.task_errors,
                              TASK_RESTART_DELAY)
            await trio.sleep(TASK_RESTART_DELAY)

    async def supervised_once(self, task, *args) -> None:
        """A one-off task (a reload on SIGHUP, a lost pod): if it raises, log and count it."""
        try:
            await task(*args)
        except Exception:
            self.task_errors += 1
            log.exception("node %s: %s failed", self.name, getattr(task, "__name__", task))

    async def probe_pods(self) -> None:
        """ARP from the gateway to every pod that has not answered yet (readiness); pods come
        and go, so this never ends. A ready node sleeps until its pods change (an idle node
        must not wake for nothing: 32 of them share two cores)."""
        while True:
            if self.ready:
                await self.pods_changed.wait()
                continue
            self.datapath.call(lambda: self.datapath.write_l2(self.dp.slow.probes()))
            await trio.sleep(PROBE_INTERVAL)

    async def start_beat(self) -> None:
        """From now on, once a second in the data path (Datapath.start_beat, fastpath.io):
        keepalives to every peer and expired state swept; trio hears of it only when a peer
        goes silent or comes back."""
        token = trio.lowlevel.current_trio_token()
        silent: set[str] = set()

        def beat() -> None:
            nonlocal silent
            down = self.peers_silent()
            if down != silent:
                silent = down
                try:
                    token.run_sync_soon(self.peers_down, down)
                except trio.RunFinishedError:
                    pass   # stopping

        def start() -> None:
            self.dp.mark_peers_seen_now()   # a grace period from now on
            self.datapath.start_beat(beat)
        await self.datapath.run(start)

    def peers_down(self, down: set[str]) -> None:
        """In trio: a node went silent (or came back): its pods leave every Service (or
        return), as the endpoints controller drops a NotReady node's endpoints."""
        log.info("node %s: peers down: %s", self.name, ", ".join(sorted(down)) or "none")
        self.pods.down_nodes = down
        self.nursery.start_soon(self.supervised_once, self.refresh, {})

    async def flush_flows(self) -> None:
        """While a client follows the flow log (`observe -f`, the page), wake the data path
        every FOLLOW_FLUSH so that it drains the ring (it does whenever it wakes anyway)."""
        while True:
            if not self.flow_log.followers:
                await self.flows_followed.wait()
                continue
            await trio.sleep(FOLLOW_FLUSH)
            if self.flow_log.followers:
                self.datapath.wake()

    def peers_silent(self) -> set[str]:
        """In the data-path thread, when the beat found a peer's liveness changed: the peers
        that are down."""
        up = self.dp.tables.peers.peer_up   # as the beat found them (fastpath.io._liveness_changed)
        return {p.name for k, p in enumerate(self.dp.peers) if up[k] == 0}

    async def restore(self) -> None:
        """After the start: this node's runtime pods (recorded, their netns still there) are
        attached again, then the node is ready."""
        try:
            summary = await self.pods.restore()
            if summary.get("attached"):
                log.info("node %s: re-attached runtime pods %s", self.name,
                         ", ".join(summary["attached"]))
                self.tell_peers()
        except Exception:   # the node serves its file pods all the same
            self.task_errors += 1
            log.exception("node %s: re-attaching its runtime pods failed", self.name)
        finally:
            self.restored = True
            self.pods_changed.set()

    async def pod_lost(self, port: int) -> None:
        """The pod's TAP failed: its netns is gone (a runtime removed the container without a
        CNI DEL, or `ip netns del`). Detach it the normal way: its port is freed, every node's
        Service endpoints drop it, a runtime attachment's record is released; a pod of the
        cluster file stays out until a reload or a restart of the node."""
        pod = self.dp.ports.get(port)
        if pod is None:
            return
        log.warning("node %s: pod %s lost its interface (network namespace %s gone?): "
                    "detaching it", self.name, pod.name, pod.netns)
        if self.pods.record_of(pod.name) is not None:
            await self.store.delete(attachment_key(pod.name))
        else:
            self.pods.lost.add(pod.name)
            await self.lost_changed()
        await self.refresh({})
        self.tell_peers()

    async def lost_changed(self) -> None:
        """The file pods this node lost changed: in its record and its registration (the
        other nodes leave them out of their models)."""
        self.write_record()
        try:
            await self.registration.update(self.store)
        except StoreError as exc:   # the keepalive writes it again when the store is back
            log.warning("node %s: cannot tell the store about lost pods: %s", self.name, exc)

    # --- control ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.restored and set(self.dp.ports) <= self.dp.slow.answered

    def local_ready(self) -> tuple[set[str], set[str]]:
        """The ready_key()s of this node's pods that are ready (attached, answering their
        gateway, their programs running and their probes passing, not leaving), and of those
        whose programs fail."""
        ready, failing = set(), set()
        for port, pod in self.dp.ports.items():
            if port in self.pods.terminating:
                continue
            key = ready_key(pod.name, pod.revision)
            if port in self.dp.slow.answered and self.programs.ready(pod.name):
                ready.add(key)
            elif self.programs.failing(pod.name):
                failing.add(key)
        return ready, failing

    @property
    def pods_ready(self) -> bool:
        """This node's live model has every pod that readiness decides about ready, or known
        to be failing (`vrouter up` waits for this on every node: then a Service answers
        from anywhere)."""
        failing = self.sync.model.failing if self.sync.model is not None else set()
        return all(p.ready or ready_key(p.name, p.revision) in failing
                   for p in self.cluster.pods if p.gated and not p.awaiting_cni)

    async def publish_readiness(self) -> None:
        """Our pods' readiness, in our registration for the other nodes: a change is served
        here and told to them at once (a pod that turned ready becomes an endpoint
        everywhere)."""
        while True:
            if not any(pod.gated for pod in self.dp.ports.values()):
                await self.pods_changed.wait()   # no pod here whose readiness decides anything
                continue
            await trio.sleep(PROBE_INTERVAL)
            ready, failing = self.local_ready()
            if (ready, failing) == (self.ready_pods, self.failing_pods):
                continue
            self.ready_pods, self.failing_pods = ready, failing
            self.write_record()
            try:
                await self.registration.update(self.store)
            except StoreError as exc:   # the keepalive writes it again when the store is back
                log.warning("node %s: cannot publish its pods' readiness: %s", self.name, exc)
            await self.refresh({})
            if self.sync.model is not None and await self.controllers.tick(self.sync.model):
                await self.refresh({})   # a rollout goes on
            self.tell_peers()

    def start_programs(self) -> None:
        for pod in self.dp.ports.values():
            self.programs.start(pod)

    def faults(self) -> dict:
        """What went wrong and was contained (status, metrics)."""
        stats = self.control_stats
        return {**self.datapath.faults.counts, "task_errors": self.task_errors,
                "control_refused": stats.refused, "control_timeouts": stats.timeouts,
                "control_malformed": stats.malformed, "control_errors": stats.errors}

    async def status(self, request: dict) -> dict:
        """The node's snapshot: a new one, or (max_age) one at most that old (the page)."""
        max_age = request.get("max_age", 0)
        if not isinstance(max_age, (int, float)) or not 0 <= max_age <= 10:
            return {"ok": False, "error": f"max_age {max_age!r}: seconds, 0-10"}
        return await self.snapshots.get(max_age)

    async def flows(self, request: dict):
        """The flow log (vrouter.node.flowlog): the newest `last` flows matching `filter`, or
        (follow) a stream of JSON lines, those first and then each new one as it comes, with
        {"lost": ...} lines when this client or the ring lost some."""
        last = request.get("last")
        if last is not None and (not isinstance(last, int) or isinstance(last, bool)
                                 or last < 0):
            return {"ok": False, "error": f"last {last!r}: a number of flows, 0 or more"}
        try:
            flow_filter = from_request(request.get("filter"))
        except FilterError as exc:
            return {"ok": False, "error": str(exc)}
        log = self.flow_log
        header = {"ok": True, "node": self.name, "lost_ring_full": log.ring_lost}
        if not request.get("follow"):
            return {**header, "flows": log.query(flow_filter, last)}
        follower = log.follow(flow_filter)
        self.flows_followed.set()
        past = log.query(flow_filter, last) if last else []

        async def lines():
            told_dropped, told_ring = 0, follower.ring_lost
            try:
                for flow in past:
                    yield json.dumps({"flow": flow}).encode() + b"\n"
                async for flow in follower.receive:
                    if follower.dropped > told_dropped:
                        yield json.dumps({"lost": {"flows": follower.dropped - told_dropped,
                                                   "why": "this client read too slowly"}
                                          }).encode() + b"\n"
                        told_dropped = follower.dropped
                    if log.ring_lost > told_ring:
                        yield json.dumps({"lost": {"flows": log.ring_lost - told_ring,
                                                   "why": f"{self.name}'s flow ring was full"}
                                          }).encode() + b"\n"
                        told_ring = log.ring_lost
                    yield json.dumps({"flow": flow}).encode() + b"\n"
            finally:
                log.unfollow(follower)
        return control.Stream(header, lines())

    def _flows_drained(self, token, batch) -> None:
        """In the data-path thread: name and keep them in trio, never here."""
        try:
            token.run_sync_soon(self.flow_log.add, batch)
        except RuntimeError:
            pass   # trio is gone: the node is stopping

    async def reload(self, _request: dict | None = None) -> dict:
        """Re-read the cluster file (and manifests) and serve it; a bad file, or a change that
        needs a restart, keeps everything as it was."""
        try:
            file = load(self.file.source, manifests=self.file.manifests)
            if file.datastore != self.file.datastore:
                raise ValueError("cluster.datastore needs a restart")
            # the leader steps the workloads first: scaling takes effect in this reload
            stepped = await self.controllers.tick(self.sync.build(file))
            summary = await self._apply_trying_lost(file)
            if stepped:
                self.tell_peers()
        except Exception as exc:   # ConfigError, ValueError; anything else is logged in full
            if not isinstance(exc, (ConfigError, ValueError)):
                log.exception("node %s: reload failed", self.name)
                exc = f"{type(exc).__name__}: {exc}"
            log.warning("node %s: reload refused, keeping the running state: %s", self.name, exc)
            self.reloads["refused"] += 1
            self.reloads["last_error"] = str(exc)
            return {"ok": False, "error": str(exc)}
        self.file = file
        self.reloads["ok"] += 1
        log.info("node %s: reloaded: %s", self.name, summary)
        return {"ok": True, **summary}

    async def _apply_trying_lost(self, file: Cluster) -> dict:
        """Apply a re-read file with the lost pods of the file back in it (their namespaces
        made anew); a refused one keeps them lost."""
        lost, self.pods.lost = self.pods.lost, set()
        if lost:
            await self.lost_changed()
        try:
            return await self.pods.apply(lambda: self._model_of(file), file=file)
        except ValueError:
            if lost:
                self.pods.lost |= lost
                await self.lost_changed()
            raise

    def _model_of(self, file: Cluster) -> Cluster:
        self.sync.model = self.sync.build(file)
        return self.sync.model.cluster

    async def refresh(self, _request: dict) -> dict:
        """Pods were attached or detached somewhere in the cluster (or here): read the store
        and serve the new model."""
        self.store.poke()
        try:
            return {"ok": True, **await self.sync.resync()}
        except (ValueError, StoreError) as exc:
            if isinstance(exc, Unreachable):
                self.sync.unreachable(exc)
            return {"ok": False, "error": str(exc)}
        except Exception as exc:   # a bug, not a request's fault: the node keeps serving
            self.refresh_errors += 1
            log.exception("node %s: refresh failed", self.name)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    async def model_changed(self) -> None:
        """The live model changed (reload, attach, detach): what follows it outside the data
        path (the health-check listeners, the readiness probes) catches up."""
        self.pods_changed.set()
        if self.health is not None:
            await self.health.update()

    def swap(self, cluster: Cluster) -> dict:
        """In the data-path thread: the new Service tables, then gratuitous ARPs for them."""
        summary = self.dp.reload(cluster)
        if summary["peers_changed"]:   # a node registered, or its lease expired
            self.datapath.set_peers(cluster.overlay.port)
            self.tracer = None
            log.info("node %s: overlay peers now: %s", self.name,
                     ", ".join(f"{p.name} ({p.underlay}, {p.pod_cidr})" for p in self.dp.peers)
                     or "none")
        self.datapath.write_l2(self.dp.announce())
        for hidden in summary["shadowed_host_ports"]:
            log.warning("node %s: host port %s is hidden by a Service frontend", self.name,
                        hidden)
        return summary

    def tell_peers(self) -> None:
        """Ask the other nodes to refresh (in the background: a stopped node must not hold
        up an attach). Nodes of an etcd store watch it instead."""
        if self.store.kind != "file":
            return

        def tell():
            for node in self.cluster.nodes:
                if node.name != self.name:
                    try:
                        control.request(state.socket_path(self.cluster.name, node.name),
                                        "refresh", timeout=5)
                    except (OSError, ValueError):
                        pass   # not running: it reads the records when it starts
        if self.nursery is not None:
            self.nursery.start_soon(trio.to_thread.run_sync, tell)

    # --- attach, detach, check, gc: `vrouter attach`, vrouter-cni ----------------------------------

    async def attach(self, request: dict) -> dict:
        """Attach a pod (a runtime's netns) here: claim its name cluster-wide, give it its
        interface, tell the other nodes. The answer describes the interface as CNI reports it.
        A refused attach (a bad request, or the host side failing) changes nothing: no record,
        no port, nothing in the namespace; the answer says why (kind, field)."""
        try:
            port = await self._attach_request(request)
        except PodError as exc:
            self.attaches["refused"] += 1
            self.attaches["last_error"] = str(exc)
            log.warning("node %s: attach refused: %s", self.name, exc)
            return {"ok": False, "kind": exc.kind, "field": exc.field, "error": str(exc)}
        self.attaches["ok"] += 1
        self.tell_peers()
        return {"ok": True, **self.interface(port)}

    async def _attach_request(self, request: dict) -> int:
        async with self.pods.lock:
            attachment = self.pods.new_attachment(request)
            name = attachment.pod.name
            try:
                holder = await self.store.create(attachment_key(name),
                                                 json.dumps(attachment.to_json()).encode())
            except (StoreError, OSError) as exc:
                raise PodError("host", f"cannot record pod {name!r}: {exc}") from None
            if holder is not None:
                raise PodError("taken", f"pod name {name!r} is taken (attached already)",
                               "name")
        try:
            summary = await self.refresh({})
            port = self.dp.port_of(name)
            if port is None:
                failure = next((f for f in summary.get("failed", []) if f["pod"] == name),
                               {"kind": "host", "field": None,
                                "error": summary.get("error", "unknown")})
                raise PodError(failure["kind"], f"cannot attach pod {name!r}: "
                                                f"{failure['error']}", failure["field"])
        except BaseException:
            # undo: the record goes, and a peer that saw it in the meantime hears so
            with trio.CancelScope(shield=True):
                await self._release(name)
            with trio.CancelScope(shield=True):
                await self.refresh({})
            self.tell_peers()
            raise
        return port

    def interface(self, port: int) -> dict:
        pod, tap = self.dp.ports[port], self.pods.ports[port]
        return {"pod": pod.name, "namespace": pod.namespace, "port": port, "ifname": pod.ifname,
                "ifindex": tap.ifindex, "mac": pod.mac, "netns": pod.netns_path,
                "ip": f"{pod.ip}/{self.node.pod_cidr.prefixlen}", "gateway": str(self.node.gateway),
                # the CNI result's dns: what the runtime writes into the container's resolv.conf
                "dns": self.cluster.dns.settings(pod.namespace) if self.cluster.dns.enabled
                else {}}

    async def detach(self, request: dict) -> dict:
        """Take a runtime pod's interface away. Detaching what is not attached succeeds."""
        record = self.pods.record_of(request.get("name"), request.get("container_id"),
                                     request.get("ifname"))
        if record is None:
            return {"ok": True, "detached": False}
        try:
            await self.store.delete(attachment_key(record.pod.name))
        except StoreError as exc:
            return {"ok": False, "kind": "host", "error": f"cannot release pod "
                                                          f"{record.pod.name!r}: {exc}"}
        await self.refresh({})
        self.tell_peers()
        return {"ok": True, "detached": True, "pod": record.pod.name}

    async def _release(self, name: str) -> None:
        try:
            await self.store.delete(attachment_key(name))
        except StoreError as exc:
            log.error("node %s: cannot release pod %s's record: %s", self.name, name, exc)

    async def check(self, request: dict) -> dict:
        """Is the attachment there and as it was made? (CNI CHECK)"""
        record = self.pods.record_of(request.get("name"), request.get("container_id"),
                                     request.get("ifname"))
        if record is None:
            return {"ok": False, "kind": "unknown", "error": "no such attachment on this node"}
        port = self.dp.port_of(record.pod.name)
        if port is None:
            return {"ok": False, "kind": "changed", "error": f"pod {record.pod.name!r} has no "
                                                             "port"}
        try:
            problem = await trio.to_thread.run_sync(interface_problem, self.dp.ports[port],
                                                    self.node.pod_cidr.prefixlen)
        except Exception as exc:   # the namespace went while we looked, say
            problem = f"cannot inspect {record.pod.ifname} in {record.pod.netns}: {describe(exc)}"
        if problem:
            return {"ok": False, "kind": "changed", "error": problem}
        return {"ok": True, **self.interface(port)}

    async def capture(self, request: dict):
        """Stream pcapng of a pod's port, the outside port, the overlay, or all of them, as
        received or as sent (request: where = pod | outside | overlay | all, pod, direction =
        received | sent | both)."""
        bits = {"received": CAPTURE_RX, "sent": CAPTURE_TX, "both": CAPTURE_RX | CAPTURE_TX}
        direction = request.get("direction", "received")
        if direction not in bits:
            return {"ok": False, "error": f"direction {direction!r}: received, sent or both"}
        where = request.get("where", "all")
        names = {}
        if where in ("pod", "all"):
            for port, pod in self.dp.ports.items():
                if where == "all" or pod.name == request.get("pod"):
                    names[port] = pod.name
            if where == "pod" and not names:
                return {"ok": False, "error": f"no pod {request.get('pod')!r} on {self.name}"}
        if where in ("outside", "all"):
            names[self.dp.uplink] = "outside"
        if where in ("overlay", "all"):
            names[self.datapath.overlay_port] = "overlay"
        if not names:
            return {"ok": False, "error": f"where {where!r}: pod, outside, overlay or all"}
        session = Session({port: bits[direction] for port in names}, names,
                          trio.lowlevel.current_trio_token())
        key = await self.datapath.run(lambda: self.datapath.captures.add(session))
        if key is None:
            return {"ok": False, "error": f"{self.name} runs {MAX_CAPTURES} captures already; "
                                          "stop one first"}

        captures = self.datapath.captures

        async def chunks():
            try:
                async for chunk in session.pcapng():
                    yield chunk
            finally:
                self.datapath.call(lambda: captures.remove(key))

        async def finish():   # what is in the ring now still goes out, then the stream ends
            await self.datapath.run(lambda: (captures.drain(), captures.remove(key)))
            await session.send.aclose()
        return control.Stream({"ok": True, "node": self.name, "interfaces": sorted(names.values()),
                               "direction": direction}, chunks(), finish)

    async def logs(self, request: dict):
        """A pod's program output (`vrouter logs`): its last lines, or (follow) those and then
        what it writes, until it ends or the client goes."""
        try:
            run = self.programs.run_of(str(request.get("pod")), request.get("container"))
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0]}
        tail = request.get("tail")
        if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
            return {"ok": False, "error": f"tail {tail!r}: a number of lines, 0 or more"}
        ring = run.previous if request.get("previous") else run.logs
        if ring is None:
            return {"ok": False, "error": f"container {run.spec.name!r} of pod "
                                          f"{run.pod.name!r} has not been restarted: it has "
                                          "no previous run"}
        header = {"ok": True, "pod": run.pod.name, "container": run.spec.name,
                  "dropped": ring.dropped}
        if not request.get("follow") or request.get("previous"):
            return {**header, "lines": ring.tail(tail)}
        follower = Follower()
        backlog = ring.tail(tail)
        ring.followers.add(follower)

        async def chunks():
            try:
                if backlog:
                    yield ("\n".join(backlog) + "\n").encode()
                async for line in follower.receive:
                    yield (line + "\n").encode()
                if follower.dropped:
                    yield (f"vrouter: {follower.dropped} lines were lost: this client read "
                           "too slowly\n").encode()
            finally:
                ring.followers.discard(follower)
        return control.Stream(header, chunks())

    async def metrics_text(self, _request: dict) -> dict:
        """The Prometheus exposition, as the HTTP endpoint would serve it (`vrouter metrics`)."""
        text = await trio.to_thread.run_sync(self.metrics.text)
        return {"ok": True, "text": text.decode()}

    async def trace(self, request: dict) -> dict:
        """Where a packet would go from here, stage by stage (vrouter.node.trace)."""
        def run():
            if self.tracer is None:
                self.tracer = Tracer(self.dp, [p.name for p in self.dp.peers],
                                     self.datapath.overlay.source_ports)
            return self.tracer.answer(request)
        try:
            return {"ok": True, **await self.datapath.run(run)}
        except TraceError as exc:
            return {"ok": False, "error": str(exc)}

    async def gc(self, request: dict) -> dict:
        """Forget this node's attachments of `network` that are not among `valid`
        ([{"container_id", "ifname"}]): what a runtime removed without a DEL."""
        valid = {(v.get("container_id"), v.get("ifname")) for v in request.get("valid", [])}
        gone = [a for a in self.attachments()
                if a.pod.node == self.name and a.network == request.get("network")
                and (a.container_id, a.pod.ifname) not in valid]
        for a in gone:
            await self._release(a.pod.name)
        if gone:
            await self.refresh({})
            self.tell_peers()
        return {"ok": True, "removed": [a.pod.name for a in gone]}

    def _start_pod_lost(self, nursery: trio.Nursery, port: int) -> None:
        """In trio (run_sync_soon from the data-path thread): detach the pod, unless the node
        is shutting down anyway."""
        try:
            nursery.start_soon(self.supervised_once, self.pod_lost, port)
        except RuntimeError:
            pass   # the nursery is closed: everything is being detached

    async def main(self) -> None:
        self.store = open_store(self.file)
        try:
            await self._main()
        finally:
            with trio.CancelScope(shield=True):
                if not self.preserve and self.registration.lease:
                    with trio.move_on_after(3):
                        try:
                            await self.registration.release(self.store)
                        except StoreError as exc:
                            log.warning("node %s: could not give its lease back (%s)",
                                        self.name, exc)
                await self.store.aclose()

    async def _main(self) -> None:
        token = trio.lowlevel.current_trio_token()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                self.datapath.on_failure = lambda: token.run_sync_soon(nursery.cancel_scope.cancel)
                self.datapath.on_port_gone = lambda port: token.run_sync_soon(
                    self._start_pod_lost, nursery, port)
                self.datapath.on_flows = lambda batch: self._flows_drained(token, batch)
                self.datapath.start()
                self.datapath.call(lambda: self.datapath.write_l2(self.dp.announce()))
                nursery.start_soon(self.supervised, self.probe_pods)
                nursery.start_soon(self.supervised, self.flush_flows)
                self.nursery = nursery
                await self.start_beat()
                # before the control socket: an attach must not take a restored pod's address
                await self.restore()
                self.start_programs()
                nursery.start_soon(self.supervised, self.publish_readiness)
                nursery.start_soon(self.supervised, self.controllers.run)
                nursery.start_soon(self.supervised, self.sync.run)
                nursery.start_soon(self.supervised, self.registration.keep, self.store,
                                   self.sync)
                if self.dns_sockets:   # this node has a DNS server pod
                    self.dns = DnsServer(lambda: self.cluster, *self.dns_sockets)
                    nursery.start_soon(self.supervised, self.dns.serve)
                    # kube-proxy's health checks live there too (healthCheckNodePort)
                    self.health = HealthChecks(self.name, self.cluster.dns_pod(self.name),
                                               lambda: self.cluster)
                    nursery.start_soon(self.supervised, self.health.serve)
                nursery.start_soon(control.serve, state.socket_path(self.cluster.name, self.name),
                                   {"status": self.status, "reload": self.reload,
                                    "refresh": self.refresh, "attach": self.attach,
                                    "detach": self.detach, "check": self.check, "gc": self.gc,
                                    "capture": self.capture, "trace": self.trace,
                                    "metrics": self.metrics_text, "flows": self.flows,
                                    "logs": self.logs},
                                   self.control_stats)
                log.info("node %s up: %d pods, underlay %s:%d, address %s in %s", self.name,
                         len(self.dp.ports), self.node.underlay, self.cluster.overlay.port,
                         self.node.address, self.cluster.outside_netns)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(self.supervised_once, self.reload, {})
                        continue
                    log.info("node %s: %s, shutting down", self.name, signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        if self.datapath.failure is not None:
            raise DatapathFailed(f"node {self.name}: the data path failed: "
                                 f"{self.datapath.failure!r}")


def run(cluster: Cluster, node_name: str, underlay: str | None = None,
        address: str | None = None) -> None:
    """Run one node in the foreground until SIGINT/SIGTERM; everything it created is removed.
    A node the file does not list registers itself (`underlay`, `address`)."""
    check_host()
    ensure_compiled(cluster)
    policy = _Signals()
    previous = {s: signal.signal(s, policy) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)   # reload: not yet
    try:
        with contextlib.ExitStack() as stack:
            node = Node(cluster, node_name, underlay, address)
            try:
                node.setup(stack)
            except Stop:
                log.info("node %s: interrupted during setup, cleaning up", node_name)
                return
            except Exception:
                # a failed start after a crash leaves what the crash left (and what it made,
                # recorded) to the next start or `vrouter down`; a first start removes it all
                node.preserve = node.adopting
                raise
            policy.raising = False
            if policy.received is None:
                try:
                    _run_trio(node)
                except DatapathFailed:
                    # keep the pods' namespaces and the record: the restart reuses them
                    node.preserve = True
                    raise
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
