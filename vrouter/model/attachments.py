"""Pods attached at runtime (by vrouter-cni or `vrouter attach`), and the live cluster they make
together with the cluster file.

The node a pod is attached to records it as one JSON file under /run/vrouter/CLUSTER/pods/,
created exclusively (O_EXCL), so a pod name is claimed once across the whole cluster. Every node
of the cluster reads the records (when told to refresh, and every few seconds) into one model,
`live_cluster`: the file's pods, those marked `netns: cni` replaced by their attachment once a
runtime has attached them, plus pods that exist only at runtime. Services, ARP answers and
status all read that model, so a pod attached on node-b becomes an endpoint on node-a.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vrouter.host import state
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


class NameTaken(Exception):
    """Another attachment already has this pod name."""


def registry(cluster_name: str) -> Path:
    return state.cluster_dir(cluster_name) / "pods"


def _path(cluster_name: str, pod_name: str) -> Path:
    return registry(cluster_name) / f"{pod_name}.json"


def claim(cluster_name: str, attachment: Attachment) -> None:
    """Record the attachment; NameTaken if a record of that pod name exists (anywhere)."""
    directory = registry(cluster_name)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(_path(cluster_name, attachment.pod.name), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o644)
    except FileExistsError:
        raise NameTaken(attachment.pod.name) from None
    with os.fdopen(fd, "w") as f:
        json.dump(attachment.to_json(), f)


def release(cluster_name: str, pod_name: str) -> None:
    try:
        _path(cluster_name, pod_name).unlink()
    except FileNotFoundError:
        pass


def load(cluster_name: str) -> list[Attachment]:
    """Every recorded attachment (unreadable records, a half-written one say, are skipped)."""
    found = []
    try:
        names = sorted(os.listdir(registry(cluster_name)))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            found.append(Attachment.from_json(json.loads((registry(cluster_name) / name).read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


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
