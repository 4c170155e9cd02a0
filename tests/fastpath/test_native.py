"""fastpath.native: a compiled call through a function's address, as serve calls forward."""
import numba
import numpy as np
import pytest

from fastpath.io import ST_FORWARD, WHY_ERROR, forward_types, serve_loop
from fastpath.native import address_of, call_at, int64_types


@numba.njit
def _weighted(values, scale, first):
    total = 0
    for k in range(first, values.shape[0]):
        total += values[k] * scale
    return total


@numba.njit
def _through(address, values, scale):
    return call_at(address, (values, np.int64(scale), np.int64(1)))


@numba.njit
def _with_a_literal(address, values):
    return call_at(address, (values, 3, np.int64(1)))


def test_a_call_through_the_address_returns_what_a_direct_call_returns():
    values = np.arange(10, dtype=np.int64)
    address = address_of(_weighted, int64_types(values, 3, 1))
    assert address > 0
    assert _through(address, values, 3) == _weighted(values, 3, 1) == 3 * sum(range(1, 10))
    assert _through(address, values, -2) == -2 * sum(range(1, 10))


def test_a_literal_argument_is_passed_as_the_int64_the_callee_was_compiled_for():
    """call_at refuses literal types, so numba types the call again without them."""
    values = np.arange(4, dtype=np.int64)
    address = address_of(_weighted, int64_types(values, 3, 1))
    assert _with_a_literal(address, values) == 3 * (1 + 2 + 3)


def test_int64_types_are_what_a_compiled_caller_passes():
    values = np.zeros(3, dtype=np.uint8)
    assert int64_types(values, 0, 7) == (numba.typeof(values), numba.int64, numba.int64)


def test_serve_without_forwards_address_returns_an_error_instead_of_jumping_to_zero(node_frames):
    frames, tables, out, io, tx, rx, state = node_frames
    state[ST_FORWARD] = 0
    assert serve_loop(frames, frames, tables, out, io, tx, rx, state) == WHY_ERROR
    assert forward_types(frames, tables, out) == (
        numba.typeof(frames), numba.int64, numba.int64, numba.int64, numba.typeof(tables),
        numba.typeof(out))


@pytest.fixture
def node_frames():
    """A throw-away node's data path structures, as vrouter.node.compiling builds them."""
    from vrouter.node.compiling import _throwaway_datapath
    with _throwaway_datapath() as datapath:
        dp = datapath.dp
        yield dp.rx, dp.tables, dp.out, datapath.io, datapath.tx, datapath.rx, datapath.state
