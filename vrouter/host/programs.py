"""Pods' programs as processes on this machine: starting one inside its pod (through the
launcher, vrouter/host/nslaunch.py), signalling its process group, and finding what is left of
a cluster's programs after a node was killed.

Every program gets MARK=CLUSTER/POD in its environment, which its children inherit: a node
that starts again after a crash, and `vrouter down`, end whatever carries its mark (the program
itself died with its node: its launcher asked for SIGKILL at the node's death; a child it
started in the background may not have).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

MARK = "VROUTER_POD"
LAUNCHER = str(Path(__file__).with_name("nslaunch.py"))


class Started:
    """A program that was started: its process, the read end of its output (stdout and
    stderr together), and the read end of the launcher's status pipe."""

    def __init__(self, process: subprocess.Popen, output: int, status: int):
        self.process, self.output, self.status = process, output, status

    @property
    def pid(self) -> int:
        return self.process.pid


def mark(cluster: str, pod: str) -> str:
    return f"{cluster}/{pod}"


def spawn(cluster: str, pod: str, netns: str, netns_name: str | None, hostname: str,
          argv: list[str], env: dict[str, str], cwd: str = "",
          output: bool = True) -> Started:
    """Start `argv` in the pod, in a session (and process group) of its own. Called from the
    node's main thread, which lives as long as the node: the launcher's death signal follows
    the thread that made it."""
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    out_read, out_write = os.pipe2(os.O_CLOEXEC) if output else (-1, os.open(os.devnull,
                                                                             os.O_WRONLY))
    spec = {"parent": os.getpid(), "netns": netns, "netns_name": netns_name,
            "hostname": hostname, "cwd": cwd, "argv": argv, "status_fd": status_write,
            "env": {**env, MARK: mark(cluster, pod)}}
    try:
        process = subprocess.Popen([sys.executable, "-I", "-S", LAUNCHER, json.dumps(spec)],
                                   stdin=subprocess.DEVNULL, stdout=out_write,
                                   stderr=subprocess.STDOUT, pass_fds=(status_write,),
                                   start_new_session=True, close_fds=True,
                                   env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except BaseException:
        for fd in (status_read, out_read):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        os.close(status_write)
        os.close(out_write)
    return Started(process, out_read, status_read)


def signal_group(pid: int, sig: int) -> bool:
    """Signal a program's process group (its children too); False if none is left."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:   # the group leader is gone and its id was taken: not ours
        return False


def marked(cluster: str, pods=None) -> list[int]:
    """Processes carrying the mark of `cluster` (of one of `pods`, if given)."""
    wanted = None if pods is None else {f"{MARK}={mark(cluster, p)}".encode() for p in pods}
    prefix = f"{MARK}={cluster}/".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                variables = f.read().split(b"\0")
        except OSError:
            continue
        for v in variables:
            if v.startswith(prefix) and (wanted is None or v in wanted):
                found.append(int(entry))
                break
    return found


def reap(cluster: str, pods=None) -> int:
    """SIGKILL whatever is left of a cluster's programs (of `pods`, if given): what a node
    killed with SIGKILL could not stop. Returns how many processes were signalled."""
    count = 0
    for pid in marked(cluster, pods):
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count
