"""What the workload controllers have made so far, as store keys (vrouter.store.base):
workloads/KIND/NS/NAME, one JSON record per workload (Kubernetes keeps the same in its
ReplicaSet and ControllerRevision objects). The file store keeps them under
/run/vrouter/CLUSTER/workloads/, etcd under its prefix. Every node reads them into its live
model (vrouter.model.live, vrouter.model.workloads.with_revisions), so all of them make the same
pods while a rollout is half-way, and a node that restarts comes back to the state the others
are in. Only the node that leads (vrouter.node.controllers) writes them. Sans-IO.
"""
from __future__ import annotations

import json

from vrouter.model.workloads import Revision

PREFIX = "workloads/"   # = vrouter.store.base.WORKLOADS


def key_of(workload_key: str) -> str:
    """The store key of a workload's record ("Deployment/default/web" ->
    "workloads/Deployment/default/web")."""
    return PREFIX + workload_key


def encode(workload_key: str, revisions: tuple[Revision, ...]) -> bytes:
    return json.dumps({"key": workload_key, "revisions": [r.to_json() for r in revisions]},
                      sort_keys=True).encode()


def decode(store_key: str, value: bytes) -> tuple[str, tuple[Revision, ...]]:
    """(workload key, revisions); ValueError when the record is not one (or not its key's)."""
    try:
        d = json.loads(value)
        revisions = tuple(Revision.from_json(r) for r in d["revisions"])
        key = d["key"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a workload record: {exc!r}") from None
    if key_of(str(key)) != store_key:
        raise ValueError(f"it is the record of {key!r}, not of what its key says")
    return key, revisions


def from_items(items: dict[str, bytes], problems: dict | None = None
               ) -> dict[str, tuple[Revision, ...]]:
    """Workload key -> its revisions, from the store's keys. A record that does not parse is
    left out (reported in `problems`): its workload then starts from its template again."""
    found = {}
    for store_key, value in sorted(items.items()):
        if not store_key.startswith(PREFIX):
            continue
        try:
            key, revisions = decode(store_key, value)
        except ValueError as exc:
            if problems is not None:
                problems[store_key] = str(exc)
            continue
        found[key] = revisions
    return found
