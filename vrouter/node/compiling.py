"""Compiling the fast path before a node starts: once per source into numba's cache, which
every later process (the nodes, vrouter-cni, trace) only loads.

From an empty cache this is most of a first start, and numba compiles one function at a time
per process (a global compiler lock). So a first compile is shared with a forked worker (on two
cores or more): it compiles WORKER_SHARE while this process compiles the rest, and each process
then loads the other's part from the cache. Every part is compiled with the argument types its
caller gives it (`entry_points`: the stages' from their declaration in fastpath.stages.STAGES and
a data plane's tables), so the cached entry is the one that a node links and `serve` asks for.
A stage the cluster does not need is not compiled (the policy stage without a NetworkPolicy:
forward calls it through its address in the tables, fastpath.stages.link); a node compiles it
when it first needs it.

numba's cache is not safe for two processes writing one function's entries at the same time
(it writes a function's index and its data files separately, numba/numba#10128), and the parts
share helpers: so the worker writes only its share's entries to the shared cache (functions this
process does not compile meanwhile) and every other function it compiles to a directory of its
own, removed afterwards. A worker that fails costs time, not correctness: what it did not
compile is compiled here.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback

import numba
from numba.core.registry import CPUDispatcher

from fastpath import dispatch
from fastpath.beat import housekeeping
from fastpath.io import forward_types, read_tap, recv_overlay, serve_loop, write_out
from fastpath.native import int64_types
from fastpath.stages import STAGES
from fastpath.stages.gro import coalesce
from fastpath.stages.link import stage_function, stage_types
from vrouter.model.config import Cluster, parse
from vrouter.host.underlay import OverlaySockets
from vrouter.node.datapath import Datapath
from vrouter.node.dataplane import Dataplane

# On two cores or more a first compile is shared with a forked worker, in this order: the
# worker compiles Service NAT with conntrack (about half of all the stages' compile time), one of
# forward's output parts, then serve's I/O functions and `serve` (serve calls forward through its
# address, fastpath.native, so it is compiled without it); meanwhile this process compiles the
# other stages, forward's other parts and the beat's housekeeping (serve calls it through its
# address too), the policy stage if the cluster has a NetworkPolicy (forward calls it through
# its address in the tables, fastpath.stages.link), then `forward` once the worker has its part
# of what forward calls. Both take about as long. (The worker compiles what its share calls
# itself, into its scratch cache: serve's I/O functions are its own.)
WORKER_SHARE = ("services", "_emit", "write_out", "read_tap", "recv_overlay", "serve")
FORWARD_PARTS = ("_room", "_within_budget", "_emit", "coalesce")
BESIDE_FORWARD = FORWARD_PARTS + ("housekeeping",)   # this process's share besides stages
# the linked stages (fastpath.stages.Stage.linked), compiled only for a cluster that needs them
NEEDED_BY = {"policy": lambda cluster: bool(cluster.policies)}
OPTIONAL = tuple(s.name for s in STAGES if s.linked)
assert set(NEEDED_BY) == set(OPTIONAL), "say when a cluster needs each linked stage"
PROGRESS_EVERY = 10.0   # seconds between two "still compiling" lines

_COMPILE_CLUSTER = """
cluster: {name: compile, podCIDR: 10.244.0.0/16}
nodes:
  - {name: a, underlay: 127.0.0.1, podCIDR: 10.244.1.0/24}
  - {name: b, underlay: 127.0.0.2, podCIDR: 10.244.2.0/24}
pods:
  - {name: p, node: a}
