"""Connection tracking state: bounded hash tables of (key, values) rows, and the TCP/UDP state
machine of a tracked connection.

Tables (built by vrouter.node.tables; they persist across reloads):
  ct_keys[:, 2] / ct_vals   one entry per direction of a connection, keyed by the packet's 5-tuple
                            as it arrives, holding the 5-tuple to rewrite it to, expiry and state
  aff_keys / aff_vals       ClientIP session affinity: (client, frontend) -> backend, expiry
  frag_keys / frag_vals     a first fragment's translation, for the fragments that follow it

Each table's keys and values are views of one array, an entry's key and values sharing a cache
line (see new_state_table). The tables are bounded: a key lives in one of WINDOW slots after its
hash; inserting into a full window evicts the entry that expires first (counted). Lookups ignore
expired entries, so nothing needs sweeping.
"""
import numpy as np
from numba import njit

from fastpath.reasons import R_CT_EVICTED

WINDOW = 8

# conntrack value columns: the 5-tuple to rewrite to, expiry, state
CT_SRC = 0
CT_SPORT = 1
CT_DST = 2
CT_DPORT = 3
CT_EXPIRES = 4
CT_STATE = 5
CT_COLS = 6

ST_REPLY = 1        # this entry is the reply direction
ST_SEEN_REPLY = 2   # the connection has seen traffic both ways
ST_FIN = 4          # this direction sent FIN
ST_CLOSED = 8       # RST, or FIN both ways: expire soon
ST_PLAIN = 16       # followed for NetworkPolicy only: nothing to rewrite (values = the key)

T_TCP_NEW = 60
T_TCP_ESTABLISHED = 86400
T_TCP_CLOSED = 10
T_UDP_NEW = 30
T_UDP_REPLIED = 180
T_FRAGMENT = 5

AFF_IP = 0
AFF_PORT = 1
AFF_EXPIRES = 2

FRAG_SRC = 0
FRAG_DST = 1
FRAG_EXPIRES = 2


@njit(cache=True, inline="always", _nrt=False)
def mix(a, b):
    h = np.uint64(a) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(b) + np.uint64(0x632BE59BD9B4E019) + (h << np.uint64(6)) + (h >> np.uint64(2))
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(31)
    return h


@njit(cache=True, _nrt=False)
def wfind(keys, vals, exp_col, k0, k1, now):
    """Slot of a live entry with key (k0, k1), or -1."""
    mask = keys.shape[0] - 1
    start = np.int64(mix(k0, k1) & np.uint64(mask))
    for d in range(WINDOW):
        j = (start + d) & mask
        if keys[j, 1] == k1 and keys[j, 0] == k0 and vals[j, exp_col] >= now:
            return j
    return -1


@njit(cache=True, _nrt=False)
def wclaim(keys, vals, exp_col, k0, k1, now, counters, protect=-1):
    """A slot for key (k0, k1): its own, else a free or expired one, else (evicting, counted)
    the live entry that expires first; never the slot `protect`."""
    mask = keys.shape[0] - 1
    start = np.int64(mix(k0, k1) & np.uint64(mask))
    free = -1
    oldest = -1
    for d in range(WINDOW):
        j = (start + d) & mask
        if keys[j, 1] == k1 and keys[j, 0] == k0:
            return j
        if j == protect:
            continue
        if keys[j, 1] == 0 or vals[j, exp_col] < now:
            if free < 0:
                free = j
        elif oldest < 0 or vals[j, exp_col] < vals[oldest, exp_col]:
            oldest = j
    if free < 0:
        free = oldest
        counters[R_CT_EVICTED] += 1
    keys[free, 0] = k0
    keys[free, 1] = k1
    return free


@njit(cache=True, inline="always", _nrt=False)
def tuple_key(src, dst, proto, sport, dport):
    k0 = (np.uint64(src) << np.uint64(32)) | np.uint64(dst)
    k1 = (np.uint64(proto) << np.uint64(32)) | (np.uint64(sport) << np.uint64(16)) | np.uint64(dport)
    return k0, k1


@njit(cache=True, inline="always", _nrt=False)
def echo_ports(kind, ident):
    """ICMP echo as conntrack sees it: the identifier is the request's source "port" and the
    reply's destination "port", so a reply's tuple is the reverse of its request's."""
    if kind == 8:
        return ident, 0
    return 0, ident


@njit(cache=True, _nrt=False)
def open_pair(ct_keys, ct_vals, src, dst, proto, sport, dport, new_src, new_sport, new_dst,
              new_dport, flags, now, counters):
    """Track a new connection: the entry of its first packet's tuple (rewritten to the new
    tuple), and the reply direction's (keyed by the new tuple reversed, rewritten back).
    Returns the first entry's slot."""
    k0, k1 = tuple_key(src, dst, proto, sport, dport)
    j = wclaim(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now, counters)
    ct_vals[j, CT_SRC] = new_src
    ct_vals[j, CT_SPORT] = new_sport
    ct_vals[j, CT_DST] = new_dst
    ct_vals[j, CT_DPORT] = new_dport
    ct_vals[j, CT_STATE] = flags
    ct_vals[j, CT_EXPIRES] = now + timeout_of(proto, 0)
    r0, r1 = tuple_key(new_dst, new_src, proto, new_dport, new_sport)
    r = wclaim(ct_keys, ct_vals, CT_EXPIRES, r0, r1, now, counters, j)
    ct_vals[r, CT_SRC] = dst
    ct_vals[r, CT_SPORT] = dport
    ct_vals[r, CT_DST] = src
    ct_vals[r, CT_DPORT] = sport
    ct_vals[r, CT_STATE] = ST_REPLY | flags
    ct_vals[r, CT_EXPIRES] = now + timeout_of(proto, 0)
    return j


