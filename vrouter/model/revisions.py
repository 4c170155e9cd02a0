"""What the workload controllers have made so far, on disk: one JSON record per workload under
/run/vrouter/CLUSTER/workloads/ (Kubernetes keeps the same in its ReplicaSet and
ControllerRevision objects). Every node reads the records into its live model
(vrouter.model.workloads.with_revisions), so all of them make the same pods while a rollout is
half-way, and a node that restarts comes back to the state the others are in. Only the node
that leads (vrouter.node.controllers) writes them.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from vrouter.host import state
from vrouter.model.workloads import Revision

log = logging.getLogger("vrouter.revisions")


def directory(cluster_name: str) -> Path:
    return state.cluster_dir(cluster_name) / "workloads"


def _path(cluster_name: str, key: str) -> Path:
    return directory(cluster_name) / (key.replace("/", ".") + ".json")


def load(cluster_name: str) -> dict[str, tuple[Revision, ...]]:
    """Workload key -> its revisions. A record that does not parse is skipped (and logged): its
    workload then starts from its file again."""
    found = {}
    try:
        names = sorted(os.listdir(directory(cluster_name)))
    except FileNotFoundError:
        return {}
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            d = json.loads((directory(cluster_name) / name).read_text())
            found[d["key"]] = tuple(Revision.from_json(r) for r in d["revisions"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("workload record %s is unreadable, ignored: %s", name, exc)
    return found


def write(cluster_name: str, key: str, revisions: tuple[Revision, ...]) -> None:
    path = _path(cluster_name, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"key": key, "revisions": [r.to_json() for r in revisions]}))
    os.replace(tmp, path)


def remove(cluster_name: str, key: str) -> None:
    try:
        _path(cluster_name, key).unlink()
    except FileNotFoundError:
        pass


def remove_all(cluster_name: str) -> None:
    for key in load(cluster_name):
        remove(cluster_name, key)
    try:
        directory(cluster_name).rmdir()
    except OSError:
        pass
