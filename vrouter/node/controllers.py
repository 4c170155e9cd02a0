"""The workload controllers, run by one node of the cluster: the first node of the live model
(not a kernel one) that is running leads, as one kube-controller-manager leads in Kubernetes.
It steps every workload (vrouter.model.controllers) when the file is reloaded and whenever a pod
becomes ready or unready, writes the revisions to the store (workloads/...:
vrouter.model.revisions) and tells the other nodes, which make and remove their pods through
the live-pod path (vrouter.node.pods). If the leader stops, the next running node takes over
from the records.

The workloads are the live model's: the file's, and with the etcd datastore those `vrouter
apply` wrote. Availability is readiness as every node publishes it in its registration
(vrouter.io/ready-pods, see vrouter.node.process), held for the workload's minReadySeconds.
"""
from __future__ import annotations

import logging
import time

import trio

from vrouter.model import controllers, revisions
from vrouter.store.base import StoreError

log = logging.getLogger("vrouter.node.controllers")

INTERVAL = 0.5   # seconds between two looks at the workloads while something is to be done


class WorkloadControllers:
    def __init__(self, node):
        self.node = node
        self.seen_ready: dict[str, float] = {}   # ready key -> since when (monotonic)
        self.steps = 0                           # records written, for status
        self.leading = False
        self.last_progress: list[dict] = []      # for status (read in the data-path thread)
        self.last_error: str | None = None

    def leader(self, model) -> bool:
        for n in model.cluster.nodes:
            if n.kernel:
                continue
            if n.name == self.node.name:
                return True
            if n.name in model.running:
                return False
        return False

    def available(self, ready: set[str], min_ready: float) -> set[str]:
        now = time.monotonic()
        for key in ready:
            self.seen_ready.setdefault(key, now)
        for key in list(self.seen_ready):
            if key not in ready:
                del self.seen_ready[key]
        return {k for k in ready if now - self.seen_ready[k] >= min_ready}

    async def tick(self, model) -> bool:
        """One step of every workload of `model` (a vrouter.model.live.Live), if this node
        leads; True if a record changed (it is written to the store, and known to the node's
        Sync at once)."""
        cluster = model.cluster
        recorded = model.revisions
        if not cluster.workloads and not recorded and not self.last_progress:
            return False   # no workloads: nothing to do
        self.leading = self.leader(model)
        self.last_progress = [controllers.progress(w, recorded.get(w.key), model.ready)
                              for w in cluster.workloads]
        if not self.leading:
            return False
        puts, deletes = {}, []
        for w in cluster.workloads:
            current = recorded.get(w.key)
            nxt = controllers.step(w, current, cluster.nodes,
                                   self.available(model.ready, w.min_ready_seconds))
            if nxt != current:
                puts[revisions.key_of(w.key)] = revisions.encode(w.key, nxt)
                log.info("node %s: %s: %s", self.node.name, w.key, ", ".join(
                    f"{r.hash} x{len(r.members)}" for r in nxt))
        keys = {w.key for w in cluster.workloads}
        for key in recorded:
            if key not in keys:   # deleted: its pods go (garbage collection)
                deletes.append(revisions.key_of(key))
        store, sync = self.node.store, self.node.sync
        try:
            for key, value in puts.items():
                await store.put(key, value)
                sync.items[key] = value   # the watch brings it too; serve it now
                self.steps += 1
            for key in deletes:
                await store.delete(key)
                sync.items.pop(key, None)
        except StoreError as exc:   # the next look tries again
            self.last_error = str(exc)
            log.warning("node %s: cannot write the workloads' records: %s", self.node.name, exc)
        return bool(puts or deletes)

    def progress(self) -> list[dict]:
        return self.last_progress

    async def run(self) -> None:
        """Step the workloads until the node stops; a step that changed something is served
        here and told to the other nodes at once."""
        while True:
            model = self.node.sync.model
            if model is not None and not model.cluster.workloads and not model.revisions \
                    and not self.last_progress:
                await self.node.pods_changed.wait()   # no workloads: until the model changes
                continue
            await trio.sleep(INTERVAL)
            model = self.node.sync.model
            if model is not None and await self.tick(model):
                await self.node.refresh({})
                self.node.tell_peers()