"""


@contextlib.contextmanager
def _throwaway_datapath():
    """A data path with the argument types a node has: no root, no TAPs, two loopback sockets;
    its stages not linked (compiled here instead)."""
    cluster = parse(_COMPILE_CLUSTER, "<compile>", check_host=False)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        datapath = Datapath(Dataplane(cluster, "a", link=False), {},
                            OverlaySockets(sockets[0], sockets[1:]), 4789, 0)
        try:
            yield datapath
        finally:
            datapath.stop()
    finally:
        for s in sockets:
            s.close()


def entry_points(datapath: Datapath) -> dict[str, tuple[CPUDispatcher, tuple]]:
    """What a node's data path runs, by name, with the argument types their callers give
    them: the stages, forward and its other parts, the beat's housekeeping, serve and its I/O
    functions."""
    dp, typeof, int64 = datapath.dp, numba.typeof, numba.int64
    frames, tables, counters = typeof(dp.rx), typeof(dp.tables), typeof(dp.tables.counters)
    buf, meta, out = typeof(dp.rx.buf), typeof(dp.rx.meta), typeof(dp.out)
    params, io = typeof(dp.tables.params), typeof(datapath.io)
    entries = {s.name: (stage_function(s), stage_types(s, dp.rx, dp.tables)) for s in STAGES}
    entries["forward"] = (dispatch.forward, forward_types(dp.rx, dp.tables, dp.out))
    entries["_room"] = (dispatch._room, (buf, meta, int64, out))
    entries["_within_budget"] = (dispatch._within_budget, (
        buf, meta, int64, int64, int64, params, typeof(dp.tables.budgets), counters))
    entries["_emit"] = (dispatch._emit, (buf, meta, int64, int64, params, out, counters))
    entries["coalesce"] = (coalesce, (buf, meta, out, int64, counters))
    entries["housekeeping"] = (housekeeping, int64_types(dp.tables, 0))
    entries["write_out"] = (write_out, (frames, out, io, typeof(datapath.tx), params, counters,
                                        typeof(dp.tables.ports.port_live)))
    entries["read_tap"] = (read_tap, (int64, int64, frames, io, counters))
    entries["recv_overlay"] = (recv_overlay, (int64, frames, typeof(datapath.rx), io, counters))
    entries["serve"] = (serve_loop, (frames, typeof(dp.gw), tables, out, io, typeof(datapath.tx),
                                     typeof(datapath.rx), typeof(datapath.state)))
    return entries


def _fastpath_dispatchers() -> list[CPUDispatcher]:
    """Each compiled function of the fastpath package once (one is often imported into
    several modules)."""
    found = {id(value): value for name, module in list(sys.modules.items())
             if name == "fastpath" or name.startswith("fastpath.")
             for value in vars(module).values() if isinstance(value, CPUDispatcher)}
    return list(found.values())


class _Worker:
    """A forked child that compiles `share` (names of entry_points) into the cache, everything
    else they call into `scratch`, and reports each name done on a pipe."""

    def __init__(self, entries: dict, share: tuple[str, ...], scratch: str):
        self.done: set[str] = set()
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(read)
            self._compile(entries, share, scratch, write)
        os.close(write)
        self.reports = os.fdopen(read, "r")

    @staticmethod
    def _compile(entries, share, scratch, report) -> None:
        code = 1
        try:
            mine = {id(entries[name][0]) for name in share}
            numba.config.CACHE_DIR = scratch
            for dispatcher in _fastpath_dispatchers():
                if id(dispatcher) not in mine:
                    dispatcher.enable_caching()   # re-locates its cache under CACHE_DIR
            for name in share:
                function, signature = entries[name]
                function.compile(signature)
                os.write(report, (name + "\n").encode())
            code = 0
        except BaseException:
            traceback.print_exc()   # what it did not compile is compiled in the parent
        finally:
            os._exit(code)

    def wait_for(self, names) -> None:
        """Until the worker has compiled `names`, or has ended."""
        names = set(names)
        while not self.done >= names:
            line = self.reports.readline()
            if not line:
                return
            self.done.add(line.strip())

    def end(self) -> None:
        """Kill and reap it: what it reported is in the cache already (numba writes an entry
        before compile returns), and an interrupted start does not wait for the rest."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0
        self.reports.close()


def _compile_beside(worker: _Worker, entries: dict, stages: list[str]) -> None:
    """This process's share while the worker compiles WORKER_SHARE, then `forward`."""
    for name in [n for n in stages + list(BESIDE_FORWARD) if n not in WORKER_SHARE]:
        function, signature = entries[name]
        function.compile(signature)
    worker.wait_for(n for n in WORKER_SHARE if n in stages or n in FORWARD_PARTS)
    function, signature = entries["forward"]
    function.compile(signature)
    worker.wait_for(WORKER_SHARE)   # serve, meanwhile


def needed_stages(cluster: Cluster | None) -> list[str]:
    """The stages a cluster's nodes run (every stage when it is not known)."""
    return [s.name for s in STAGES
            if not s.linked or cluster is None or NEEDED_BY[s.name](cluster)]


def compile_fast_path(parallel: bool = False, progress_since: float | None = None,
                      cluster: Cluster | None = None) -> None:
    """Compile every compiled entry point a node of `cluster` uses (or load it from numba's
    cache) on a throw-away data path. `parallel`: share the work with a forked worker (for a
    first compile, on two cores or more; it forks, so only from a single-threaded process).
    `progress_since`: print a line every PROGRESS_EVERY seconds meanwhile."""
    stages = needed_stages(cluster)
    with _throwaway_datapath() as datapath:
        parallel = (parallel and len(os.sched_getaffinity(0)) > 1
                    and threading.active_count() == 1)
        scratch = tempfile.mkdtemp(prefix="vrouter-compile-") if parallel else None
        worker = None
        entries = entry_points(datapath)
        try:
            if parallel:
                worker = _Worker(entries, WORKER_SHARE, scratch)
            with _progress(progress_since):
                if worker:
                    _compile_beside(worker, entries, stages)
                for name in (n for n in stages if n in OPTIONAL):   # linked, not in forward
                    function, signature = entries[name]
                    function.compile(signature)   # (or loaded)
                datapath.warm_up()   # serve and all it calls: the worker's share from the cache
        finally:
            if worker:
                worker.end()
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _progress(start: float | None):
    """A line every PROGRESS_EVERY seconds while the block runs (numba says nothing while it
    compiles); the thread is gone when the block ends, as `vrouter up` forks its nodes after."""
    if start is None:
        yield
        return
    done = threading.Event()

    def tick():
        while not done.wait(PROGRESS_EVERY):
            print(f"vrouter: still compiling ({time.monotonic() - start:.0f} s)", file=sys.stderr,
                  flush=True)
    ticker = threading.Thread(target=tick, name="compile-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()


def ensure_compiled(cluster: Cluster | None = None) -> None:
    """Compile what a node of `cluster` runs (of any cluster, when None) now unless this
    source's fast path is in numba's cache already (then only load it); say so, as a first
    start takes a while. A stage that only this cluster needs (the policy stage) and that no
    earlier start compiled is compiled now, without the worker."""
    from fastpath import compiled_marker
    marker = compiled_marker()
    if marker.exists():
        compile_fast_path(cluster=cluster)
        return
    print("vrouter: compiling the fast path (first start only, about 20 s)...",
          file=sys.stderr, flush=True)
    start = time.monotonic()
    compile_fast_path(parallel=True, progress_since=start, cluster=cluster)
    print(f"vrouter: fast path compiled in {time.monotonic() - start:.0f} s", file=sys.stderr,
          flush=True)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass   # a read-only install: numba could not cache either, and says so
