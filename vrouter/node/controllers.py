"""The workload controllers, run by one node of the cluster: the first node of the file (not a
kernel one) that is running leads, as one kube-controller-manager leads in Kubernetes. It
steps every workload (vrouter.model.controllers) when the file is reloaded and whenever a pod
becomes ready or unready, writes the revisions (vrouter.model.revisions) and tells the other
nodes, which make and remove their pods through the live-pod path (vrouter.node.pods). If the
leader stops, the next node in file order takes over from the records.

Availability is readiness as every node publishes it in its record (`ready_pods`, see
vrouter.node.process), held for the workload's minReadySeconds.
"""
from __future__ import annotations

import logging
import time

import trio

from vrouter.host import state
from vrouter.model import controllers, revisions
from vrouter.model.config import Cluster

log = logging.getLogger("vrouter.node.controllers")

INTERVAL = 0.5   # seconds between two looks at the workloads while something is to be done


class WorkloadControllers:
    def __init__(self, node):
        self.node = node
        self.seen_ready: dict[str, float] = {}   # ready key -> since when (monotonic)
        self.steps = 0                           # records written, for status
        self.leading = False
        self.last_progress: list[dict] = []      # for status (read in the data-path thread)

    def leader(self, file: Cluster) -> bool:
        for n in file.nodes:
            if n.kernel:
                continue
            if n.name == self.node.name:
                return True
            if state.is_running(state.read_record(file.name, n.name)):
                return False
        return False

    def ready_keys(self, file: Cluster) -> set[str]:
        """Ready pods of the whole cluster: the other running nodes' records, and ours."""
        found = set(self.node.ready_pods)
        for n in file.nodes:
            if n.name == self.node.name:
                continue
            record = state.read_record(file.name, n.name)
            if state.is_running(record):
                found.update(record.get("ready_pods") or ())
        return found

    def available(self, file: Cluster, min_ready: float) -> set[str]:
        now = time.monotonic()
        ready = self.ready_keys(file)
        for key in ready:
            self.seen_ready.setdefault(key, now)
        for key in list(self.seen_ready):
            if key not in ready:
                del self.seen_ready[key]
        return {k for k in ready if now - self.seen_ready[k] >= min_ready}

    def tick(self, file: Cluster) -> bool:
        """One step of every workload, if this node leads; True if a record changed."""
        if not file.workloads and not self.last_progress and not self.leading:
            return False   # no workloads: nothing to read
        self.leading = self.leader(file)
        recorded = revisions.load(file.name)
        self.last_progress = [controllers.progress(w, recorded.get(w.key), self.ready_keys(file))
                              for w in file.workloads]
        if not self.leading:
            return False
        changed = False
        for w in file.workloads:
            current = recorded.get(w.key)
            nxt = controllers.step(w, current, file.nodes,
                                   self.available(file, w.min_ready_seconds))
            if nxt != current:
                revisions.write(file.name, w.key, nxt)
                self.steps += 1
                changed = True
                log.info("node %s: %s: %s", self.node.name, w.key, ", ".join(
                    f"{r.hash} x{len(r.members)}" for r in nxt))
        keys = {w.key for w in file.workloads}
        for key in recorded:
            if key not in keys:   # deleted from the file: its pods go (garbage collection)
                revisions.remove(file.name, key)
                changed = True
        return changed

    def progress(self, file: Cluster) -> list[dict]:
        return self.last_progress

    async def run(self) -> None:
        """Step the workloads until the node stops; a step that changed something is served
        here and told to the other nodes at once."""
        while True:
            await trio.sleep(INTERVAL)
            file = self.node.file
            if self.tick(file):
                await self.node.refresh({})
                self.node.tell_peers()
