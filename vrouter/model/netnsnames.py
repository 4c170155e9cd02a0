"""How vrouter names network namespaces, and where they live.

A pod whose namespace vrouter makes has one named after the pod (so pod names are unique across
Kubernetes namespaces); a node's DNS server pod is CLUSTER-dns-NODE; the outside network is
CLUSTER-outside. `pods[].netns` may instead name an existing namespace (a name under /run/netns
or an absolute path), or be `cni`: a container runtime attaches it later.
"""
from __future__ import annotations

import os
import re

NETNS_RUN_DIR = "/run/netns"
CNI = "cni"                  # pods[].netns: attached at runtime by the CNI plugin
# \Z, not $: $ also matches before a final newline
NETNS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def netns_path(netns: str) -> str:
    """A namespace name or path as a path."""
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def outside_netns_name(cluster_name: str) -> str:
    """The namespace that plays the world outside the cluster (see vrouter/host/outside.py)."""
    return f"{cluster_name}-outside"


def dns_pod_name(cluster_name: str, node_name: str) -> str:
    """The DNS server pod of a node: it names a network namespace, so the cluster's name is in
    it (two clusters on one machine must not clash)."""
    return f"{cluster_name}-dns-{node_name}"


def build_netns(reader, d: dict, where: str, pod_name: str, check_host: bool, name_at: str
                ) -> tuple[str, bool]:
    """(netns, owned) of a pods[] item: the pod's own namespace, created by vrouter, unless
    `netns` names one."""
    if "netns" not in d:
        if not NETNS_NAME.match(pod_name):
            reader.fail(name_at, f"{pod_name!r} cannot name a network namespace")
        return pod_name, True
    netns = reader.string(d["netns"], f"{where}.netns", what="a netns name or a path")
    if netns == CNI:
        return netns, False   # a container runtime attaches it later, through vrouter-cni
    if not netns.startswith("/") and not NETNS_NAME.match(netns):
        reader.fail(f"{where}.netns", f"{netns!r} is neither a netns name nor an absolute path")
    if check_host and not os.path.exists(netns_path(netns)):
        reader.fail(f"{where}.netns", f"network namespace {netns!r} does not exist "
                    f"({netns_path(netns)})")
    return netns, False
