"""What the CLI's commands share: exit codes, reading CLUSTER arguments, asking a node."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from vrouter.host import state
from vrouter.model import config
from vrouter.model.names import DNS_LABEL
from vrouter.ops import control

EXIT_CONFIG = 2
EXIT_HOST = 1
DEFAULT_CONFIG = Path("configs/demo.yaml")


def default_config() -> str:
    """configs/demo.yaml of the checkout we run from, else the copy shipped in the package."""
    if DEFAULT_CONFIG.exists():
        return str(DEFAULT_CONFIG)
    return str(resources.files("vrouter") / "data" / "demo.yaml")


def load_cluster(path: str, check_host: bool = True, manifests: str | None = None
                 ) -> config.Cluster:
    try:
        return config.load(path, check_host=check_host, manifests=manifests)
    except config.ConfigError as exc:
        print(f"vrouter: config error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cluster_arg(arg: str) -> config.Cluster:
    """CLUSTER arguments: a cluster file, or the name of a running cluster (whose nodes
    recorded the file they run); as the live model (the store's nodes and pods with it)."""
    return live_cluster(file_arg(arg))


def file_arg(arg: str) -> config.Cluster:
    """The cluster file a CLUSTER argument names."""
    if Path(arg).is_file() or not DNS_LABEL.match(arg):
        return load_cluster(arg, check_host=False)
    for record in sorted(state.cluster_dir(arg).glob("*.json")):
        source = (state.read_record(arg, record.stem) or {}).get("source") or {}
        if source.get("config"):
            return load_cluster(source["config"], check_host=False,
                                manifests=source.get("manifests"))
    print(f"vrouter: {arg!r} is neither a cluster file nor a running cluster", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def store_items(cluster: config.Cluster) -> dict[str, bytes]:
    """Every key of the cluster's store (StoreError if it cannot be read)."""
    from vrouter.store import run

    async def read(store):
        return (await store.list("")).values()
    return run(cluster, read)


def live_cluster(file: config.Cluster) -> config.Cluster:
    """The file with what the store holds (registered nodes, attachments, applied objects); the
    file alone, with a warning, when the store does not answer."""
    from vrouter.model import live
    from vrouter.store.base import StoreError
    try:
        return live.build(file, store_items(file)).cluster
    except StoreError as exc:
        print(f"vrouter: warning: the datastore does not answer ({exc}): the cluster file "
              "alone is used", file=sys.stderr)
        return file


def ask(cluster: config.Cluster, node: str, cmd: str, timeout: float = 60, **fields) -> dict:
    try:
        return control.request(state.socket_path(cluster.name, node), cmd, timeout=timeout,
                               **fields)
    except OSError:
        print(f"vrouter: node {node!r} of cluster {cluster.name!r} is not running",
              file=sys.stderr)
        raise SystemExit(EXIT_HOST) from None


def node_of_pod(cluster: config.Cluster, pod_name: str) -> str | None:
    """The node of a pod of the live model (cluster_arg)."""
    try:
        return cluster.pod(pod_name).node
    except KeyError:
        return None


def unknown_node(args, cluster) -> bool:
    try:
        cluster.node(args.node)
        return False
    except KeyError:
        print(f"vrouter: config error: {cluster.source}: nodes: no node named {args.node!r} "
              f"(nodes: {', '.join(n.name for n in cluster.nodes)})", file=sys.stderr)
        return True
