"""Services in the fast path: frontend lookup, Maglev backend choice, connection tracking, NAT.

Tables (built by vrouter.servicetables; conntrack, affinity and fragment state persist across
reloads):
  fe_keys / fe_vals[:, FE_*]   (address, protocol, port) -> frontend: Maglev row (-1: no
                               endpoints), affinity timeout, SNAT flag, id, what to do when empty
  maglev[row, M]               Maglev lookup table of a backend set -> backend index
  be_ip, be_port               backend addresses
  ct_keys[:, 2] / ct_vals      connection tracking: one entry per direction, keyed by the packet's
                               5-tuple as it arrives, holding the 5-tuple to rewrite it to
  aff_keys / aff_vals          ClientIP session affinity: (client, frontend) -> backend, expiry
  frag_keys / frag_vals        first fragment's translation, for the fragments that follow it

Each state table's keys and values are views of one array, an entry's key and values sharing a
cache line (see new_state_table). The tables are bounded: a key lives in one of WINDOW slots after
its hash; inserting into a full window evicts the entry that expires first (counted). Lookups
ignore expired entries, so nothing needs sweeping.
"""
import numpy as np
from numba import njit

from fastpath import hashtable
from fastpath.checksum import read16, read32, update16, update32, write16, write32
from fastpath.layout import (
    R_CT_EVICTED, R_CT_ICMP_TRANSLATED, R_CT_TRANSLATED, R_SVC_NEW_FLOWS,
)

WINDOW = 8

# frontend columns
FE_ROW = 0
FE_AFFINITY = 1     # seconds, 0 = none
FE_SNAT = 2         # 1: always SNAT to the gateway (external traffic, policy Cluster)
FE_ID = 3
FE_EMPTY = 4        # with no endpoints: NAT_REJECT (0) or NAT_DROP_NO_LOCAL (1)
FE_COLS = 5

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

# nat_stage results
NAT_PASS = 0          # not service traffic: forward unchanged
NAT_DONE = 1          # translated in place
NAT_REJECT = 2        # a frontend with no endpoints: the slow path answers RST / port unreachable
NAT_DROP_NO_LOCAL = 3 # externalTrafficPolicy Local and no endpoint on this node
NAT_DROP_NO_PORT = 4  # no free SNAT source port

SNAT_PORT_LOW = 32768
SNAT_PORT_SPAN = 28232   # 32768-60999, as Linux's default ephemeral range


@njit(cache=True, inline="always")
def _mix(a, b):
    h = np.uint64(a) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(b) + np.uint64(0x632BE59BD9B4E019) + (h << np.uint64(6)) + (h >> np.uint64(2))
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(31)
    return h


@njit(cache=True)
def wfind(keys, vals, exp_col, k0, k1, now):
    """Slot of a live entry with key (k0, k1), or -1."""
    mask = keys.shape[0] - 1
    start = np.int64(_mix(k0, k1) & np.uint64(mask))
    for d in range(WINDOW):
        j = (start + d) & mask
        if keys[j, 1] == k1 and keys[j, 0] == k0 and vals[j, exp_col] >= now:
            return j
    return -1


@njit(cache=True)
def wclaim(keys, vals, exp_col, k0, k1, now, counters, protect=-1):
    """A slot for key (k0, k1): its own, else a free or expired one, else (evicting, counted)
    the live entry that expires first; never the slot `protect`."""
    mask = keys.shape[0] - 1
    start = np.int64(_mix(k0, k1) & np.uint64(mask))
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


@njit(cache=True, inline="always")
def tuple_key(src, dst, proto, sport, dport):
    k0 = (np.uint64(src) << np.uint64(32)) | np.uint64(dst)
    k1 = (np.uint64(proto) << np.uint64(32)) | (np.uint64(sport) << np.uint64(16)) | np.uint64(dport)
    return k0, k1


@njit(cache=True)
def rewrite(buf, i, ip, new_src, new_sport, new_dst, new_dport, has_l4):
    """Set addresses (and ports when the L4 header is here), updating checksums (RFC 1624)."""
    old_src = read32(buf, i, ip + 12)
    old_dst = read32(buf, i, ip + 16)
    check = read16(buf, i, ip + 10)
    check = update32(check, old_src, new_src)
    check = update32(check, old_dst, new_dst)
    write16(buf, i, ip + 10, check)
    write32(buf, i, ip + 12, new_src)
    write32(buf, i, ip + 16, new_dst)
    if not has_l4:
        return
    proto = buf[i, ip + 9]
    l4 = ip + np.int64(buf[i, ip] & 0x0F) * 4
    off = l4 + 16 if proto == 6 else l4 + 6
    old_sport = read16(buf, i, l4)
    old_dport = read16(buf, i, l4 + 2)
    write16(buf, i, off, _l4_checksum(read16(buf, i, off), proto, old_src, new_src, old_dst,
                                      new_dst, old_sport, new_sport, old_dport, new_dport))
    write16(buf, i, l4, new_sport)
    write16(buf, i, l4 + 2, new_dport)


