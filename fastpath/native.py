"""Calling a compiled function through its address, so that its caller is compiled without it.

numba links every compiled function a function calls into that function's own LLVM module,
then optimises and generates machine code for the whole again: `serve` (the node's loop) took
3.2 s of a first compile, most of it generating `forward` and every stage a second time, and it
could only start once `forward` was done. `serve` calls `forward` through its address instead
(once per batch of up to 64 frames, so the indirect call costs nothing measurable): the two
are compiled side by side, in two processes (vrouter.node.compiling), and `serve`'s module
holds only itself and its I/O functions. `forward` calls a stage that can be skipped the same
way, from its address in tables.code (fastpath.stages.link).

The call uses numba's own calling convention, as numba does for a first-class function's
`jit_addr`; `address_of` gives the address of a function's compiled code for a set of
argument types, and the caller must pass exactly those types (int64, never a literal).
"""
from __future__ import annotations

import numba
from numba import types
from numba.core import cgutils, errors
from numba.extending import intrinsic


@intrinsic
def call_at(typingctx, address, args):
    """call_at(address, (a, b, ...)): the int64 that the compiled function at `address` (from
    address_of) returns for these arguments."""
    if not isinstance(address, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    argtypes = tuple(args.types)
    literal = [t for t in argtypes if isinstance(t, types.Literal)]
    if literal:   # the callee was compiled for int64, and numba types the call again without
        # literals when a literal typing fails (a literal's native form may differ)
        raise errors.TypingError(f"call_at: pass np.int64(...), not the literal {literal[0]}")

    def codegen(context, builder, signature, llargs):
        at, packed = llargs
        values = cgutils.unpack_tuple(builder, packed, len(argtypes))
        fnty = context.call_conv.get_function_type(types.int64, argtypes)
        callee = builder.inttoptr(at, fnty.as_pointer())
        status, result = context.call_conv.call_function(builder, callee, types.int64,
                                                         argtypes, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return result

    return types.int64(address, args), codegen


# With NUMBA_DISABLE_JIT=1 (the fuzz targets' coverage runs) every function is plain Python:
# an "address" is then a number for the function, and call_at calls it as Python does.
_PLAIN: dict[int, object] = {}

if numba.config.DISABLE_JIT:
    def call_at(address, args):   # noqa: F811
        return _PLAIN[address](*args)


def address_of(dispatcher, argtypes: tuple) -> int:
    """The address of `dispatcher`'s compiled code for `argtypes` (numba types), compiled or
    loaded from numba's cache now."""
    if numba.config.DISABLE_JIT:
        _PLAIN.setdefault(id(dispatcher), dispatcher)
        return id(dispatcher)
    dispatcher.compile(argtypes)
    result = dispatcher.overloads[argtypes]
    address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
    if not address:
        raise RuntimeError(f"no compiled code for {dispatcher.py_func.__qualname__}{argtypes}")
    return address


def int64_types(*values) -> tuple:
    """numba's types for these values, as a compiled caller passes them (a Python int is an
    int64 there, as numba.typeof says)."""
    return tuple(numba.int64 if isinstance(v, int) else numba.typeof(v) for v in values)
