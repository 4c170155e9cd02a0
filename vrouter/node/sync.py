"""A node's view of the store: list, then watch from the next revision, as Calico's and
flannel's watchers do.

The node keeps the store's keys as it last knew them. Every change (a watch event, or a list
after a compaction or a lost stream, or a `refresh`) rebuilds the live model
(vrouter.model.live) and hands it to the same path a reload and an attach take
(vrouter.node.pods.LocalPods.apply), which changes only what differs. A store error never
clears forwarding state: the node keeps serving the last model and reconnects with backoff
(100 ms to 5 s), then lists again and applies the difference. A watch event older than what a
list already showed is ignored, so a resynchronisation never goes back in time.

Pods applied to the store for this node that have no address yet get one here (the lowest free
of the node's podCIDR, vrouter.model.addressing), written back as status.podIP by a transaction
on the Pod's revision, as a kubelet reports a pod's IP.
"""
from __future__ import annotations

import json
import logging
import time

import trio

from vrouter.model import addressing, live
from vrouter.store.base import NODES, Compacted, StoreError, Unreachable

log = logging.getLogger("vrouter.node.sync")

BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


class Sync:
    def __init__(self, node):
        self.node = node                     # vrouter.node.process.Node
        self.items: dict[str, bytes] = {}    # key -> value, as last known
        self.seen: dict[str, int] = {}       # key -> the revision its state is known at
        self.floor = 0                       # the revision of the last list
        self.revision = 0
        self.model: live.Live | None = None
        self.reachable = True
        self.unreachable_since: float | None = None
        self.last_error: str | None = None
        self.resyncs = 0                     # lists after the first
        self.compactions = 0                 # watches that found their start compacted
        self.lost_streams = 0                # watches that broke off
        self.events = 0                      # changes seen by watching
        self.applied = 0                     # models handed to the node
        self.apply_errors = 0                # models the node refused (it kept the old one)
        self.skipped: dict[str, str] = {}    # key -> why the model leaves it out (now)
        self.skipped_total = 0               # corrupt or refused keys met, counted once each
        self._reported: set[tuple[str, bytes]] = set()
        self.held: list = []
        self.rewatches = 0                   # watches given up after the store came back
        self._watching: trio.CancelScope | None = None
        self._watch_suspect = False

    # --- the store answers, or does not --------------------------------------------------------

    def reached(self) -> None:
        if not self.reachable:
            log.info("node %s: the store answers again (unreachable for %.1f s)",
                     self.node.name, time.time() - (self.unreachable_since or time.time()))
            if self._watching is not None and self._watch_suspect:
                # the store did not answer while this watch ran: its connection may be dead
                # without a word (a partition drops etcd's FIN or reset), and a quiet watch
                # looks just like one. Watch afresh, listing the difference first.
                self._watching.cancel()
        self.reachable = True
        self.unreachable_since = None

    def unreachable(self, exc: Exception) -> None:
        if self._watching is not None:
            self._watch_suspect = True
        if self.reachable:
            log.warning("node %s: the store is unreachable (%s); forwarding goes on with the "
                        "last state", self.node.name, exc)
            self.unreachable_since = time.time()
        self.reachable = False
        self.last_error = str(exc)

    # --- the model ------------------------------------------------------------------------------

    def build(self, file=None) -> live.Live:
        """The live model of the known keys (with `file`, a cluster file just re-read)."""
        items = dict(self.items)
        registration = self.node.registration
        if registration.node is not None:
            # our own view of ourselves, also while our key is gone (a lease lost in an outage)
            items[NODES + self.node.name] = registration.value()
        model = live.build(file or self.node.file, items, self.node.name,
                           self.node.pods.restoring, down=frozenset(self.node.pods.down_nodes))
        self._report(model)
        return model

    def _report(self, model: live.Live) -> None:
        self.skipped = model.problems
        for key, problem in model.problems.items():
            mark = (key, self.items.get(key, b""))
            if mark not in self._reported:
                self._reported.add(mark)
                self.skipped_total += 1
                log.error("node %s: store key %s skipped: %s", self.node.name, key, problem)
        if len(self._reported) > 4096:   # bounded: forget marks of keys that changed since
            self._reported = {(k, self.items.get(k, b"")) for k in model.problems}
        held = sorted(model.held)
        if held != self.held:
            for key, node in held:
                log.info("node %s: %s waits for node %s to register", self.node.name, key, node)
        self.held = held

    async def list_now(self) -> int:
        """Read every key again; how many differ from what was known."""
        snapshot = await self.node.store.list("")
        self.reached()
        new = snapshot.values()
        changed = sum(1 for k in set(new) | set(self.items) if new.get(k) != self.items.get(k))
        self.items = new
        self.floor = snapshot.revision
        self.seen = {k: item.revision for k, item in snapshot.items.items()}
        self.revision = snapshot.revision
        return changed

    def update(self, changes) -> int:
        """Watch events into the known keys; how many were news."""
        news = 0
        for change in changes:
            if change.revision <= max(self.seen.get(change.key, 0), self.floor) \
                    and self.node.store.kind != "file":
                continue   # a list showed this key later already
            self.seen[change.key] = change.revision
            self.revision = max(self.revision, change.revision)
            if change.value is None:
                news += self.items.pop(change.key, None) is not None
            elif self.items.get(change.key) != change.value:
                self.items[change.key] = change.value
                news += 1
        if self.node.store.kind == "file" and changes:
            self.revision = max(self.revision, max(c.revision for c in changes))
        return news

    async def apply(self) -> dict:
        """The model of the known keys, served (only what differs changes). It is made again
        once the node's change before is done (a reload's new file, readiness)."""
        def make():
            self.model = self.build()
            return self.model.cluster
        summary = await self.node.pods.apply(make, skip_unchanged=True)
        if await self._allocate(self.model):   # with the addresses just given
            summary = await self.node.pods.apply(make, skip_unchanged=True)
        if not summary.get("unchanged"):
            self.applied += 1
        return summary

    async def apply_safely(self) -> None:
        """apply(), for the watch: a refused model (ValueError) or a bug keeps the running one."""
        try:
            await self.apply()
        except ValueError as exc:
            self.apply_errors += 1
            log.error("node %s: the store's state cannot be served, keeping the running one: "
                      "%s", self.node.name, exc)
        except StoreError as exc:
            self.apply_errors += 1
            log.warning("node %s: %s", self.node.name, exc)
        except Exception:
            self.apply_errors += 1
            log.exception("node %s: applying the store's state failed; serving the last one",
                          self.node.name)

    async def resync(self) -> dict:
        """List and apply now (after an attach or detach here, or when a peer says so)."""
        await self.list_now()
        return await self.apply()

    # --- watching ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """The watch loop (never ends; the node supervises it)."""
        store = self.node.store
        backoff = BACKOFF_FIRST
        need_list = False   # setup listed
        while True:
            try:
                if need_list:
                    changed = await self.list_now()
                    self.resyncs += 1
                    log.info("node %s: resynchronised with the store at revision %d: %d keys "
                             "changed", self.node.name, self.revision, changed)
                    await self.apply_safely()
                    need_list = False
                with trio.CancelScope() as scope:
                    self._watching, self._watch_suspect = scope, False
                    async with store.watch("", self.revision + 1) as changes:
                        self.reached()
                        backoff = BACKOFF_FIRST
                        async for batch in changes:
                            self.events += len(batch)
                            if self.update(batch):
                                with trio.CancelScope(shield=True):   # never half-applied
                                    await self.apply_safely()
                self._watching = None
                if scope.cancelled_caught:
                    self.rewatches += 1
                    log.info("node %s: watching afresh after the store came back",
                             self.node.name)
                need_list = True
            except Compacted as exc:
                self._watching = None
                self.compactions += 1
                log.warning("node %s: %s; listing again", self.node.name, exc)
                need_list = True
            except Unreachable as exc:
                self._watching = None
                self.lost_streams += 1
                self.unreachable(exc)
                need_list = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except StoreError as exc:
                self._watching = None
                self.last_error = str(exc)
                log.error("node %s: watching the store: %s", self.node.name, exc)
                need_list = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    # --- pods applied for this node get their address -------------------------------------------

    async def _allocate(self, model: live.Live) -> bool:
        """True if a pod got its address (the model is to be built again)."""
        node = self.node
        mine = [(key, doc) for key, doc in model.pending
                if (doc.get("spec") or {}).get("nodeName") == node.name]
        given = False
        if not mine:
            return given
        cidr = node.node.pod_cidr
        taken = {p.ip for p in model.cluster.pods} | {addressing.gateway(cidr)}
        for key, doc in mine:
            ip = addressing.lowest_free(cidr, taken)
            if ip is None:
                log.error("node %s: no free address in %s for %s", node.name, cidr, key)
                continue
            taken.add(ip)
            status = {**(doc.get("status") or {}), "phase": "Running", "podIP": str(ip),
                      "podIPs": [{"ip": str(ip)}], "hostIP": str(node.node.underlay)}
            value = json.dumps({**doc, "status": status}, sort_keys=True).encode()
            try:
                ok = await node.store.commit({key: value}, expect={key: self.seen.get(key, 0)})
            except Unreachable as exc:
                self.unreachable(exc)
                return given
            if ok:
                log.info("node %s: %s gets address %s", node.name, key, ip)
                self.items[key] = value   # the watch brings it too; serve it now
                given = True
        return given

    def status(self) -> dict:
        return {**self.node.store.describe(), "reachable": self.reachable,
                "unreachable_since": self.unreachable_since, "last_error": self.last_error,
                "revision": self.revision, "keys": len(self.items), "events": self.events,
                "resyncs": self.resyncs, "compactions": self.compactions,
                "lost_streams": self.lost_streams, "rewatches": self.rewatches,
                "applied": self.applied,
                "apply_errors": self.apply_errors, "skipped_keys": sorted(self.skipped),
                "skipped_total": self.skipped_total,
                "held": [f"{key} (node {n})" for key, n in self.held],
                "lease": self.node.registration.lease,
                "lease_lost": self.node.registration.lease_lost,
                "requests": self.node.store.requests}

