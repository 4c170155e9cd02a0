"""Pods attached at runtime (by vrouter-cni or `vrouter attach`), and the live cluster they make
together with the cluster file.

The node a pod is attached to records it in the cluster's store under attachments/POD,
created only if the key does not exist, so a pod name is claimed once across the whole cluster
(the file store keeps it as /run/vrouter/CLUSTER/pods/POD.json, etcd as a key). Every node
reads the records into one model (vrouter.model.live, with `live_cluster` here): the file's
pods, those marked `netns: cni` replaced by their attachment once a runtime has attached them,
plus pods that exist only at runtime. Services, ARP answers and status all read that model, so
a pod attached on node-b becomes an endpoint on node-a.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass

from vrouter.model.config import Cluster, ContainerPort, Pod


@dataclass(frozen=True)
class Attachment:
    pod: Pod                 # as attached: its netns is a path, never "cni"
    container_id: str = ""   # the CNI container id ("" for `vrouter attach`)
    network: str = ""        # the CNI network name ("" for `vrouter attach`)
    netns_id: str = ""       # the netns attached ("dev:inode"): a node restarting re-attaches
                             # the pod only if its netns path still names that one

    def to_json(self) -> dict:
        p = self.pod
        return {"name": p.name, "namespace": p.namespace, "node": p.node, "ip": str(p.ip),
                "mac": p.mac, "netns": p.netns, "labels": dict(p.labels),
                "ports": [dataclasses.asdict(cp) for cp in p.ports],
                "ifname": p.ifname, "container_id": self.container_id, "network": self.network,
                "netns_id": self.netns_id}

    @staticmethod
    def from_json(d: dict) -> "Attachment":
        pod = Pod(name=d["name"], namespace=d["namespace"], node=d["node"],
                  ip=ipaddress.IPv4Address(d["ip"]), mac=d["mac"], netns=d["netns"],
                  owns_netns=False, labels=tuple(sorted(d.get("labels", {}).items())),
                  ports=tuple(ContainerPort(**cp) for cp in d.get("ports", [])),
                  ifname=d.get("ifname", "eth0"))
        return Attachment(pod, d.get("container_id", ""), d.get("network", ""),
                          d.get("netns_id", ""))


def netns_id(path: str) -> str:
    """What names a network namespace while it exists ("dev:inode" of its nsfs file); "" if
    `path` names none."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_dev}:{st.st_ino}"


def netns_problem(a: Attachment) -> str | None:
    """None if the attachment's netns is still there (the same namespace), else what is wrong."""
    now = netns_id(a.pod.netns_path)
    if not now:
        return f"its network namespace {a.pod.netns} is gone"
    if a.netns_id and now != a.netns_id:
        return f"{a.pod.netns} is another network namespace now"
    return None


def live_cluster(cluster: Cluster, attachments: list[Attachment]) -> Cluster:
    """The file's cluster with its runtime attachments: a `netns: cni` pod takes its
    attachment's netns; a pod the file does not know is added; records for unknown nodes or
    clashing with a file pod's address are ignored."""
    by_name = {a.pod.name: a for a in attachments}
    nodes = {n.name for n in cluster.nodes}
    pods = []
    taken = set()
    for pod in cluster.pods:
        attached = by_name.pop(pod.name, None)
        if attached and pod.awaiting_cni and attached.pod.node == pod.node:
            pod = dataclasses.replace(pod, netns=attached.pod.netns, ifname=attached.pod.ifname)
        pods.append(pod)
        taken.add(pod.ip)
    for a in attachments:
        if a.pod.name in by_name and a.pod.node in nodes and a.pod.ip not in taken:
            pods.append(a.pod)
            taken.add(a.pod.ip)
    return dataclasses.replace(cluster, pods=tuple(pods))
