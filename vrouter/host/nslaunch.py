"""The launcher of a pod's program: `python3 -I -S nslaunch.py SPEC`, run by the pod's node for
each container (vrouter.host.programs), becomes the program once it is inside the pod:
  - it dies with the node (PR_SET_PDEATHSIG SIGKILL, kept across exec), so a node killed with
    SIGKILL leaves no program behind;
  - it joins the pod's network namespace (setns), and a mount namespace of its own in which the
    pod's /etc/netns/POD files (its resolv.conf) lie over /etc and /sys shows the pod's devices,
    as `ip netns exec` arranges it;
  - a UTS namespace with the pod's hostname (Kubernetes: spec.hostname, else the pod's name);
  - the container's working directory and environment; then execvpe.
A step that fails is written to the status pipe (its fd is in SPEC) as JSON and the launcher
exits 127; a program that starts closes the pipe (close-on-exec) with nothing written, which is
how the node tells "started" from "could not start". Standard library only: it runs isolated
and imports nothing of vrouter.
"""
import ctypes
import errno
import fcntl
import json
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2
NETNS_ETC = "/etc/netns"


class Failed(Exception):
    def __init__(self, step: str, err: int, detail: str = ""):
        super().__init__(step)
        self.step, self.errno, self.detail = step, err, detail


def _call(libc, step: str, result: int) -> None:
    if result != 0:
        raise Failed(step, ctypes.get_errno())


def enter(spec: dict) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    _call(libc, "prctl(PR_SET_PDEATHSIG)", libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
    if os.getppid() != spec["parent"]:   # the node went before we could tie us to it
        raise Failed("waiting for the node", errno.ESRCH, "the node has exited")
    try:
        fd = os.open(spec["netns"], os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Failed(f"opening the pod's network namespace {spec['netns']}", exc.errno) from None
    _call(libc, "setns(network namespace)", libc.setns(fd, CLONE_NEWNET))
    os.close(fd)
    _call(libc, "unshare(mount, uts)", libc.unshare(CLONE_NEWNS | CLONE_NEWUTS))
    # our mounts must not propagate back to the host's
    _call(libc, "making / a slave mount", libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None))
    etc = os.path.join(NETNS_ETC, spec.get("netns_name") or "")
    if spec.get("netns_name") and os.path.isdir(etc):
        for name in sorted(os.listdir(etc)):
            source, target = os.path.join(etc, name), os.path.join("/etc", name)
            if os.path.exists(target):
                _call(libc, f"bind-mounting {source} over {target}",
                      libc.mount(source.encode(), target.encode(), None, MS_BIND, None))
    # /sys as the pod sees it (its network devices); a failure here is not fatal
    if libc.umount2(b"/sys", MNT_DETACH) == 0:
        libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None)
    hostname = spec["hostname"].encode()
    _call(libc, "sethostname", libc.sethostname(hostname, len(hostname)))
    cwd = spec.get("cwd") or "/"   # a container without a workingDir starts in /
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise Failed(f"changing to the working directory {cwd}", exc.errno) from None


def main() -> int:
    spec = json.loads(sys.argv[1])
    status = spec["status_fd"]
    fcntl.fcntl(status, fcntl.F_SETFD, fcntl.FD_CLOEXEC)   # a successful exec closes it
    try:
        enter(spec)
        try:
            os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
        except OSError as exc:
            raise Failed(f"executing {spec['argv'][0]!r}", exc.errno) from None
    except Failed as exc:
        message = {"step": exc.step, "errno": exc.errno,
                   "error": exc.detail or os.strerror(exc.errno)}
        os.write(status, json.dumps(message).encode())
        return 127


if __name__ == "__main__":
    sys.exit(main())
