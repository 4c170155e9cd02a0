"""A node's list-then-watch (vrouter.node.sync) against a real etcd, with the node's side
(pods.apply) recorded instead of made: compaction, a lost stream, stale events."""
import json
from contextlib import asynccontextmanager

import trio

from vrouter.model import config
from vrouter.node.sync import Sync
from vrouter.store.base import Change, Unreachable
from vrouter.store.etcdstore import EtcdStore


class FakeRegistration:
    node = None
    lease = 0
    lease_lost = 0


class FakePods:
    restoring = False
    down_nodes: frozenset = frozenset()

    def __init__(self, node):
        self.node = node
        self.models = []

    async def apply(self, model, file=None, skip_unchanged=False):
        cluster = model() if callable(model) else model   # as LocalPods.apply
        if skip_unchanged and cluster == self.node.cluster:
            return {"unchanged": True}
        self.models.append(cluster)
        self.node.cluster = cluster
        return {}


class FakeNode:
    def __init__(self, etcd_url):
        self.name = "node-a"
        self.file = config.parse(f"""
cluster: {{name: sy, podCIDR: 10.244.0.0/16,
           datastore: {{type: etcd, endpoints: ["{etcd_url}"], prefix: /sy}}}}
nodes: [{{name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}}]
""", check_host=False)
        self.cluster = self.file
        self.node = self.file.node("node-a")
        self.registration = FakeRegistration()
        self.pods = FakePods(self)
        self.store = EtcdStore(self.file.datastore, "sy")


def service(name, port=80):
    return json.dumps({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"selector": {"app": name}, "ports": [{"port": port}]}}).encode()


def served(node):
    return sorted(s.name for s in node.cluster.services if s.namespace == "default")


async def until(predicate, what):
    with trio.fail_after(15):
        while not predicate():
            await trio.sleep(0.02)


def test_a_compacted_start_lists_again_and_goes_on_watching(etcd):
    async def main():
        node = FakeNode(etcd.url)
        sync = Sync(node)
        await node.store.put("services/default/a", service("a"))
        await sync.list_now()
        await sync.apply()
        assert served(node) == ["a"]
        # the store moves on and is compacted past where this node would watch from
        await node.store.put("services/default/b", service("b"))
        await node.store.delete("services/default/a")
        last = await node.store.put("services/default/c", service("c"))
        await node.store.compact(last)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run)
            await until(lambda: served(node) == ["b", "c"], "the resync")
            assert sync.compactions == 1 and sync.resyncs == 1
            await node.store.put("services/default/d", service("d"))   # watched again
            await until(lambda: served(node) == ["b", "c", "d"], "the watch")
            nursery.cancel_scope.cancel()
        await node.store.aclose()
    trio.run(main)


def test_a_lost_stream_keeps_the_model_then_resynchronises(etcd):
    async def main():
        node = FakeNode(etcd.url)
        sync = Sync(node)
        await node.store.put("services/default/a", service("a"))
        await sync.list_now()
        await sync.apply()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run)
            await trio.sleep(0.2)
            applied = len(node.pods.models)
            await trio.to_thread.run_sync(etcd.kill)
            await until(lambda: not sync.reachable, "the node to notice")
            assert sync.unreachable_since is not None
            assert served(node) == ["a"] and len(node.pods.models) == applied   # nothing cleared
            await trio.to_thread.run_sync(etcd.start)
            await until(lambda: sync.reachable and sync.resyncs >= 1, "the resync")
            await node.store.put("services/default/b", service("b"))
            await until(lambda: served(node) == ["a", "b"], "the watch")
            nursery.cancel_scope.cancel()
        await node.store.aclose()
    trio.run(main)


def test_a_watch_event_older_than_a_list_is_ignored(etcd):
    async def main():
        node = FakeNode(etcd.url)
        sync = Sync(node)
        await node.store.put("services/default/a", service("a"))
        old = await node.store.put("services/default/a", service("a", 81))
        await node.store.delete("services/default/a")
        await sync.list_now()
        assert "services/default/a" not in sync.items
        assert sync.update([Change("services/default/a", service("a", 81), old)]) == 0
        assert "services/default/a" not in sync.items
        await node.store.aclose()
    trio.run(main)


def test_corrupt_keys_are_counted_once_and_skipped(etcd):
    async def main():
        node = FakeNode(etcd.url)
        sync = Sync(node)
        await node.store.put("services/default/a", service("a"))
        await node.store.put("services/default/junk", b"\x00garbage")
        await node.store.put("networkpolicies/default/x", service("x"))   # foreign
        await sync.list_now()
        await sync.apply()
        await sync.apply()
        assert served(node) == ["a"]
        assert sorted(sync.skipped) == ["networkpolicies/default/x", "services/default/junk"]
        assert sync.skipped_total == 2
        await node.store.aclose()
    trio.run(main)


def test_a_watch_dead_without_a_word_is_replaced_when_the_store_comes_back(etcd):
    """A partition can drop etcd's FIN or reset: the watch's connection is dead and silent, as
    a quiet watch is. When the keepalives find the store unreachable and then reachable again,
    the node lists the difference and watches afresh."""
    class DeadFirstWatch(EtcdStore):
        watches = 0

        def watch(self, prefix, revision):
            DeadFirstWatch.watches += 1
            if DeadFirstWatch.watches == 1:
                return self._dead()
            return super().watch(prefix, revision)

        @asynccontextmanager
        async def _dead(self):
            async def nothing():
                await trio.sleep_forever()
                yield []
            yield nothing()

    async def main():
        node = FakeNode(etcd.url)
        node.store = DeadFirstWatch(node.file.datastore, "sy")
        sync = Sync(node)
        await node.store.put("services/default/a", service("a"))
        await sync.list_now()
        await sync.apply()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run)
            await until(lambda: DeadFirstWatch.watches == 1, "the watch")
            await node.store.put("services/default/b", service("b"))
            await trio.sleep(0.3)   # (the dead watch would never say: nothing to wait for)
            assert served(node) == ["a"]
            sync.unreachable(Unreachable("keepalive: no answer"))   # as the registration says
            sync.reached()
            await until(lambda: served(node) == ["a", "b"], "the list after the outage")
            assert sync.rewatches == 1 and sync.resyncs == 1 and DeadFirstWatch.watches == 2
            await node.store.put("services/default/c", service("c"))   # watched afresh
            await until(lambda: served(node) == ["a", "b", "c"], "the new watch")
            sync.reached()   # reachable all along: the watch stays
            await trio.sleep(0.1)
            assert sync.rewatches == 1 and DeadFirstWatch.watches == 2
            nursery.cancel_scope.cancel()
        await node.store.aclose()
    trio.run(main)
