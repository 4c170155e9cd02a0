"""Where a running node leaves its traces: /run/vrouter/CLUSTER/NODE.{json,sock}, and where
`vrouter up` says that it supervises the cluster: /run/vrouter/CLUSTER/launcher.up.

The JSON record lists the namespaces the node created, so `vrouter down` (or the node's restart,
which adopts them) can find them even after the node was killed with SIGKILL (TAP devices vanish
with the process on their own).

Every record names its process by pid *and* start time (field 22 of /proc/PID/stat, clock ticks
since boot) and boot id: a pid alone may have been reused by an unrelated process since, which
`vrouter down` would then kill. Signals go through a pidfd opened before the identity check, so
the process checked is the process signalled.
"""
from __future__ import annotations

import json
import os
import select
import signal
import time
from pathlib import Path

STATE_ROOT = Path(os.environ.get("VROUTER_STATE_DIR", "/run/vrouter"))
LAUNCHER = "launcher.up"   # not *.json: what reads node records never mistakes it for one


def cluster_dir(cluster_name: str) -> Path:
    return STATE_ROOT / cluster_name


def socket_path(cluster_name: str, node_name: str) -> Path:
    return cluster_dir(cluster_name) / f"{node_name}.sock"


def record_path(cluster_name: str, node_name: str) -> Path:
    return cluster_dir(cluster_name) / f"{node_name}.json"


def launcher_path(cluster_name: str) -> Path:
    return cluster_dir(cluster_name) / LAUNCHER


# --- process identity ------------------------------------------------------------------------

def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None if there is no such process or
    it has exited (a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (OSError, ValueError):
        return None
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        if fields[0] in (b"Z", b"X"):   # field 3, the state: exited
            return None
        return int(fields[19])   # field 22
    except (IndexError, ValueError):
        return None


def identity(pid: int | None = None) -> dict:
    """What names a process for as long as it lives: {"pid", "start_time", "boot_id"}."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start_time": start_time(pid), "boot_id": _boot_id()}


def is_running(record: dict | None) -> bool:
    """Whether the process a record names still runs (the same process, not a reused pid). A
    record without a start time (an older vrouter's) names no process we can be sure of."""
    if not record or not isinstance(record.get("pid"), int) or record["pid"] <= 0:
        return False
    if record.get("start_time") is None or record.get("boot_id") != _boot_id():
        return False
    return start_time(record["pid"]) == record["start_time"]


def open_process(record: dict | None) -> int | None:
    """A pidfd of the process the record names, None if it is not running. The pidfd is opened
    first and the identity checked after: a pid reused in between fails the check."""
    if not record or not isinstance(record.get("pid"), int) or record["pid"] <= 0:
        return None
    try:
        fd = os.pidfd_open(record["pid"])
    except ProcessLookupError:
        return None
    except OSError:   # no pidfds (Linux < 5.3): the identity check alone
        return -1 if is_running(record) else None
    if not is_running(record):
        os.close(fd)
        return None
    return fd


def stop_process(record: dict | None, grace: float) -> bool:
    """SIGTERM to the process the record names, SIGKILL if it still runs after `grace`
    seconds; waits until it has gone. False if it was not running."""
    fd = open_process(record)
    if fd is None:
        return False
    try:
        _send(fd, record["pid"], signal.SIGTERM)
        if not _wait_exit(fd, record, grace):
            _send(fd, record["pid"], signal.SIGKILL)
            _wait_exit(fd, record, grace)
    finally:
        if fd >= 0:
            os.close(fd)
    return True


def _send(fd: int, pid: int, sig: int) -> None:
    try:
        if fd >= 0:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass   # it has just exited


def _wait_exit(fd: int, record: dict, timeout: float) -> bool:
    if fd >= 0:   # a pidfd becomes readable when its process exits
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    deadline = time.monotonic() + timeout
    while is_running(record):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- records ---------------------------------------------------------------------------------

def _write(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)


def write_record(cluster_name: str, node_name: str, created_netns: list[str],
                 source: dict | None = None, lost_pods: list[str] | tuple = (),
                 registration: dict | None = None) -> None:
    """`source`: {"config": path, "manifests": dir or None}, so that commands can name a
    running cluster instead of its file. `lost_pods`: pods of the cluster file whose netns
    vanished under the node (the other nodes leave them out of their live model).
    `registration`: what the file store lists as the node's key (vrouter.store.filestore)."""
    _write(record_path(cluster_name, node_name),
           {**identity(), "node": node_name, "created_netns": created_netns,
            "source": source or {}, "lost_pods": sorted(lost_pods),
            "registration": registration or {}})


def update_record(cluster_name: str, node_name: str, **fields) -> None:
    """Change fields of this process's own record (nobody else writes it)."""
    record = read_record(cluster_name, node_name) or {**identity(), "node": node_name}
    _write(record_path(cluster_name, node_name), {**record, **fields})


def memory_path(cluster_name: str, node_name: str) -> Path:
    return cluster_dir(cluster_name) / f"{node_name}.lease"


def write_memory(cluster_name: str, node_name: str, memory: dict) -> None:
    """What a node that registered itself remembers across its runs (the podCIDR it held, its
    lease): it asks for the same podCIDR again when it starts (flannel's subnet.env)."""
    _write(memory_path(cluster_name, node_name), memory)


def read_memory(cluster_name: str, node_name: str) -> dict:
    return _read(memory_path(cluster_name, node_name)) or {}


def forget_memory(cluster_name: str, node_name: str) -> None:
    try:
        memory_path(cluster_name, node_name).unlink()
    except FileNotFoundError:
        pass
    _remove_dirs(cluster_name)


def read_record(cluster_name: str, node_name: str) -> dict | None:
    return _read(record_path(cluster_name, node_name))


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_launcher(cluster_name: str, source: dict) -> None:
    _write(launcher_path(cluster_name), {**identity(), "source": source})


def read_launcher(cluster_name: str) -> dict | None:
    return _read(launcher_path(cluster_name))


def remove_launcher(cluster_name: str) -> None:
    try:
        launcher_path(cluster_name).unlink()
    except FileNotFoundError:
        pass
    _remove_dirs(cluster_name)


def remove_traces(cluster_name: str, node_name: str) -> None:
    for path in (record_path(cluster_name, node_name), socket_path(cluster_name, node_name)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    _remove_dirs(cluster_name)


def _remove_dirs(cluster_name: str) -> None:
    for directory in (cluster_dir(cluster_name) / "pods", cluster_dir(cluster_name) / "workloads",
                      cluster_dir(cluster_name)):
        try:
            directory.rmdir()
        except OSError:
            pass   # other nodes of the cluster still run, or it is gone already
