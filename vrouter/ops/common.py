"""What the CLI's commands share: exit codes, reading CLUSTER arguments, asking a node."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from vrouter.host import state
from vrouter.model import attachments, config, revisions, workloads
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
    recorded the file they run)."""
    if Path(arg).is_file() or not config._DNS_LABEL.match(arg):
        return load_cluster(arg, check_host=False)
    for record in sorted(state.cluster_dir(arg).glob("*.json")):
        source = (state.read_record(arg, record.stem) or {}).get("source") or {}
        if source.get("config"):
            return load_cluster(source["config"], check_host=False,
                                manifests=source.get("manifests"))
    print(f"vrouter: {arg!r} is neither a cluster file nor a running cluster", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def ask(cluster: config.Cluster, node: str, cmd: str, timeout: float = 60, **fields) -> dict:
    try:
        return control.request(state.socket_path(cluster.name, node), cmd, timeout=timeout,
                               **fields)
    except OSError:
        print(f"vrouter: node {node!r} of cluster {cluster.name!r} is not running",
              file=sys.stderr)
        raise SystemExit(EXIT_HOST) from None


def node_of_pod(cluster: config.Cluster, pod_name: str) -> str | None:
    """The node of a pod of the cluster file (a workload's included, as its controllers
    have made them so far) or attached at runtime."""
    if cluster.workloads:
        cluster = workloads.with_revisions(cluster, revisions.load(cluster.name))
    live = attachments.live_cluster(cluster, attachments.load(cluster.name))
    try:
        return live.pod(pod_name).node
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
