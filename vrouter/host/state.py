"""Where a running node leaves its traces: /run/vrouter/CLUSTER/NODE.{json,sock}.

The JSON record lists the namespaces the node created, so `vrouter down` can remove them even
after the node was killed with SIGKILL (TAP devices vanish with the process on their own).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

STATE_ROOT = Path(os.environ.get("VROUTER_STATE_DIR", "/run/vrouter"))


def cluster_dir(cluster_name: str) -> Path:
    return STATE_ROOT / cluster_name


def socket_path(cluster_name: str, node_name: str) -> Path:
    return cluster_dir(cluster_name) / f"{node_name}.sock"


def record_path(cluster_name: str, node_name: str) -> Path:
    return cluster_dir(cluster_name) / f"{node_name}.json"


def write_record(cluster_name: str, node_name: str, created_netns: list[str],
                 source: dict | None = None) -> None:
    """`source`: {"config": path, "manifests": dir or None}, so that commands can name a
    running cluster instead of its file."""
    path = record_path(cluster_name, node_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "node": node_name,
                               "created_netns": created_netns, "source": source or {}}))
    os.replace(tmp, path)


def read_record(cluster_name: str, node_name: str) -> dict | None:
    try:
        return json.loads(record_path(cluster_name, node_name).read_text())
    except (OSError, ValueError):
        return None


def remove_traces(cluster_name: str, node_name: str) -> None:
    for path in (record_path(cluster_name, node_name), socket_path(cluster_name, node_name)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    for directory in (cluster_dir(cluster_name) / "pods", cluster_dir(cluster_name)):
        try:
            directory.rmdir()
        except OSError:
            pass   # other nodes of the cluster still run, or it is gone already


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
