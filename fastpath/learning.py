"""Learning tables: what the node learns from traffic (the MAC table, outside neighbours), bounded.

A table is `keys` (uint64, 0 = empty) and `vals` (int64 rows: L_VALUE, L_STATIC, L_SEEN). A key
lives in one of WINDOW slots after its hash, so a lookup or a miss costs at most WINDOW probes
however full the table is. Static entries (a pod's own MAC, the nodes and the outside host) never
age and are never replaced; a learned entry is valid for `age` seconds after it was last seen and
its slot is reused after that (and freed by `expire`, on the node's beat). Learning can be capped
per owner (the MAC table: per pod port), so one pod cannot fill the table for all the others;
what is not learned is counted, and the frame is still forwarded (as unknown unicast, flooded).
"""
import numpy as np

from fastpath.hashtable import slot_of
from fastpath.jit import compiled, inlined

WINDOW = 8
L_VALUE = 0      # the MAC table: the port; neighbours: the MAC
L_STATIC = 1
L_SEEN = 2
L_OWNER = 3      # whom it was learned from (an index into the per-owner counts)
L_COLS = 4

# learn() results
LEARNED = 0
TABLE_FULL = 1   # every slot of the key's window holds a valid entry
OWNER_FULL = 2   # the owner has learned `limit` keys already


@inlined
def _valid(vals, j, now, age):
    return vals[j, L_STATIC] == 1 or now - vals[j, L_SEEN] <= age


@compiled
def find(keys, vals, key, now, age):
    """Slot of a valid entry for `key`, or -1."""
    mask = keys.shape[0] - 1
    start = slot_of(key, mask)
    k = np.uint64(key)
    for d in range(WINDOW):
        j = (start + d) & mask
        if keys[j] == k:
            return j if _valid(vals, j, now, age) else -1
    return -1


@compiled
def learn(keys, vals, key, value, now, age, owned, owner, limit):
    """Remember key -> value, seen now, learned from `owner` (an index into `owned`: how many
    learned entries each owner holds, recounted by `expire`). Static entries stay as they are.
    Returns LEARNED, TABLE_FULL or OWNER_FULL (then nothing is remembered for the key)."""
    mask = keys.shape[0] - 1
    start = slot_of(key, mask)
    k = np.uint64(key)
    free = -1
    for d in range(WINDOW):
        j = (start + d) & mask
        if keys[j] == k:
            if vals[j, L_STATIC] == 1:
                return LEARNED
            if vals[j, L_OWNER] != owner:   # it moved (a MAC to another port)
                owned[vals[j, L_OWNER]] -= 1
                if owned[owner] >= limit:
                    keys[j] = 0
                    return OWNER_FULL
                owned[owner] += 1
                vals[j, L_OWNER] = owner
            vals[j, L_VALUE] = value
            vals[j, L_SEEN] = now
            return LEARNED
        if free < 0 and (keys[j] == 0 or not _valid(vals, j, now, age)):
            free = j
    if free < 0:
        return TABLE_FULL
    if owned[owner] >= limit:
        return OWNER_FULL
    if keys[free] != 0:   # reuse an aged-out entry
        owned[vals[free, L_OWNER]] -= 1
    keys[free] = k
    vals[free, L_VALUE] = value
    vals[free, L_STATIC] = 0
    vals[free, L_SEEN] = now
    vals[free, L_OWNER] = owner
    owned[owner] += 1
    return LEARNED


@compiled
def place_static(keys, vals, key, value):
    """A static entry (built by the control plane); False if its window is full of them."""
    mask = keys.shape[0] - 1
    start = slot_of(key, mask)
    k = np.uint64(key)
    for d in range(WINDOW):
        j = (start + d) & mask
        if keys[j] == 0 or keys[j] == k or vals[j, L_STATIC] == 0:
            keys[j] = k
            vals[j, L_VALUE] = value
            vals[j, L_STATIC] = 1
            vals[j, L_SEEN] = 0
            vals[j, L_OWNER] = 0
            return True
    return False


@compiled
def expire(keys, vals, owned, now, age):
    """Free learned entries that aged out and recount what each owner holds (once a second,
    on the node's beat). Returns how many were freed."""
    owned[:] = 0
    freed = 0
    for j in range(keys.shape[0]):
        if keys[j] == 0 or vals[j, L_STATIC] != 0:
            continue
        if now - vals[j, L_SEEN] > age:
            keys[j] = 0
            freed += 1
        elif 0 <= vals[j, L_OWNER] < owned.shape[0]:
            owned[vals[j, L_OWNER]] += 1
    return freed


def new_table(entries: int):
    size = 64
    while size < entries:
        size *= 2
    return np.zeros(size, dtype=np.uint64), np.zeros((size, L_COLS), dtype=np.int64)