@njit(cache=True, inline="always")
def _l4_checksum(c, proto, old_src, new_src, old_dst, new_dst, old_sport, new_sport, old_dport,
                 new_dport):
    """A TCP or UDP checksum after its 5-tuple changed (RFC 1624; the pseudo-header holds the
    addresses). A UDP checksum of 0 means "none" and stays so."""
    if proto == 17 and c == 0:
        return c
    c = update32(update32(c, old_src, new_src), old_dst, new_dst)
    c = update16(update16(c, old_sport, new_sport), old_dport, new_dport)
    if proto == 17 and c == 0:
        c = 0xFFFF
    return c


@njit(cache=True)
def _timeout(proto, state):
    if proto == 6:
        if state & ST_CLOSED:
            return T_TCP_CLOSED
        return T_TCP_ESTABLISHED if state & ST_SEEN_REPLY else T_TCP_NEW
    return T_UDP_REPLIED if state & ST_SEEN_REPLY else T_UDP_NEW


@njit(cache=True)
def _partner(ct_keys, ct_vals, j, proto, now):
    """The other direction's entry: keyed by the reverse of the tuple this entry rewrites to."""
    k0, k1 = tuple_key(ct_vals[j, CT_DST], ct_vals[j, CT_SRC], proto,
                       ct_vals[j, CT_DPORT], ct_vals[j, CT_SPORT])
    return wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now)


@njit(cache=True)
def _track(buf, i, l4, proto, j, ct_keys, ct_vals, now):
    """Advance the connection's state with this packet and refresh both entries' expiry."""
    state = ct_vals[j, CT_STATE]
    new = state
    if state & ST_REPLY:
        new |= ST_SEEN_REPLY
    if proto == 6:
        flags = buf[i, l4 + 13]
        if flags & 0x04:
            new |= ST_CLOSED
        elif flags & 0x01:
            new |= ST_FIN
    if new == state:
        ct_vals[j, CT_EXPIRES] = now + _timeout(proto, state)
        return
    p = _partner(ct_keys, ct_vals, j, proto, now)
    shared = new & (ST_SEEN_REPLY | ST_CLOSED)
    if p >= 0:
        if new & ST_FIN and ct_vals[p, CT_STATE] & ST_FIN:
            shared |= ST_CLOSED
        ct_vals[p, CT_STATE] |= shared
        ct_vals[p, CT_EXPIRES] = now + _timeout(proto, ct_vals[p, CT_STATE])
    ct_vals[j, CT_STATE] = new | shared
    ct_vals[j, CT_EXPIRES] = now + _timeout(proto, new | shared)


@njit(cache=True)
def _choose_backend(fe, src, k0, k1, now, fe_vals, maglev, be_ip, be_port, aff_keys, aff_vals,
                    counters):
    """(backend ip, port) for a new connection: affinity first, else Maglev on the 5-tuple
    (k0, k1: the connection's conntrack key, which is that 5-tuple)."""
    affinity = fe_vals[fe, FE_AFFINITY]
    client = np.uint64(src)
    frontend = np.uint64(fe_vals[fe, FE_ID] + 1)
    if affinity > 0:
        a = wfind(aff_keys, aff_vals, AFF_EXPIRES, client, frontend, now)
        if a >= 0:
            aff_vals[a, AFF_EXPIRES] = now + affinity
            return aff_vals[a, AFF_IP], aff_vals[a, AFF_PORT]
    row = fe_vals[fe, FE_ROW]
    b = maglev[row, np.int64(_mix(k0, k1) % np.uint64(maglev.shape[1]))]
    ip, port = be_ip[b], be_port[b]
    if affinity > 0:
        a = wclaim(aff_keys, aff_vals, AFF_EXPIRES, client, frontend, now, counters)
        aff_vals[a, AFF_IP] = ip
        aff_vals[a, AFF_PORT] = port
        aff_vals[a, AFF_EXPIRES] = now + affinity
    return ip, port


@njit(cache=True)
def _snat_port(src_ip, want, b_ip, b_port, proto, now, ct_keys, ct_vals):
    """A source port on `src_ip` whose reply tuple is free: the client's own if possible."""
    for k in range(16):
        port = want if k == 0 else SNAT_PORT_LOW + np.int64((_mix(want, k) % np.uint64(SNAT_PORT_SPAN)))
        k0, k1 = tuple_key(b_ip, src_ip, proto, b_port, port)
        if wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now) < 0:
            return port
    return -1


