"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table of one backend set.

Each backend walks its own permutation of the M slots (offset + j * skip mod M, M prime) and the
backends take turns claiming their next free slot, so every backend owns about M/N slots and
removing one backend moves little more than its own slots.
"""
import numpy as np
from numba import njit


# not fastpath.jit's: it allocates (next_j), so it needs numba's reference counting
@njit(cache=True, no_cfunc_wrapper=True)
def populate(offsets, skips, row):
    """Fill `row` (length M) with backend indices 0..N-1; all -1 when N is 0."""
    size = row.shape[0]
    n = offsets.shape[0]
    row[:] = -1
    if n == 0:
        return
    next_j = np.zeros(n, dtype=np.int64)
    filled = 0
    while True:
        for b in range(n):
            c = (offsets[b] + next_j[b] * skips[b]) % size
            while row[c] >= 0:
                next_j[b] += 1
                c = (offsets[b] + next_j[b] * skips[b]) % size
            row[c] = b
            next_j[b] += 1
            filled += 1
            if filled == size:
                return
