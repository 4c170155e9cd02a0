"""The cluster's state besides its file, behind one interface (vrouter.store.base): the file
store on one machine, or etcd. `open_store` picks the one cluster.datastore names; `run` is for
the synchronous callers (commands, vrouter-cni)."""
from __future__ import annotations

import trio

from vrouter.store.base import Store


def open_store(cluster) -> Store:
    """The store of a cluster (a vrouter.model.types.Cluster)."""
    if cluster.datastore.type == "etcd":
        from vrouter.store.etcdstore import EtcdStore
        return EtcdStore(cluster.datastore, cluster.name)
    from vrouter.store.filestore import FileStore
    return FileStore(cluster.name)


def run(cluster, operation):
    """`await operation(store)` from synchronous code, with the store closed afterwards."""
    async def main():
        store = open_store(cluster)
        try:
            return await operation(store)
        finally:
            await store.aclose()
    return trio.run(main)
