"""What the page shows, gathered from the running cluster, under trio: the cluster model (the
live model, vrouter.model.live: the file with what the cluster's store holds, its registered
nodes, runtime attachments and applied objects, the file store's or etcd's; both re-read every
MODEL_INTERVAL, the last model kept while the store does not answer), each node's snapshot (asked
every STATUS_INTERVAL; the node builds at most one a second, whoever asks) and each node's
flows (one follow stream per node, as `vrouter observe -f` reads them).

Pages subscribe to `updates`: each gets its own bounded queue (PAGE_QUEUE); a page that reads
too slowly loses updates, counted and told to it. The hub never waits for a page, and a node
never waits for the hub (the node bounds its follow queue too).
"""
from __future__ import annotations

import collections
import json
import logging

import trio

from fastpath.reasons import COUNTERS, DROP, FORWARD, SLOW
from vrouter.host import state
from vrouter.model import config, live
from vrouter.model.config import Cluster
from vrouter.store import open_store
from vrouter.store.base import StoreError
from vrouter.ui import view

log = logging.getLogger("vrouter.ui")

MODEL_INTERVAL = 2.0
STATUS_INTERVAL = 1.0
RECONNECT_DELAY = 1.0
FLOWS_KEPT = 2000       # the newest flows of all nodes, for a page that opens
BACKLOG = 500           # flows each node sends first when the hub (re)connects
PAGE_QUEUE = 512        # updates waiting for one page
MAX_LINE = 1 << 20
KINDS = {c.name: c.kind for c in COUNTERS}


def node_summary(name: str, status: dict | None) -> dict:
    """The counters the page charts, from a node's snapshot (None: not running)."""
    if not status:
        return {"node": name, "up": False}
    counters = status["counters"]
    by_kind = {FORWARD: 0, SLOW: 0, DROP: 0}
    drops = {}
    for counter, value in counters.items():
        kind = KINDS.get(counter)
        if kind in by_kind:
            by_kind[kind] += value
        if kind == DROP and value:
            drops[counter] = value
    flows = status.get("flows") or {}
    return {"node": name, "up": True, "ready": status.get("ready"),
            "rx_frames": counters.get("rx_frames", 0), "forwarded": by_kind[FORWARD],
            "slow": by_kind[SLOW], "dropped": by_kind[DROP], "drops": drops,
            "connections": (status.get("conntrack") or {}).get("entries", 0),
            "flow_events": flows.get("events", 0),
            "flows_lost": flows.get("lost_ring_full", 0) + flows.get("lost_slow_clients", 0)}


class Page:
    """One open page's queue of (event, data) updates."""

    def __init__(self):
        self.send, self.receive = trio.open_memory_channel(PAGE_QUEUE)
        self.dropped = 0

    def offer(self, event: str, data) -> None:
        try:
            self.send.send_nowait((event, data))
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


