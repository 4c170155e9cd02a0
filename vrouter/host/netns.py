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
import fcntl
import functools
import os
import stat

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703   # _IO(0xb7, 0x3): which kind of namespace an nsfs file is (Linux >= 4.11)
NETNS_DIR = "/run/netns"


class NotANamespace(ValueError):
    """A path that is not a network namespace (a plain file, a directory, another kind)."""


def identity(path: str) -> tuple[int, int]:
    """The (device, inode) that names the network namespace at `path` (a /run/netns bind
    mount or /proc/PID/ns/net): two paths of one namespace have the same. FileNotFoundError
    when nothing is there, PermissionError, NotANamespace when it is something else. Only a
    regular file is opened (a FIFO would block, a device could act on being opened)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotANamespace(f"{path} is not a network namespace (not a namespace file)")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        raise NotANamespace(f"{path} is not a network namespace (a plain file)") from None
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        raise NotANamespace(f"{path} is a namespace, but not a network namespace")
    return st.st_dev, st.st_ino


def own_identity() -> tuple[int, int]:
    """The network namespace this process runs in."""
    return identity("/proc/self/ns/net")


def _netns_dir_propagation(pid: str) -> dict[str, str]:
    """The optional fields ("shared": id, "master": id) of /run/netns in pid's mountinfo."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return netns_dir_propagation(f.read())


def netns_dir_propagation(mountinfo: str) -> dict[str, str]:
    """The optional fields of the /run/netns mount in `mountinfo` (proc(5)'s format) that its
    paths resolve to: where several are stacked there (each `ip netns add` that finds /run/netns
    no mount point of its own bind-mounts it once more), the one on top."""
    mounts: dict[str, tuple[str, dict[str, str]]] = {}   # mount id -> (parent id, fields)
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[4] == NETNS_DIR and "-" in fields:
            tags = fields[6:fields.index("-")]
            mounts[fields[0]] = (fields[1], dict(t.split(":", 1) for t in tags if ":" in t))
    parents = {parent for parent, _ in mounts.values()}
    on_top = [tags for mount, (_, tags) in mounts.items() if mount not in parents]
    return on_top[-1] if on_top else {}


def _candidates():
    """Ancestors first (usually the shell that ran `ip netns exec`), then every process."""
    pid = os.getppid()
    while pid > 1:
        yield str(pid)
        pid = _parent_pid(pid)
    yield from (entry for entry in os.listdir("/proc") if entry.isdigit())


def _parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return 0


@functools.lru_cache(maxsize=1)
def publishing_mount_ns() -> tuple[int, int] | None:
    """Fds of the mount namespace whose /run/netns ours is a slave of and of that process's
    root directory (a chroot's, when the caller runs in one), else None.

    `ip netns exec` turns our /run/netns into a slave ("master:N") of the caller's shared one
    ("shared:N"); we look for a process (preferably an ancestor) that still sees the shared one.
    The fd is kept open for the life of the process, so the namespace stays reachable for
    cleanup even after that process has exited.
    """
    try:
        master = _netns_dir_propagation("self").get("master")
    except OSError:
        return None
    if master is None:
        return None
    for pid in _candidates():
        try:
            if _netns_dir_propagation(pid).get("shared") == master:
                return (os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC),
                        os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except (OSError, ValueError):
            continue   # gone meanwhile, or not ours to read
    return None


def _in_mount_ns(fds: tuple[int, int] | None, action, *args) -> None:
    """Run action(*args) in the mount namespace and root `fds` (a forked helper), or here when
    None. setns puts the helper at the namespace's own root: it then enters the caller's root
    again, or inside a chroot its namespaces would be made at the host's /run/netns."""
    if fds is None:
        action(*args)
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the helper: single-threaded, as setns(CLONE_NEWNS) requires
        os.close(read_end)
        code = 0
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fds[0], CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns to the caller's mount namespace failed")
            os.fchdir(fds[1])
            os.chroot(".")
            os.chdir("/")
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


@contextlib.contextmanager
def entered(path: str):
    """This thread inside the network namespace at `path` for the block (setns changes only
    the calling thread, so the data-path thread is not disturbed)."""
    pr_netns.pushns(path)
    try:
        yield
    finally:
        pr_netns.popns()


def route_socket(path: str) -> IPRoute:
    """An rtnetlink socket (pyroute2's IPRoute) in the network namespace at `path`: made by
    this thread from in there, and a socket stays in the namespace it was made in.
    IPRoute(netns=...) forks a helper process for it instead: 12-20 ms in a node's process,
    against 1-3 ms, at every pod attached and every CNI CHECK."""
    with entered(path):
        return IPRoute()


def create(name: str) -> None:
    _in_mount_ns(publishing_mount_ns(), pr_netns.create, name)


def remove(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _in_mount_ns(publishing_mount_ns(), _remove_if_present, name)


def _remove_if_present(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        pr_netns.remove(name)
