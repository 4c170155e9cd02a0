"""The etcd store (cluster.datastore type etcd): every key of the cluster under
PREFIX/CLUSTER/ in etcd, through vrouter.store.etcd (the JSON gateway). Leases are etcd's."""
from __future__ import annotations

from contextlib import asynccontextmanager

from vrouter.model.types import Datastore
from vrouter.store import etcd
from vrouter.store.base import (
    Change, Compacted, Item, LeaseLost, Snapshot, Store, StoreError, Unreachable,
)

REQUEST_TIMEOUT = 3.0


def _translated(exc: etcd.EtcdError) -> StoreError:
    if isinstance(exc, etcd.Unavailable):
        return Unreachable(str(exc))
    if isinstance(exc, etcd.Compacted):
        return Compacted(str(exc))
    if isinstance(exc, etcd.LeaseNotFound):
        return LeaseLost(str(exc))
    return StoreError(f"etcd refused it: {exc}")


class EtcdStore(Store):
    kind = "etcd"

    def __init__(self, datastore: Datastore, cluster_name: str):
        self.datastore = datastore
        self.root = f"{datastore.prefix.rstrip('/')}/{cluster_name}/"
        self.client = etcd.Client(datastore.endpoints, timeout=REQUEST_TIMEOUT,
                                  ca_file=datastore.ca_file, cert_file=datastore.cert_file,
                                  key_file=datastore.key_file)
        self.watching: str | None = None   # the endpoint the watch stream is open to

    @property
    def requests(self) -> int:
        return self.client.requests

    def _key(self, key: str) -> bytes:
        return (self.root + key).encode()

    def _item(self, kv: etcd.KeyValue) -> Item:
        # a key that is not UTF-8 is kept (with replacement characters) for the model to refuse
        return Item(kv.key[len(self.root.encode()):].decode(errors="replace"), kv.value,
                    kv.mod_revision, kv.lease)

    async def list(self, prefix: str = "") -> Snapshot:
        try:
            revision, kvs = await self.client.get_prefix(self._key(prefix))
        except etcd.EtcdError as exc:
            raise _translated(exc) from None
        items = [self._item(kv) for kv in kvs]
        return Snapshot(revision, {i.key: i for i in items})

    async def get(self, key: str) -> Item | None:
        try:
            kv = await self.client.get(self._key(key))
        except etcd.EtcdError as exc:
            raise _translated(exc) from None
        return self._item(kv) if kv else None

    @asynccontextmanager
    async def watch(self, prefix: str, revision: int):
        start = self._key(prefix)
        try:
            async with self.client.watch(start, etcd.prefix_end(start), revision) as stream:
                self.watching = stream.endpoint
                try:
                    yield self._changes(stream)
                finally:
                    self.watching = None
        except etcd.EtcdError as exc:
            raise _translated(exc) from None

    async def _changes(self, stream: etcd.Watch):
        try:
            async for response in stream:
                if not response.events:
                    continue
                yield [Change(self._item(ev.kv).key,
                              None if ev.type == "DELETE" else ev.kv.value,
                              ev.kv.mod_revision) for ev in response.events]
        except etcd.EtcdError as exc:
            raise _translated(exc) from None

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        try:
            return await self.client.put(self._key(key), value, lease)
        except etcd.EtcdError as exc:
            raise _translated(exc) from None

    async def create(self, key: str, value: bytes, lease: int = 0) -> Item | None:
        k = self._key(key)
        try:
            result = await self.client.txn([etcd.version_is(k, 0)], [etcd.put_op(k, value, lease)],
                                           [etcd.range_op(k)])
        except etcd.EtcdError as exc:
            raise _translated(exc) from None
        if result.succeeded:
            return None
        existing = result.ranges()[0]
        return self._item(existing[0]) if existing else Item(key, b"")

    async def delete(self, key: str) -> bool:
        try:
            _, deleted = await self.client.delete(self._key(key))
        except etcd.EtcdError as exc:
            raise _translated(exc) from None
        return deleted > 0

    async def commit(self, puts, deletes=(), expect=None, lease: int = 0) -> bool:
        compare = []
        for key, revision in (expect or {}).items():
            compare.append(etcd.version_is(self._key(key), 0) if not revision
                           else etcd.mod_revision_is(self._key(key), revision))
        ops = [etcd.put_op(self._key(k), v, lease) for k, v in puts.items()]
        ops += [etcd.delete_op(self._key(k)) for k in deletes]
        try:
            return (await self.client.txn(compare, ops)).succeeded
        except etcd.EtcdError as exc:
            raise _translated(exc) from None

    async def grant(self, ttl: int) -> int:
        try:
            return (await self.client.grant(ttl))[0]
        except etcd.EtcdError as exc:
            raise _translated(exc) from None

    async def keepalive(self, lease: int) -> int:
        try:
            return await self.client.keepalive(lease)
        except etcd.EtcdError as exc:
            raise _translated(exc) from None

    async def revoke(self, lease: int) -> None:
        try:
            await self.client.revoke(lease)
        except etcd.EtcdError as exc:
            raise _translated(exc) from None

    async def compact(self, revision: int) -> None:
        try:
            await self.client.compact(revision)
        except etcd.EtcdError as exc:
            raise _translated(exc) from None

    def describe(self) -> dict:
        # the one that answered last first: where requests and the next watch go
        return {"type": self.kind, "endpoints": list(self.client.endpoints),
                "watching": self.watching,
                "prefix": self.root}

    async def aclose(self) -> None:
        await self.client.aclose()
