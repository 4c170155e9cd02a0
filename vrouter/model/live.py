"""The live model: the cluster file plus what the store holds (vrouter.store.base), as one
validated Cluster. Sans-IO: keys and values in, a Cluster and what was left out, out.

- nodes: the file's, plus every node registered in the store that the file does not list (as a
  Kubernetes Node: spec.podCIDR, its underlay, VTEP MAC and outside address). A node is
  *running* while its key exists (its lease); file nodes stay peers either way, registered ones
  go with their lease, so they drop out of every node's peers, routes and Service endpoints.
- objects: Namespaces, Pods, Services and NetworkPolicies under their keys, validated exactly as
  the file's documents are, together with them. A Pod has an address once its node gave it one
  (status.podIP): until then it is *pending*, and its node allocates one. A Pod for a node that
  does not exist (yet) is *held* until that node registers.
- attachments: pods attached at runtime on running nodes (vrouter.model.attachments).

A key that is corrupt (not JSON, not the object its key says, invalid, or in conflict with what
is already there) is left out and reported in `problems`, never applied half-way.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from vrouter.model import attachments, config
from vrouter.model.reader import Reader
from vrouter.model.types import Cluster, ConfigError

NODES, SUBNETS, ATTACHMENTS = "nodes/", "subnets/", "attachments/"
KIND_PREFIXES = {"pods/": "Pod", "services/": "Service", "networkpolicies/": "NetworkPolicy",
                 "namespaces/": "Namespace"}
ANNOTATION_UNDERLAY = "vrouter.io/underlay"
ANNOTATION_VTEP_MAC = "vrouter.io/vtep-mac"
ANNOTATION_LOST_PODS = "vrouter.io/lost-pods"


@dataclass
class Live:
    cluster: Cluster
    running: set[str] = field(default_factory=set)         # nodes whose key exists
    pending: list = field(default_factory=list)             # (key, document) Pods with no IP
    held: list = field(default_factory=list)                # (key, node) Pods of unknown nodes
    problems: dict[str, str] = field(default_factory=dict)  # key -> why it was left out
    registrations: dict[str, dict] = field(default_factory=dict)   # node -> its Node document
    objects: dict[str, dict] = field(default_factory=dict)  # key -> the document, as applied


def node_document(node, lost_pods=(), created: str | None = None) -> dict:
    """A node's registration: a Kubernetes Node (spec.podCIDR, status.addresses) whose
    annotations carry what flannel's carry (the underlay, the VTEP MAC)."""
    annotations = {ANNOTATION_UNDERLAY: str(node.underlay), ANNOTATION_VTEP_MAC: node.vtep_mac}
    if lost_pods:
        annotations[ANNOTATION_LOST_PODS] = ",".join(sorted(lost_pods))
    meta = {"name": node.name, "annotations": annotations}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta,
            "spec": {"podCIDR": str(node.pod_cidr), "podCIDRs": [str(node.pod_cidr)]},
            "status": {"addresses": [{"type": "InternalIP", "address": str(node.underlay)},
                                     {"type": "ExternalIP", "address": str(node.address)},
                                     {"type": "Hostname", "address": node.name}]}}


def node_fields(doc: dict) -> dict:
    """A registration as a nodes[] item of the cluster file (KeyError, TypeError if it is not
    one)."""
    meta, spec = doc["metadata"], doc["spec"]
    annotations = meta["annotations"]
    external = [a["address"] for a in doc["status"]["addresses"] if a["type"] == "ExternalIP"]
    fields = {"name": meta["name"], "underlay": annotations[ANNOTATION_UNDERLAY],
              "podCIDR": spec["podCIDR"], "vtepMAC": annotations[ANNOTATION_VTEP_MAC]}
    if external:
        fields["address"] = external[0]
    return fields


def lost_pods(doc: dict) -> set[str]:
    try:
        raw = doc["metadata"]["annotations"].get(ANNOTATION_LOST_PODS, "")
    except (KeyError, TypeError, AttributeError):
        return set()
    return {p for p in str(raw).split(",") if p}


def _decode(value: bytes):
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None