@njit(cache=True)
def _icmp_error(buf, i, ip, now, counters, ct_keys, ct_vals):
    """Translate an ICMP error (unreachable, time exceeded, ...) about a tracked connection.

    The error quotes a packet as it was on the wire after translation, travelling the other way
    than the error. Reversing the quoted 5-tuple gives the conntrack key of a packet going the
    error's way; that entry's rewrite, applied mirrored to the quote, restores the addresses the
    receiver knows (the service address instead of the backend's, the client's instead of the
    gateway's), and the error goes to the quoted packet's original sender. An error sent by the
    endpoint itself then also comes from the service address, as the client expects."""
    end = ip + read16(buf, i, ip + 2)
    icmp = ip + np.int64(buf[i, ip] & 0x0F) * 4
    q = icmp + 8
    if q + 28 > end:
        return NAT_PASS
    kind = buf[i, icmp]
    if not (kind == 3 or kind == 4 or kind == 5 or kind == 11 or kind == 12):
        return NAT_PASS
    q_ihl = np.int64(buf[i, q] & 0x0F) * 4
    q_proto = np.int64(buf[i, q + 9])
    if (buf[i, q] >> 4) != 4 or q_ihl < 20 or q + q_ihl + 8 > end \
            or (q_proto != 6 and q_proto != 17) or (read16(buf, i, q + 6) & 0x1FFF) != 0:
        return NAT_PASS
    q_src = read32(buf, i, q + 12)
    q_dst = read32(buf, i, q + 16)
    q_l4 = q + q_ihl
    q_sport = read16(buf, i, q_l4)
    q_dport = read16(buf, i, q_l4 + 2)
    k0, k1 = tuple_key(q_dst, q_src, q_proto, q_dport, q_sport)
    j = wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now)
    if j < 0:
        return NAT_PASS
    new_src, new_sport = ct_vals[j, CT_DST], ct_vals[j, CT_DPORT]   # the quote, mirrored
    new_dst, new_dport = ct_vals[j, CT_SRC], ct_vals[j, CT_SPORT]
    icmp_check = read16(buf, i, icmp + 2)
    # the quoted IPv4 header (its checksum is part of the ICMP payload too)
    old_q_check = read16(buf, i, q + 10)
    q_check = update32(update32(old_q_check, q_src, new_src), q_dst, new_dst)
    write16(buf, i, q + 10, q_check)
    write32(buf, i, q + 12, new_src)
    write32(buf, i, q + 16, new_dst)
    icmp_check = update32(update32(icmp_check, q_src, new_src), q_dst, new_dst)
    icmp_check = update16(icmp_check, old_q_check, q_check)
    # the quoted ports, and the quoted L4 checksum when the quote reaches it
    write16(buf, i, q_l4, new_sport)
    write16(buf, i, q_l4 + 2, new_dport)
    icmp_check = update16(update16(icmp_check, q_sport, new_sport), q_dport, new_dport)
    off = q_l4 + (16 if q_proto == 6 else 6)
    if off + 2 <= end and (q_proto == 6 or read16(buf, i, off) != 0):   # quoted and in use
        old_c = read16(buf, i, off)
        c = _l4_checksum(old_c, q_proto, q_src, new_src, q_dst, new_dst, q_sport, new_sport,
                         q_dport, new_dport)
        write16(buf, i, off, c)
        icmp_check = update16(icmp_check, old_c, c)
    write16(buf, i, icmp + 2, icmp_check)
    outer_src = read32(buf, i, ip + 12)
    rewrite(buf, i, ip, new_dst if outer_src == q_dst else outer_src, 0, new_src, 0, False)
    counters[R_CT_ICMP_TRANSLATED] += 1
    return NAT_DONE


