"""One small interface to the cluster's state besides its file: list, watch, put, delete, lease.

Two datastores implement it (cluster.datastore): the file store (vrouter.store.filestore: the
records under /run/vrouter/CLUSTER/ of one machine) and etcd (vrouter.store.etcdstore). The
node, vrouter-cni, `attach` and the commands use only this, so both take one code path above it:
a node lists the cluster's keys, builds its live model from them (vrouter.model.live), watches
from the next revision, and lists again after a compaction or a lost stream.

Keys are relative to the cluster (a store puts them under its own root), one object each:
    nodes/NAME                  a running node's registration (a Kubernetes Node), leased
    subnets/10.244.3.0-24       the podCIDR a registered node holds (flannel's subnet lease)
    attachments/POD             a pod attached at runtime (vrouter attach, vrouter-cni)
    pods/NS/NAME, services/NS/NAME, networkpolicies/NS/NAME, namespaces/NAME,
    deployments/NS/NAME, replicasets/NS/NAME, statefulsets/NS/NAME, daemonsets/NS/NAME
                                Kubernetes objects as `vrouter apply` wrote them (JSON)
    workloads/KIND/NS/NAME      what the workload controllers have made of a workload so far
                                (its revisions: vrouter.model.revisions), written by the node
                                that leads them (vrouter.node.controllers)
"""
from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import AsyncIterator

NODES = "nodes/"
SUBNETS = "subnets/"
ATTACHMENTS = "attachments/"
WORKLOADS = "workloads/"
# kind -> (key prefix, namespaced): the objects `vrouter apply` writes
OBJECT_KINDS = {"Pod": ("pods/", True), "Service": ("services/", True),
                "NetworkPolicy": ("networkpolicies/", True), "Namespace": ("namespaces/", False),
                "Deployment": ("deployments/", True), "ReplicaSet": ("replicasets/", True),
                "StatefulSet": ("statefulsets/", True), "DaemonSet": ("daemonsets/", True)}


def object_key(kind: str, name: str, namespace: str | None = None) -> str:
    prefix, namespaced = OBJECT_KINDS[kind]
    return f"{prefix}{namespace or 'default'}/{name}" if namespaced else f"{prefix}{name}"


def node_key(name: str) -> str:
    return NODES + name


def attachment_key(pod: str) -> str:
    return ATTACHMENTS + pod


class StoreError(Exception):
    """A store operation failed."""


class Unreachable(StoreError):
    """The store did not answer. Whoever serves traffic keeps the last state it knew."""


class Compacted(StoreError):
    """A watch could not start where asked (the history is gone): list again."""


class Refused(StoreError):
    """This store does not keep that (the file store keeps no Kubernetes objects)."""


class LeaseLost(StoreError):
    """A lease expired or was revoked: its keys are gone."""


@dataclass(frozen=True)
class Item:
    key: str
    value: bytes
    revision: int = 0      # the revision the key was last written at
    lease: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Every key under a prefix at one revision."""
    revision: int
    items: dict = field(default_factory=dict)    # key -> Item

    def values(self) -> dict[str, bytes]:
        return {k: i.value for k, i in self.items.items()}


@dataclass(frozen=True)
class Change:
    key: str
    value: bytes | None    # None: the key was deleted
    revision: int


class Store:
    """The interface; see the module docstring. Every method may raise Unreachable."""

    kind = "?"
    requests = 0           # requests sent to the datastore (benchmarks)

    async def list(self, prefix: str = "") -> Snapshot:
        raise NotImplementedError

    def watch(self, prefix: str, revision: int
              ) -> AbstractAsyncContextManager[AsyncIterator[list[Change]]]:
        """Changes under `prefix` from `revision` on, in batches; raises Compacted when that
        revision is gone, Unreachable when the stream is lost."""
        raise NotImplementedError

    async def get(self, key: str) -> Item | None:
        return (await self.list(key)).items.get(key)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        raise NotImplementedError

    async def create(self, key: str, value: bytes, lease: int = 0) -> Item | None:
        """Write `key` only if it does not exist: None when written, else the Item that is
        there (whoever holds it)."""
        raise NotImplementedError

    async def delete(self, key: str) -> bool:
        raise NotImplementedError

    async def commit(self, puts: dict[str, bytes], deletes=(), expect: dict | None = None,
                     lease: int = 0) -> bool:
        """One transaction: False (and nothing written) unless every key of `expect` is at
        the revision given there (0: the key does not exist)."""
        raise NotImplementedError

    async def grant(self, ttl: int) -> int:
        """A lease of `ttl` seconds; keys put with it go when it expires or is revoked."""
        raise NotImplementedError

    async def keepalive(self, lease: int) -> int:
        """Renew the lease; its TTL. LeaseLost when it has expired."""
        raise NotImplementedError

    async def revoke(self, lease: int) -> None:
        raise NotImplementedError

    def poke(self) -> None:
        """Something changed that a watcher should see now (file store: read again)."""

    def describe(self) -> dict:
        return {"type": self.kind}

    async def aclose(self) -> None:
        pass