def build(file: Cluster, items: dict[str, bytes], self_node: str | None = None,
          restoring: bool = False, extra=(), down=frozenset()) -> Live:
    """The live model of `file` (a Cluster from config, with its spec) and the store's `items`
    (key -> value). `restoring`: this node's own attachments are left out (it attaches them
    again once its data path runs). `extra`: (key, document, parsed) objects about to be
    written (`vrouter apply`), checked after the store's, so a conflict is theirs. `down`: nodes
    gone silent on the overlay (their pods leave the model, and so every Service, as the
    endpoints controller drops a NotReady node's endpoints)."""
    spec = file.spec
    problems: dict[str, str] = {}
    registrations: dict[str, dict] = {}
    for key, value in sorted(items.items()):
        if not key.startswith(NODES):
            continue
        name = key[len(NODES):]
        try:
            doc = _decode(value)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            problems[key] = str(exc)
            continue
        registrations[name] = doc
    running = set(registrations)

    # registered nodes the file does not list, each checked against those before it
    file_names = {n.name for n in file.nodes}
    extra_nodes = []
    earlier = list(file.nodes)
    for name in sorted(registrations):
        if name in file_names:
            continue
        key = NODES + name
        reader = Reader(f"store key {key}")
        try:
            fields = node_fields(registrations[name])
            if fields["name"] != name:
                raise ValueError(f"it names node {fields['name']!r}")
            node = config.check_node(file, reader, "", fields, earlier)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problems[key] = f"not a node registration: {exc!r}"
            running.discard(name)
            continue
        except ConfigError as exc:
            problems[key] = str(exc)
            running.discard(name)
            continue
        earlier.append(node)
        extra_nodes.append((reader, "", fields))
    node_names = file_names | {f["name"] for _, _, f in extra_nodes}

    # Kubernetes objects, each checked on its own first
    objects: dict[str, dict] = {}
    checked: list[tuple[str, list]] = []
    pending, held = [], []
    replaced = {key for key, _, _ in extra}
    stored = []
    for key, value in sorted(items.items()):
        prefix = next((p for p in KIND_PREFIXES if key.startswith(p)), None)
        if prefix is None or key in replaced:
            continue
        kind = KIND_PREFIXES[prefix]
        try:
            doc = _decode(value)
            parsed = config.check_object(Reader(f"store key {key}"), doc, "", key, stored=True)
            _check_key(key, prefix, kind, doc)
        except (ValueError, ConfigError) as exc:
            problems[key] = str(exc)
            continue
        stored.append((key, doc, parsed))
    for key, doc, parsed in [*stored, *extra]:
        kind = parsed[0][0]
        objects[key] = doc
        if kind == "Pod":
            entry = parsed[0][1]
            if entry.fields["node"] not in node_names:
                held.append((key, entry.fields["node"]))
                continue
            if "ip" not in entry.fields:
                pending.append((key, doc))
                continue
        checked.append((key, parsed))

    cluster = _validated(spec, checked, extra_nodes, problems)

    lost = set()
    for name, doc in registrations.items():
        lost |= lost_pods(doc)
    if lost or down:
        cluster = dataclasses.replace(cluster, pods=tuple(
            p for p in cluster.pods if p.name not in lost and p.node not in down))
    records = []
    for key, value in sorted(items.items()):
        if not key.startswith(ATTACHMENTS):
            continue
        try:
            a = attachments.Attachment.from_json(_decode(value))
            if a.pod.name != key[len(ATTACHMENTS):]:
                raise ValueError(f"it is pod {a.pod.name!r}'s")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems[key] = f"not an attachment record: {exc}"
            continue
        if a.pod.node in running and a.pod.node not in down and not (
                restoring and a.pod.node == self_node):
            records.append(a)
    cluster = attachments.live_cluster(cluster, records)
    return Live(cluster, running, pending, held, problems, registrations, objects)


def _check_key(key: str, prefix: str, kind: str, doc: dict) -> None:
    """The object is the one its key names (a foreign object under a key is refused)."""
    if doc.get("kind") != kind:
        raise ValueError(f"the key is for a {kind}, the value is a {doc.get('kind')!r}")
    meta = doc.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    expected = f"{prefix}{namespace}/{name}" if kind != "Namespace" else f"{prefix}{name}"
    if key != expected:
        raise ValueError(f"the object is {expected!r}, not what its key says")


def _validated(spec, checked: list, extra_nodes: list, problems: dict) -> Cluster:
    """The cluster with every checked object that fits: all of them if they do, else one at a
    time in key order, each refused one reported (a conflict is the later object's)."""
    def build(chosen):
        return spec.cluster(objects=[o for _, parsed in chosen for o in parsed],
                            nodes=extra_nodes)
    try:
        return build(checked)
    except ConfigError:
        pass
    accepted: list = []
    for key, parsed in checked:
        try:
            build(accepted + [(key, parsed)])
        except ConfigError as exc:
            problems[key] = str(exc)
            continue
        accepted.append((key, parsed))
    try:
        return build(accepted)
    except ConfigError as exc:   # the registered nodes themselves do not fit (their DNS pods)
        for reader, _, fields in extra_nodes:
            problems[f"{NODES}{fields['name']}"] = str(exc)
        extra_nodes.clear()
        return build(accepted)
