"""The file store: the cluster's state as records under /run/vrouter/CLUSTER/ on one machine
(cluster.datastore type file, the default).

    attachments/POD  <->  pods/POD.json, created exclusively (O_EXCL): a pod name is claimed once
    nodes/NODE       <->  NODE.json, the node's record (vrouter.host.state), listed only while
                          the process it names runs: the process is the lease
    workloads/KIND/NS/NAME  <->  workloads/KIND.NS.NAME.json, the workload controllers' record
                          (vrouter.model.revisions)

It keeps no Kubernetes objects (they live in the cluster file: edit it and `vrouter reload`).
A watch reads the records again when poked (a node that attached a pod asks the others to
refresh, which pokes their watch), and looks every POLL_INTERVAL seconds whether anything
changed without reading a record: the record directories' modification times (records are
created, replaced and removed, never rewritten in place) and the running nodes' pidfds (one
becomes readable when its process exits: a lease ends without touching a file). 32 nodes
re-reading 32 records every 2 s were most of an idle cluster's CPU.
"""
from __future__ import annotations

import json
import os
import select
import time
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from vrouter.host import state
from vrouter.store.base import (
    ATTACHMENTS, NODES, WORKLOADS, Change, Compacted, Item, Refused, Snapshot, Store,
)

POLL_INTERVAL = 2.0
TIMESTAMP_TICK = 0.1   # s: a change this soon before a read may not have moved a directory's time
HISTORY = 8          # snapshots a watch may start from (the last lists)
REFUSAL = ("the file datastore keeps no Kubernetes objects: put them in the cluster file (or "
           "--manifests) and run `vrouter reload`; cluster.datastore {type: etcd} keeps them "
           "in etcd")


