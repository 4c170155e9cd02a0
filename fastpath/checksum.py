"""Internet checksum helpers (RFC 1071 full sum, RFC 1624 incremental update)."""
import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def read16(buf, row, off):
    return (np.int64(buf[row, off]) << 8) | np.int64(buf[row, off + 1])


@njit(cache=True, inline="always")
def write16(buf, row, off, value):
    buf[row, off] = (value >> 8) & 0xFF
    buf[row, off + 1] = value & 0xFF


@njit(cache=True, inline="always")
def read32(buf, row, off):
    return (read16(buf, row, off) << 16) | read16(buf, row, off + 2)


@njit(cache=True, inline="always")
def write32(buf, row, off, value):
    write16(buf, row, off, (value >> 16) & 0xFFFF)
    write16(buf, row, off + 2, value & 0xFFFF)


@njit(cache=True, inline="always")
def read48(buf, row, off):
    return (read16(buf, row, off) << 32) | read32(buf, row, off + 2)


@njit(cache=True, inline="always")
def write48(buf, row, off, value):
    write16(buf, row, off, (value >> 32) & 0xFFFF)
    write32(buf, row, off + 2, value & 0xFFFFFFFF)


@njit(cache=True)
def ones_sum(buf, row, off, length):
    """One's-complement sum of `length` bytes (odd length padded with zero), not folded."""
    total = np.int64(0)
    end = off + (length & ~1)
    for k in range(off, end, 2):
        total += read16(buf, row, k)
    if length & 1:
        total += np.int64(buf[row, off + length - 1]) << 8
    return total


@njit(cache=True, inline="always")
def fold(total):
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@njit(cache=True)
def checksum(buf, row, off, length):
    """The Internet checksum of a byte range, ready to store (0 when the range already verifies)."""
    return (~fold(ones_sum(buf, row, off, length))) & 0xFFFF


@njit(cache=True, inline="always")
def update16(check, old, new):
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one changed 16-bit word."""
    total = ((~check) & 0xFFFF) + ((~old) & 0xFFFF) + (new & 0xFFFF)
    return (~fold(total)) & 0xFFFF


@njit(cache=True, inline="always")
def update32(check, old, new):
    check = update16(check, (old >> 16) & 0xFFFF, (new >> 16) & 0xFFFF)
    return update16(check, old & 0xFFFF, new & 0xFFFF)