@njit(cache=True, _nrt=False)
def forget_pair(ct_keys, ct_vals, j, proto, now):
    """Expire a connection's two entries (its first packet was refused after all)."""
    p = partner(ct_keys, ct_vals, j, proto, now)
    if p >= 0:
        ct_vals[p, CT_EXPIRES] = now - 1
    ct_vals[j, CT_EXPIRES] = now - 1


@njit(cache=True, _nrt=False)
def timeout_of(proto, state):
    if proto == 6:
        if state & ST_CLOSED:
            return T_TCP_CLOSED
        return T_TCP_ESTABLISHED if state & ST_SEEN_REPLY else T_TCP_NEW
    return T_UDP_REPLIED if state & ST_SEEN_REPLY else T_UDP_NEW


@njit(cache=True, _nrt=False)
def partner(ct_keys, ct_vals, j, proto, now):
    """The other direction's entry: keyed by the reverse of the tuple this entry rewrites to."""
    k0, k1 = tuple_key(ct_vals[j, CT_DST], ct_vals[j, CT_SRC], proto,
                       ct_vals[j, CT_DPORT], ct_vals[j, CT_SPORT])
    return wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now)


@njit(cache=True, _nrt=False)
def track(buf, row, l4, proto, j, ct_keys, ct_vals, now):
    """Advance the connection's state with this packet and refresh both entries' expiry."""
    state = ct_vals[j, CT_STATE]
    new = state
    if state & ST_REPLY:
        new |= ST_SEEN_REPLY
    if proto == 6:
        flags = buf[row, l4 + 13]
        if flags & 0x04:
            new |= ST_CLOSED
        elif flags & 0x01:
            new |= ST_FIN
    if new == state:
        ct_vals[j, CT_EXPIRES] = now + timeout_of(proto, state)
        return
    p = partner(ct_keys, ct_vals, j, proto, now)
    shared = new & (ST_SEEN_REPLY | ST_CLOSED)
    if p >= 0:
        if new & ST_FIN and ct_vals[p, CT_STATE] & ST_FIN:
            shared |= ST_CLOSED
        ct_vals[p, CT_STATE] |= shared
        ct_vals[p, CT_EXPIRES] = now + timeout_of(proto, ct_vals[p, CT_STATE])
    ct_vals[j, CT_STATE] = new | shared
    ct_vals[j, CT_EXPIRES] = now + timeout_of(proto, new | shared)


CACHE_LINE = 64


def new_state_table(entries: int, cols: int):
    """Keys and values of a windowed state table with at least `entries` slots.

    Both are views into one array whose rows hold an entry's key (2 words) and its values side
    by side, padded to whole 64-byte cache lines and aligned to one: a lookup that finds its key
    has its values in the same cache line (conntrack: 2 + 6 words, exactly one line)."""
    size = 64
    while size < entries:
        size *= 2
    words = CACHE_LINE // 8
    width = -(-(2 + cols) // words) * words
    raw = np.zeros(size * width + words, dtype=np.int64)
    skip = (-raw.ctypes.data % CACHE_LINE) // 8
    rows = raw[skip:skip + size * width].reshape(size, width)
    return rows[:, :2].view(np.uint64), rows[:, 2:2 + cols]


def copy_state_table(keys, vals):
    """A copy laid out as new_state_table lays it out (the compiled code's types stay the same)."""
    new_keys, new_vals = new_state_table(keys.shape[0], vals.shape[1])
    new_keys[:] = keys
    new_vals[:] = vals
    return new_keys, new_vals


def flush_backends(ct_keys, ct_vals, aff_keys, aff_vals, removed) -> int:
    """Forget UDP conntrack entries (both directions) and affinity entries of removed backends
    (a set of (ip, port)); returns the number of UDP connections flushed. Control plane, numpy."""
    if not removed:
        return 0
    gone = np.array([(ip << 16) | port for ip, port in removed], dtype=np.int64)
    live = ct_keys[:, 1] != 0
    udp = ((ct_keys[:, 1] >> np.uint64(32)) & np.uint64(0xFF)) == 17
    reply = (ct_vals[:, CT_STATE] & ST_REPLY) != 0
    # original direction: rewritten *to* the backend; reply direction: keyed *from* it
    to_backend = (ct_vals[:, CT_DST] << 16) | ct_vals[:, CT_DPORT]
    from_backend = (((ct_keys[:, 0] >> np.uint64(32)).astype(np.int64)) << 16) | \
        ((ct_keys[:, 1] >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64)
    hit = live & udp & np.where(reply, np.isin(from_backend, gone), np.isin(to_backend, gone))
    ct_keys[hit] = 0
    aff = (aff_keys[:, 1] != 0) & np.isin((aff_vals[:, AFF_IP] << 16) | aff_vals[:, AFF_PORT], gone)
    aff_keys[aff] = 0
    return int(np.count_nonzero(hit & ~reply))


def live_entries(keys, vals, exp_col, now) -> int:
    """How many entries of a state table are live at second `now` (control plane, numpy)."""
    return int(np.count_nonzero((keys[:, 1] != 0) & (vals[:, exp_col] >= now)))