class FileStore(Store):
    kind = "file"

    def __init__(self, cluster_name: str):
        self.cluster = cluster_name
        self.generation = 0
        self.history: dict[int, dict] = {}      # revision -> {key: Item}
        self.wakeups: set[trio.Event] = set()

    @property
    def root(self) -> Path:
        return state.cluster_dir(self.cluster)

    def pods_dir(self) -> Path:
        return self.root / "pods"

    def workloads_dir(self) -> Path:
        return self.root / "workloads"

    # --- reading ------------------------------------------------------------------------------

    def read(self, prefix: str = "", leases: Leases | None = None) -> dict[str, Item]:
        items: dict[str, Item] = {}
        if ATTACHMENTS.startswith(prefix) or prefix.startswith(ATTACHMENTS):
            items.update(self._attachments())
        if NODES.startswith(prefix) or prefix.startswith(NODES):
            items.update(self._nodes(leases))
        if WORKLOADS.startswith(prefix) or prefix.startswith(WORKLOADS):
            items.update(self._workloads())
        return {k: v for k, v in items.items() if k.startswith(prefix)}

    def _attachments(self) -> dict[str, Item]:
        found = {}
        try:
            names = sorted(os.listdir(self.pods_dir()))
        except FileNotFoundError:
            return found
        for name in names:
            if not name.endswith(".json"):
                continue   # a .tmp being written, say
            try:
                value = (self.pods_dir() / name).read_bytes()
            except OSError:
                continue
            found[ATTACHMENTS + name[:-len(".json")]] = Item(ATTACHMENTS + name[:-5], value)
        return found

    def _workloads(self) -> dict[str, Item]:
        found = {}
        try:
            names = sorted(os.listdir(self.workloads_dir()))
        except FileNotFoundError:
            return found
        for name in names:
            if not name.endswith(".json") or name.count(".") != 3:
                continue
            try:
                value = (self.workloads_dir() / name).read_bytes()
            except OSError:
                continue
            key = WORKLOADS + name[:-len(".json")].replace(".", "/")
            found[key] = Item(key, value)
        return found

    def _workload_path(self, key: str) -> Path:
        parts = key[len(WORKLOADS):].split("/")
        if len(parts) != 3 or not all(parts) or any("." in p or p.startswith("-")
                                                    for p in parts):
            raise Refused(f"{key!r} names no workload record (workloads/KIND/NAMESPACE/NAME)")
        return self.workloads_dir() / (".".join(parts) + ".json")

    def remove_workloads(self) -> int:
        """Every workload record (`vrouter up` of a cluster none of whose nodes runs starts
        from the file, `down` forgets them); how many there were."""
        gone = 0
        for key in self._workloads():
            try:
                self._workload_path(key).unlink()
                gone += 1
            except (FileNotFoundError, Refused):
                pass
        try:
            self.workloads_dir().rmdir()
        except OSError:
            pass
        return gone

    def _nodes(self, leases: Leases | None = None) -> dict[str, Item]:
        found = {}
        try:
            names = sorted(p.name for p in self.root.glob("*.json"))
        except OSError:
            return found
        running = set()
        for name in names:
            node = name[:-len(".json")]
            record = state.read_record(self.cluster, node)
            if not (leases.running(record) if leases is not None else state.is_running(record)):
                continue   # its process is gone: so is its lease
            running.add(Leases.key(record))
            registration = record.get("registration") or {}
            found[NODES + node] = Item(NODES + node, json.dumps(registration).encode(),
                                       lease=record["pid"])
        if leases is not None:
            leases.keep_only(running)
        return found

    def _mark(self) -> tuple[int, ...]:
        """The record directories' modification times (0: none yet)."""
        times = []
        for directory in (self.root, self.pods_dir(), self.workloads_dir()):
            try:
                times.append(directory.stat().st_mtime_ns)
            except OSError:
                times.append(0)
        return tuple(times)

    def _unchanged(self, mark: tuple[int, ...], read_at: float, leases: Leases) -> bool:
        """Nothing changed since a read at `read_at` that `mark` was taken just before."""
        if not leases.complete or self._mark() != mark:
            return False
        if any(read_at - t / 1e9 < TIMESTAMP_TICK for t in mark):
            return False   # changed just before that read: within a tick of the clock
        return not leases.any_ended()

    def _remember(self, items: dict) -> int:
        last = self.history.get(self.generation)
        if last != items:
            self.generation += 1
            self.history[self.generation] = items
            for old in [r for r in self.history if r <= self.generation - HISTORY]:
                del self.history[old]
        return self.generation

    async def list(self, prefix: str = "") -> Snapshot:
        items = self.read(prefix)
        return Snapshot(self._remember(self.read("")) if not prefix else self.generation, items)

    @asynccontextmanager
    async def watch(self, prefix: str, revision: int):
        base = self.history.get(revision - 1)
        if base is None:
            raise Compacted(f"the file store has no snapshot {revision - 1} to watch from")
        wake = trio.Event()   # from now on: a poke before the first read is not missed
        self.wakeups.add(wake)
        try:
            yield self._changes(prefix, {k: v for k, v in base.items() if k.startswith(prefix)},
                                wake)
        finally:
            self.wakeups.discard(wake)

    async def _changes(self, prefix: str, known: dict, wake: trio.Event):
        leases = Leases()
        mark, read_at = None, 0.0
        try:
            while True:
                with trio.move_on_after(POLL_INTERVAL):
                    await wake.wait()
                poked = wake.is_set()
                self.wakeups.discard(wake)
                wake = trio.Event()
                self.wakeups.add(wake)
                if not poked and mark is not None and self._unchanged(mark, read_at, leases):
                    continue
                mark, read_at = self._mark(), time.time()
                now = self.read(prefix, leases)
                revision = self._remember(now) if not prefix else self.generation
                changes = [Change(k, item.value, revision) for k, item in now.items()
                           if known.get(k) != item]
                changes += [Change(k, None, revision) for k in known if k not in now]
                known = now
                if changes:
                    yield changes
        finally:
            self.wakeups.discard(wake)
            leases.close()

    def poke(self) -> None:
        for wake in list(self.wakeups):
            wake.set()

    # --- writing ------------------------------------------------------------------------------

    def _attachment_path(self, key: str) -> Path:
        name = key[len(ATTACHMENTS):]
        if not name or "/" in name or name.startswith("."):
            raise Refused(f"{key!r} names no attachment record")
        return self.pods_dir() / f"{name}.json"

    async def create(self, key: str, value: bytes, lease: int = 0) -> Item | None:
        if not key.startswith(ATTACHMENTS):
            raise Refused(REFUSAL)
        path = self._attachment_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                return Item(key, path.read_bytes())
            except OSError:
                return Item(key, b"")
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        self.poke()
        return None

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        if key.startswith(NODES):
            # the node's registration lives in its record, which the node writes itself
            state.update_record(self.cluster, key[len(NODES):], registration=json.loads(value),
                                **state.identity())
            self.poke()
            return self.generation
        if key.startswith(WORKLOADS):
            path = self._workload_path(key)
        elif key.startswith(ATTACHMENTS):
            path = self._attachment_path(key)
        else:
            raise Refused(REFUSAL)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(value)
        os.replace(tmp, path)
        self.poke()
        return self.generation

    async def delete(self, key: str) -> bool:
        if key.startswith(WORKLOADS):
            try:
                self._workload_path(key).unlink()
            except FileNotFoundError:
                return False
            self.poke()
            return True
        if not key.startswith(ATTACHMENTS):
            if key.startswith(NODES):
                return False   # a node's record goes when the node stops
            raise Refused(REFUSAL)
        try:
            self._attachment_path(key).unlink()
        except FileNotFoundError:
            return False
        self.poke()
        return True

    async def commit(self, puts, deletes=(), expect=None, lease: int = 0) -> bool:
        raise Refused(REFUSAL)

    # --- leases: the process is the lease -------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        return os.getpid()

    async def keepalive(self, lease: int) -> int:
        return 1

    async def revoke(self, lease: int) -> None:
        pass

    def describe(self) -> dict:
        return {"type": self.kind, "root": str(self.root)}


class Leases:
    """pidfds of the running nodes' processes, kept while a watch runs: readable once the
    process has exited, so a watch learns that a lease ended without reading any record."""

    def __init__(self):
        self.fds: dict[tuple, int] = {}   # (pid, start_time) -> pidfd
        self.complete = True              # False: no pidfds here (Linux < 5.3): read to know

    @staticmethod
    def key(record: dict) -> tuple:
        return record.get("pid"), record.get("start_time")

    def running(self, record: dict | None) -> bool:
        if record and self.key(record) in self.fds:
            return state.is_running(record)
        fd = state.open_process(record)   # checks the identity itself
        if fd is None:
            return False
        if fd < 0:
            self.complete = False
        else:
            self.fds[self.key(record)] = fd
        return True

    def keep_only(self, keys: set) -> None:
        for key in [k for k in self.fds if k not in keys]:
            os.close(self.fds.pop(key))

    def any_ended(self) -> bool:
        if not self.fds:
            return False
        poller = select.poll()
        for fd in self.fds.values():
            poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        self.keep_only(set())
