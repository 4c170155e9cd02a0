"""Named network namespaces (/run/netns/NAME) that the whole machine sees, wherever vrouter runs.

`ip netns exec NS cmd` runs cmd in a private mount namespace that is a *slave* of the caller's. A
namespace bind-mounted under /run/netns from in there would be visible to vrouter only: `ip netns
exec POD ping ...` from a shell would fail with "Invalid argument". So when our mount namespace is
not our caller's, we create and remove pod namespaces from the caller's one (a forked helper joins
it with setns); its mounts propagate down to us, never the other way.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os

from pyroute2 import netns as pr_netns

CLONE_NEWNS = 0x00020000


def _mount_ns_inode(pid: str) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def _parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return 0


@functools.lru_cache(maxsize=1)
def publishing_mount_ns() -> int | None:
    """An fd of the nearest ancestor's mount namespace when it differs from ours, else None.

    The fd is kept open for the life of the process, so the namespace stays reachable for cleanup
    even after that ancestor (say the shell that ran `ip netns exec`) has exited.
    """
    ours = _mount_ns_inode("self")
    pid = os.getppid()
    while pid > 1:
        try:
            if _mount_ns_inode(str(pid)) != ours:
                return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            pid = _parent_pid(pid)
        except OSError:
            return None
    return None


def _in_mount_ns(fd: int | None, action, *args) -> None:
    """Run action(*args) in the mount namespace `fd` (a forked helper), or here when fd is None."""
    if fd is None:
        action(*args)
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the helper: single-threaded, as setns(CLONE_NEWNS) requires
        os.close(read_end)
        code = 0
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns to the caller's mount namespace failed")
            action(*args)
        except BaseException as exc:   # report anything to the parent, never unwind its stack
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode()[:4000])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        problem = pipe.read().decode()
    os.waitpid(pid, 0)
    if problem:
        raise OSError(f"{action.__name__}{args}: {problem}")


def create(name: str) -> None:
    _in_mount_ns(publishing_mount_ns(), pr_netns.create, name)


def remove(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _in_mount_ns(publishing_mount_ns(), _remove_if_present, name)


def _remove_if_present(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        pr_netns.remove(name)