@njit(cache=True)
def nat_stage(buf, i, ip, may_open, now, gw_ip, counters, fe_keys, fe_vals, maglev, be_ip,
              be_port, ct_keys, ct_vals, aff_keys, aff_vals, frag_keys, frag_vals):
    """Translate one valid IPv4 packet if it belongs to a service connection; see NAT_*.

    `may_open`: the packet may start a new connection (it comes from a local pod or from
    outside, not from the overlay, where the sender's node has translated it already)."""
    proto = np.int64(buf[i, ip + 9])
    if proto == 1 and (read16(buf, i, ip + 6) & 0x3FFF) == 0:
        return _icmp_error(buf, i, ip, now, counters, ct_keys, ct_vals)
    if proto != 6 and proto != 17:
        return NAT_PASS
    frag = read16(buf, i, ip + 6)
    offset = frag & 0x1FFF
    more = (frag & 0x2000) != 0
    src = read32(buf, i, ip + 12)
    dst = read32(buf, i, ip + 16)
    if offset != 0:   # a later fragment: translate as its first fragment was
        ipid = read16(buf, i, ip + 4)
        k0, k1 = tuple_key(src, dst, proto, ipid, 1)
        f = wfind(frag_keys, frag_vals, FRAG_EXPIRES, k0, k1, now)
        if f < 0:
            return NAT_PASS
        rewrite(buf, i, ip, frag_vals[f, FRAG_SRC], 0, frag_vals[f, FRAG_DST], 0, False)
        counters[R_CT_TRANSLATED] += 1
        return NAT_DONE
    l4 = ip + np.int64(buf[i, ip] & 0x0F) * 4
    total = read16(buf, i, ip + 2)
    if l4 + (20 if proto == 6 else 8) > ip + total:
        return NAT_PASS
    sport = read16(buf, i, l4)
    dport = read16(buf, i, l4 + 2)
    k0, k1 = tuple_key(src, dst, proto, sport, dport)
    j = wfind(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now)
    if j >= 0 and proto == 6 and (ct_vals[j, CT_STATE] & ST_CLOSED) and (buf[i, l4 + 13] & 0x02):
        # a SYN on a closed connection's tuple starts a new connection (as Linux conntrack
        # does): forget the old one, or its reply entry would rewrite a direct connection that
        # happens to reuse the backend's 4-tuple
        p = _partner(ct_keys, ct_vals, j, proto, now)
        if p >= 0:
            ct_vals[p, CT_EXPIRES] = now - 1
        ct_vals[j, CT_EXPIRES] = now - 1
        j = -1
    if j < 0:
        if not may_open:
            return NAT_PASS
        fe = hashtable.find(fe_keys, (np.int64(dst) << 24) | (proto << 16) | dport)
        if fe < 0:
            return NAT_PASS
        if fe_vals[fe, FE_ROW] < 0:
            return NAT_DROP_NO_LOCAL if fe_vals[fe, FE_EMPTY] == 1 else NAT_REJECT
        b_ip, b_port = _choose_backend(fe, src, k0, k1, now, fe_vals, maglev, be_ip, be_port,
                                       aff_keys, aff_vals, counters)
        new_src, new_sport = src, sport
        if fe_vals[fe, FE_SNAT] == 1 or b_ip == src:   # external (policy Cluster), or hairpin
            new_src = gw_ip
            new_sport = _snat_port(gw_ip, sport, b_ip, b_port, proto, now, ct_keys, ct_vals)
            if new_sport < 0:
                return NAT_DROP_NO_PORT
        j = wclaim(ct_keys, ct_vals, CT_EXPIRES, k0, k1, now, counters)
        ct_vals[j, CT_SRC] = new_src
        ct_vals[j, CT_SPORT] = new_sport
        ct_vals[j, CT_DST] = b_ip
        ct_vals[j, CT_DPORT] = b_port
        ct_vals[j, CT_STATE] = 0
        ct_vals[j, CT_EXPIRES] = now + _timeout(proto, 0)
        r0, r1 = tuple_key(b_ip, new_src, proto, b_port, new_sport)
        r = wclaim(ct_keys, ct_vals, CT_EXPIRES, r0, r1, now, counters, j)
        ct_vals[r, CT_SRC] = dst
        ct_vals[r, CT_SPORT] = dport
        ct_vals[r, CT_DST] = src
        ct_vals[r, CT_DPORT] = sport
        ct_vals[r, CT_STATE] = ST_REPLY
        ct_vals[r, CT_EXPIRES] = now + _timeout(proto, 0)
        counters[R_SVC_NEW_FLOWS] += 1
    else:
        _track(buf, i, l4, proto, j, ct_keys, ct_vals, now)
    new_src, new_dst = ct_vals[j, CT_SRC], ct_vals[j, CT_DST]
    rewrite(buf, i, ip, new_src, ct_vals[j, CT_SPORT], new_dst, ct_vals[j, CT_DPORT], True)
    if more:   # first of several fragments: remember its translation for the rest
        f0, f1 = tuple_key(src, dst, proto, read16(buf, i, ip + 4), 1)
        f = wclaim(frag_keys, frag_vals, FRAG_EXPIRES, f0, f1, now, counters)
        frag_vals[f, FRAG_SRC] = new_src
        frag_vals[f, FRAG_DST] = new_dst
        frag_vals[f, FRAG_EXPIRES] = now + T_FRAGMENT
    counters[R_CT_TRANSLATED] += 1
    return NAT_DONE


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
