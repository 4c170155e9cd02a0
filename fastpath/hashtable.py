"""Open-addressing hash tables over parallel numpy arrays (linear probing, power-of-two size).

A table is `keys` (uint64, 0 = empty slot) plus whatever value arrays the caller keeps at the same
index. Keys are never deleted in place; the control plane rebuilds a table to drop entries.
"""
import numpy as np

from fastpath.jit import compiled, inlined

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@inlined
def slot_of(key, mask):
    h = np.uint64(key) * _GOLDEN
    return np.int64((h >> np.uint64(29)) & np.uint64(mask))


@compiled
def find(keys, key):
    """Index of `key` in the table, or -1."""
    mask = keys.shape[0] - 1
    i = slot_of(key, mask)
    k = np.uint64(key)
    for _ in range(keys.shape[0]):
        cur = keys[i]
        if cur == k:
            return i
        if cur == 0:
            return -1
        i = (i + 1) & mask
    return -1


@compiled
def find_or_claim(keys, key):
    """Index of `key`, claiming an empty slot for it if absent; -1 when the table is full."""
    mask = keys.shape[0] - 1
    i = slot_of(key, mask)
    k = np.uint64(key)
    for _ in range(keys.shape[0]):
        cur = keys[i]
        if cur == k:
            return i
        if cur == 0:
            keys[i] = k
            return i
        i = (i + 1) & mask
    return -1


def new_keys(min_entries, load=0.5):
    """A key array big enough to hold `min_entries` at the given load factor."""
    size = 16
    while size * load < min_entries:
        size *= 2
    return np.zeros(size, dtype=np.uint64)