class Hub:
    def __init__(self, file: Cluster, cluster: Cluster | None = None):
        """`file`: the cluster file; `cluster`: the live model as first read (default: the
        file alone)."""
        self.file = file
        self.cluster = cluster or file
        self.model = view.model(self.cluster)
        self.status: dict[str, dict] = {n.name: node_summary(n.name, None)
                                        for n in self.cluster.nodes}
        self.snapshots: dict[str, dict] = {}
        self.flows: collections.deque = collections.deque(maxlen=FLOWS_KEPT)
        self.pages: set[Page] = set()
        self.pages_dropped = 0   # updates lost by pages that have gone
        self.flow_lost = 0       # flows the nodes said were lost for the hub
        self.store_error: str | None = None   # why the last read of the store failed
        self.followed: set[str] = set()

    @property
    def vrouter_nodes(self) -> list[str]:
        return [n.name for n in self.cluster.nodes if not n.kernel]

    def state(self) -> dict:
        """Everything a page that opens needs."""
        return {"model": self.model, "status": list(self.status.values()),
                "flows": list(self.flows)}

    # --- pages ----------------------------------------------------------------------------------

    def subscribe(self) -> Page:
        page = Page()
        self.pages.add(page)
        return page

    def unsubscribe(self, page: Page) -> None:
        if page in self.pages:
            self.pages.discard(page)
            self.pages_dropped += page.dropped
        page.send.close()

    def publish(self, event: str, data) -> None:
        for page in tuple(self.pages):
            page.offer(event, data)

    # --- the cluster ------------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._follow_new()
            nursery.start_soon(self._watch_model)
            nursery.start_soon(self._poll_status)

    def _follow_new(self) -> None:
        """A flow stream for every vrouter node of the model (nodes that register later too)."""
        for name in self.vrouter_nodes:
            if name not in self.followed:
                self.followed.add(name)
                self.nursery.start_soon(self._follow, name)

    async def _read_model(self, store) -> Cluster:
        file = await trio.to_thread.run_sync(
            lambda: config.load(self.file.source, check_host=False, manifests=self.file.manifests))
        if file.datastore != self.file.datastore:
            file = self.file   # as the nodes, which need a restart for another store
        items = (await store.list("")).values()
        return live.build(file, items).cluster

    async def _watch_model(self) -> None:
        store = open_store(self.file)
        try:
            while True:
                try:
                    cluster = await self._read_model(store)
                except (config.ConfigError, OSError, ValueError, StoreError) as exc:
                    if str(exc) != self.store_error:
                        log.warning("reading the cluster failed, showing the last model: %s",
                                    exc)
                    self.store_error = str(exc)
                else:
                    self.store_error = None
                    model = view.model(cluster)
                    self.cluster = cluster
                    if model != self.model:
                        self.model = model
                        self.publish("model", model)
                        self._follow_new()
                await trio.sleep(MODEL_INTERVAL)
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()

    async def _poll_status(self) -> None:
        while True:
            changed = []
            for name in set(self.status) - set(self.vrouter_nodes):   # its lease expired
                del self.status[name]
                self.snapshots.pop(name, None)
            for name in self.vrouter_nodes:
                try:
                    snapshot = await request(state.socket_path(self.cluster.name, name),
                                             {"cmd": "status", "max_age": STATUS_INTERVAL})
                except (OSError, ValueError, trio.TooSlowError):
                    snapshot = None
                if snapshot is not None and snapshot.get("ok") is False:
                    snapshot = None
                self.snapshots[name] = snapshot
                self.status[name] = node_summary(name, snapshot)
                changed.append(self.status[name])
            self.publish("status", changed)
            await trio.sleep(STATUS_INTERVAL)

    async def _follow(self, name: str) -> None:
        """The node's flows as they come; again after it stops or restarts."""
        backlog = BACKLOG
        while True:
            try:
                async for item in follow(state.socket_path(self.cluster.name, name), backlog):
                    if "flow" in item:
                        self.flows.append(item["flow"])
                        self.publish("flow", item["flow"])
                    elif "lost" in item:
                        self.flow_lost += item["lost"].get("flows", 0)
                        self.publish("lost", {"node": name, **item["lost"]})
            except (OSError, ValueError, trio.BrokenResourceError) as exc:
                log.debug("following %s: %s", name, exc)
            backlog = 0 if self.flows else BACKLOG   # what we have is still shown
            await trio.sleep(RECONNECT_DELAY)
            if name not in self.vrouter_nodes:   # gone from the model (its lease expired)
                self.followed.discard(name)
                return


async def _lines(stream):
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
        if len(buffer) > MAX_LINE:
            raise ValueError("a line from the node is too long")


async def request(path, message: dict, timeout: float = 10.0) -> dict:
    """One control-socket request from trio (vrouter.node.control's protocol)."""
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > 16 * MAX_LINE:
                    raise ValueError("the node's answer is too long")
    if not data.strip():
        raise ValueError("the node closed the connection without an answer")
    return json.loads(data)


async def follow(path, last: int):
    """A node's flows stream: its items ({"flow": ...} or {"lost": ...}) until it closes."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(json.dumps({"cmd": "flows", "follow": True,
                                          "last": last or None}).encode() + b"\n")
        lines = _lines(stream)
        header = await lines.__anext__()
        if not header.get("ok"):
            raise ValueError(f"the node refused: {header.get('error')}")
        async for item in lines:
            yield item
