"""Linking the stages that can be skipped into a node's tables: the address of such a stage's
compiled code goes into tables.code once the tables need it, and `forward` calls it there
(fastpath.stages.run, through fastpath.native.call_at).

So `forward` is compiled without it, and a stage that no table needs is not compiled at all: the
policy stage waits for a NetworkPolicy that selects one of the node's pods (its `run_if` field
set), then it is linked (vrouter.node.dataplane). The stages every frame may run are called by
name and compiled into `forward` (LLVM inlines them there; through an address each cost 5-10%
more time per frame, and forward's compile was no shorter).

A stage is compiled, or loaded from numba's cache, for exactly the argument types run_stage
calls it with (its declaration in fastpath.stages.STAGES, the tables' groups). A compile here
writes numba's cache, which two processes must not do for one function at once
(numba/numba#10128): a first policy applied to 32 running nodes makes one of them compile while
the others wait on a file lock, then load.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
from pathlib import Path

import numba
import numpy as np
from numba.core.registry import CPUDispatcher

from fastpath.native import address_of
from fastpath.stages import SCALARS, STAGE_NAMES, STAGES, Stage


def stage_function(stage: Stage) -> CPUDispatcher:
    module, name = stage.function.split(".")
    return getattr(importlib.import_module("fastpath.stages." + module), name)


def stage_types(stage: Stage, frames, tables) -> tuple:
    """The argument types run_stage calls `stage` with: (buf, meta, i), then its declared
    arguments, from the frames and tables it runs on."""
    types = [numba.typeof(frames.buf), numba.typeof(frames.meta), numba.int64]
    for arg in stage.args:
        if arg not in SCALARS and not hasattr(tables, arg):
            raise ValueError(f"stage {stage.name}: no table group {arg!r}")
        types.append(numba.int64 if arg == "now" else numba.typeof(getattr(tables, arg)))
    return tuple(types)


def needed(stage: Stage, tables) -> bool:
    """Is `stage` linked, and do these tables need it (its run_if field is not 0)?"""
    if not stage.linked:
        return False
    group, field = stage.run_if.split(".")
    return bool(getattr(getattr(tables, group), field)[0])


def link(tables, frames, names=None) -> list[str]:
    """Put the compiled code of every linked stage these tables need (or of `names`) into
    tables.code, compiling it now if numba's cache lacks it; returns the names whose code
    changed. Every call derives the argument types again, as a rebuilt group of other types
    than before would need other code (a lookup while it is compiled in this process)."""
    newly = []
    for index, stage in enumerate(STAGES):
        wanted = stage.name in names if names is not None else needed(stage, tables)
        if not wanted:
            continue
        function, types = stage_function(stage), stage_types(stage, frames, tables)
        if numba.config.DISABLE_JIT:   # plain Python (fastpath.native)
            address = address_of(function, types)
        else:
            address = _linked(stage, function, types)
        if tables.code[index] != address:
            tables.code[index] = address
            newly.append(stage.name)
    return newly


def _linked(stage: Stage, function: CPUDispatcher, types: tuple) -> int:
    """The address of `stage`'s code for `types`, compiled under the lock if it is neither in
    this process nor in numba's cache."""
    if not _loads(function, types):
        with _compile_lock():
            function.compile(types)   # or loads what another process compiled meanwhile
    returned = function.overloads[types].signature.return_type
    if numba.types.unliteral(returned) != numba.int64:   # call_at's convention
        raise TypeError(f"stage {stage.name} returns {returned}, not int64 (DONE, NEXT or "
                        "BRANCH)")
    return address_of(function, types)


def new_code() -> np.ndarray:
    """tables.code before linking: no stage has compiled code yet."""
    return np.zeros(len(STAGE_NAMES), dtype=np.int64)


def _loads(function: CPUDispatcher, types: tuple) -> bool:
    """Is it compiled in this process already, or in numba's cache (then it is loaded now, with
    no lock: numba replaces a cache file whole, so a reader never sees half of one)?"""
    if types in function.overloads:
        return True
    try:
        cached = function._cache.load_overload(types, function.targetctx) is not None
    except Exception:   # an entry numba cannot use: compiled again, under the lock
        return False
    if cached:
        function.compile(types)   # registers what the cache holds (loaded a second time)
    return cached


@contextlib.contextmanager
def _compile_lock():
    path = Path(numba.config.CACHE_DIR) / "compile.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:   # a read-only install: numba cannot write its cache either
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
