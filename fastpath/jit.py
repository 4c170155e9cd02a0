"""How the fast path's functions are compiled: one decorator per kind of function, so each
says what it is instead of repeating numba's options.

All are cached on disk (cache=True, see fastpath/__init__), compiled without numba's reference
counting (_nrt=False: the fast path allocates nothing) and without a C callback wrapper
(no_cfunc_wrapper: none is handed to C as a function pointer; numba builds one for every
function by default, 1.5 of a first compile's 64 CPU-seconds in py-spy).

- compiled: Python calls it too (the node, trace, benchmarks, tests).
- internal: only compiled code calls it, so numba builds no CPython wrapper for it either
  (CPython wrappers were 5.8 of those 64 CPU-seconds, most of them for functions Python never
  calls; both together, a fresh compile takes 10% less). A call from Python
  raises TypeError: numba would jump to the missing wrapper and crash the process;
  tests/unit/test_compiled_functions.py reads the sources for such calls.
- inlined: small helpers, inlined into their callers in numba's IR (inline="always").
- releasing_gil: `serve`, the node's loop, which runs while the node's trio thread waits.
"""
from numba import njit
from numba.core.registry import CPUDispatcher

_COMMON = dict(cache=True, _nrt=False, no_cfunc_wrapper=True)

compiled = njit(**_COMMON)
inlined = njit(**_COMMON, inline="always")
releasing_gil = njit(**_COMMON, nogil=True)


class _Internal(CPUDispatcher):
    """A dispatcher whose compiled code has no CPython wrapper: callable from compiled code
    only (numba's typing and linking see a CPUDispatcher as before)."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__qualname__} is compiled without a Python wrapper "
                        "(fastpath.jit.internal): call it from compiled code, or make it "
                        "@compiled")


def internal(function):
    dispatcher = njit(**_COMMON, no_cpython_wrapper=True)(function)
    if isinstance(dispatcher, CPUDispatcher):   # NUMBA_DISABLE_JIT=1 gives the function back
        dispatcher.__class__ = _Internal
    return dispatcher
