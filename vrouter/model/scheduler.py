"""Where a workload's pods run: a small deterministic scheduler, sans-IO.

Kubernetes' scheduler first filters the nodes a pod may run on (nodeName, nodeSelector) and then
scores the rest; by default it spreads the pods of one workload over the nodes. vrouter's does
the same without randomness, so one cluster file gives one cluster every time:
  - `nodeName` pins a pod to its node; `nodeSelector` keeps the nodes whose labels match (every
    node has `kubernetes.io/hostname: NAME` and `kubernetes.io/os: linux`, plus its `labels`);
  - nodes served by the Linux kernel (`kernel: true`) have no vrouter process to run programs,
    so they take no workload pods (as a node tainted NoSchedule);
  - among the rest, pod k of a group (a ReplicaSet, a StatefulSet) goes to the node with the
    fewest of the group's pods 0..k-1, ties by node order.
Pod k's node depends on k and the eligible nodes alone, not on which of the group's pods exist
at the moment, so scaling and rolling updates never move a running pod (and a ReplicaSet's pod
k of a new revision lands where pod k of the old one ran). Other pods do not count (the other
workloads', the file's, those applied to the store or attached at runtime, whose number
changes while the cluster runs), so that nothing but a change of the nodes moves a pod.
"""
from __future__ import annotations

HOSTNAME_LABEL = "kubernetes.io/hostname"
OS_LABEL = "kubernetes.io/os"


def node_labels(node) -> dict[str, str]:
    """A node's labels as the kubelet registers them, plus those the cluster file gives."""
    return {HOSTNAME_LABEL: node.name, OS_LABEL: "linux", **dict(node.labels)}


def eligible(nodes, node_name: str | None, node_selector) -> list:
    """The nodes a pod with this nodeName and nodeSelector may run on, in node order."""
    found = []
    for node in nodes:
        if node.kernel:
            continue
        if node_name is not None and node.name != node_name:
            continue
        labels = node_labels(node)
        if any(labels.get(k) != v for k, v in node_selector):
            continue
        found.append(node)
    return found


def spread(nodes, count: int) -> list[str]:
    """The node of pods 0..count-1 of one group, over `nodes` (eligible, in node order)."""
    placed = {n.name: 0 for n in nodes}
    order = []
    for _ in range(count):
        best = min(nodes, key=lambda n: (placed[n.name], n.index))
        placed[best.name] += 1
        order.append(best.name)
    return order
