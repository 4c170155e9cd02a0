"""Node processes forked from the launcher, so that they share what every node loads.

Each node needs the interpreter, numba and LLVM, the compiled fast path, scapy and the rest of
vrouter: over 100 MiB that would be the same in every node. `vrouter up` loads all of it once
(`warm`), freezes the objects it made out of the garbage collector's reach (`gc.freeze`: a
collection in a child would otherwise write to every object's header and so copy its page), and
forks each node from there: the pages stay shared, copy-on-write, until a node writes to them.
A node then costs what is its own (its tables, its buffers, what it allocates), which is what
its proportional set size (PSS) shows. A forked node also runs exactly the launcher's modules.

The launcher is single-threaded and runs no trio loop when it forks (checked), as fork requires.
`ForkedNode` has the part of subprocess.Popen's interface that the launcher uses.
"""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

POLL = 0.02   # seconds between two looks at a node that is asked to stop


class ForkedNode:
    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:   # reaped elsewhere: it is gone, how is unknown
                self.returncode = 1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"node pid {self.pid}", timeout)
            time.sleep(POLL)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def warm() -> None:
    """Load what a node loads beside the compiled fast path (call after ensure_compiled, which
    has loaded that into this process), then keep the garbage collector off those objects."""
    # the node's modules, scapy's layers the slow path uses among them; not scapy.all, whose
    # other ~100 layers nothing here dissects (0.8 s of every start, and memory in every node)
    import vrouter.node.process  # noqa: F401
    gc.collect()
    gc.freeze()


def fork_node(argv: list[str], title: str) -> ForkedNode:
    """A child that runs the CLI with `argv` (`run CONFIG --node N ...`) and exits with its
    code; `title` is what ps and pgrep show for it."""
    if threading.active_count() != 1:
        raise RuntimeError("forking the nodes needs a single-threaded launcher")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return ForkedNode(pid)
    code = 1
    try:
        # the launcher's handlers raise into the launcher's loop: a node makes its own
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _set_title(title)
        from vrouter.ops.cli import main
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)   # never the launcher's cleanup


def _set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:   # ps shows the launcher's command line then; nothing else differs
        return
    setproctitle.setproctitle(title)
