"""Connection tracking: one record per connection, found by two keys.

As Linux's nf_conntrack keeps one `nf_conn` with an original and a reply tuple, a connection here is
one row of `recs` (both tuples, protocol state, expiry, the assured bit, packets and bytes each way)
and two rows of the slot table `slots`, keyed by the 5-tuple a packet arrives with: the original
direction's (the first packet's tuple) and the reply direction's (the reverse of the tuple the first
packet leaves with, after NAT). Both keys lead to the record, so the two directions share state,
expiry and eviction, and freeing a connection removes both keys at once.

Tables (the Conntrack group, built by vrouter.node.tables; they persist across reloads):
  slots[S, SLOT_COLS]   uint64: key (2 words) and a reference (record << 1 | direction, plus 1;
                        0 = empty). A key lives in one of WINDOW slots after its hash.
  recs[N, REC_COLS]     int64: the connections (C_*); C_PROTO == 0 marks a free record
  free[N], stats        every record number once: free[:n] the free ones (a stack, n =
                        stats[CTS_FREE]), free[n:] those in use (each knows its place, C_POS),
                        so the sweep visits only those; and the counts status shows
  aff_keys / aff_vals   ClientIP session affinity: (client, Service port id) -> backend, expiry
  frag_keys / frag_vals a first fragment's translation, for the fragments that follow it

Bounds (Linux's early_drop): a new connection needs a free record and a free slot in each key's
window. Expired connections found there are freed on the way; otherwise the unassured connection
(one that has not yet seen traffic both ways, for TCP a completed handshake) that expires first is
evicted (`ct_evicted`), or, when its keys' windows hold none, one of the next EVICTION_SCAN
records a clock hand passes; when every candidate is assured the new connection is refused
(`ct_full_refused`) and its packet dropped. A sweep (sweep(), once a second) frees expired records
that no lookup met, looking only at those in use.

TCP follows Linux's state machine (nf_conntrack_proto_tcp's transition table, reduced to what a
router in the middle needs): per-state timeouts, and a RST changes state only if its sequence
number lies within the receiver's window (tracked per direction from what each side sent and
advertised); a RST outside it is dropped (`drop_tcp_rst_out_of_window`), so a blind reset cannot
end a connection.
"""
import numpy as np

from fastpath.checksum import read16, read32
from fastpath.groups import CACHE_LINE
from fastpath.jit import compiled, inlined, internal
from fastpath.reasons import R_CT_EVICTED

WINDOW = 8
EVICTION_SCAN = 64     # records looked at for an unassured one when a full table's windows had none

# --- slot table ----------------------------------------------------------------------------------
SL_K0 = 0
SL_K1 = 1
SL_REF = 2
SLOT_COLS = 4          # 32 bytes: two slots per cache line

# --- record columns ------------------------------------------------------------------------------
C_O_SRC = 0            # the original direction's tuple, as its first packet arrived
C_O_DST = 1
C_O_PORTS = 2          # sport << 16 | dport (ICMP echo: identifier << 16, see echo_ports)
C_R_SRC = 3            # the reply direction's tuple, as replies arrive (the translated tuple,
C_R_DST = 4            # reversed)
C_R_PORTS = 5
C_EXPIRES = 6          # second after which the connection is gone
C_STATE = 7            # TCP: TCP_* state; others 0
C_FLAGS = 8            # F_*
C_PROTO = 9            # 1, 6, 17; 0: a free record
C_SLOT_O = 10          # its two slots
C_SLOT_R = 11
C_CREATED = 12         # second it was opened
C_FRONTEND = 13        # the Service port id (FE_ID) that opened it, -1: none
C_PKTS_O = 14          # packets and bytes (IPv4 total length) per direction: + 2 * direction
C_BYTES_O = 15
C_PKTS_R = 16
C_BYTES_R = 17
C_END_O = 18           # TCP: per direction the sequence number after the last byte sent...
C_END_R = 19
C_WIN_O = 20           # ...and the largest window it advertised (scaled; 0: nothing sent yet)
C_WIN_R = 21
C_SCALE = 22           # TCP window scales: original | reply << 8 | SCALE_BOTH once both SYNs
                       # offered one (RFC 7323); -1: none (windows taken as they are)
C_POS = 23             # its place in `free` while in use (free[stats[CTS_FREE]:])
REC_COLS = 24          # 192 bytes: three cache lines

SCALE_BOTH = 1 << 16

# C_FLAGS bits
F_ASSURED = 1          # traffic both ways (TCP: the handshake completed): evicted last
F_SEEN_REPLY = 2
F_PLAIN = 4            # followed for NetworkPolicy only: nothing to rewrite
F_MASQUERADE = 8       # a pod's connection to the outside network, SNATed to the node

# stats columns
CTS_FREE = 0           # records on the free stack
CTS_HIGH_WATER = 1     # most records ever in use at once
CTS_HAND = 2           # where _victim_anywhere looks next
STATS_COLS = 4

# --- TCP ---------------------------------------------------------------------------------------
TCP_NONE = 0
TCP_SYN_SENT = 1
TCP_SYN_RECV = 2
TCP_ESTABLISHED = 3
TCP_FIN_WAIT = 4
TCP_CLOSE_WAIT = 5
TCP_LAST_ACK = 6
TCP_TIME_WAIT = 7
TCP_CLOSE = 8
TCP_SYN_SENT2 = 9      # simultaneous open
TCP_INVALID = 10       # the packet does not fit the state: state unchanged
TCP_IGNORE = 11        # the packet may be fine but says nothing: state unchanged
TCP_STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                   "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")

# the segment's kind, as Linux's get_conntrack_index sorts it
K_SYN, K_SYNACK, K_FIN, K_ACK, K_RST, K_NONE = 0, 1, 2, 3, 4, 5

_S, _R, _E, _FW, _CW, _LA, _TW, _CL, _S2 = 1, 2, 3, 4, 5, 6, 7, 8, 9
_IV, _IG = TCP_INVALID, TCP_IGNORE
# next state by [direction][segment kind][state]; states NONE..SYN_SENT2 across
TCP_NEXT = np.array([
    [  # original direction (the side that opened)
        [_S, _S, _IG, _IG, _IG, _IG, _IG, _S, _S, _S2],          # SYN
        [_IV, _IV, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _R],       # SYN+ACK
        [_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV],      # FIN
        [_E, _IV, _E, _E, _CW, _CW, _TW, _TW, _CL, _IV],         # ACK (from NONE: picked up)
        [_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL],      # RST
        [_IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV],      # none of these
    ],
    [  # reply direction
        [_IV, _S2, _IV, _IV, _IV, _IV, _IV, _S, _IV, _S2],
        [_IV, _R, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _R],
        [_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV],
        [_IV, _IG, _R, _E, _CW, _CW, _TW, _TW, _CL, _IG],
        [_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL],
        [_IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV],
    ],
], dtype=np.int64)

# seconds, by TCP state: Linux's defaults, but ESTABLISHED as kube-proxy sets it (24 h)
T_TCP_SYN_SENT = 120
T_TCP_SYN_RECV = 60
T_TCP_ESTABLISHED = 86400
T_TCP_FIN_WAIT = 120
T_TCP_CLOSE_WAIT = 60
T_TCP_LAST_ACK = 30
T_TCP_TIME_WAIT = 120
T_TCP_CLOSE = 10
T_TCP_UNASSURED = 300  # established but no reply seen yet (picked up mid-stream): Linux's UNACK
TCP_TIMEOUTS = np.array([T_TCP_SYN_SENT, T_TCP_SYN_SENT, T_TCP_SYN_RECV, T_TCP_ESTABLISHED,
                         T_TCP_FIN_WAIT, T_TCP_CLOSE_WAIT, T_TCP_LAST_ACK, T_TCP_TIME_WAIT,
                         T_TCP_CLOSE, T_TCP_SYN_SENT], dtype=np.int64)
T_UDP_UNREPLIED = 30
T_UDP_REPLIED = 120
T_ICMP = 30
T_FRAGMENT = 5

# track() results
PASS = 0
DROP_RST = 1           # a RST outside the receiver's window
ENDED = 2              # passed, and it moved a TCP connection into TIME_WAIT or CLOSE (the
                       # flow log reports the connection's end: fastpath.flows)

AFF_IP = 0
AFF_PORT = 1
AFF_EXPIRES = 2

FRAG_SRC = 0
FRAG_DST = 1
FRAG_EXPIRES = 2
FRAG_NAT_TAG = 1       # fragment-table key tags: a translated first fragment's...
FRAG_POLICY_TAG = 2    # ...and one NetworkPolicy allowed


@internal
def mix(a, b):
    h = np.uint64(a) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(b) + np.uint64(0x632BE59BD9B4E019) + (h << np.uint64(6)) + (h >> np.uint64(2))
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(31)
    return h


@compiled
def tuple_key(src, dst, proto, sport, dport):
    k0 = (np.uint64(src) << np.uint64(32)) | np.uint64(dst)
    k1 = (np.uint64(proto) << np.uint64(32)) | (np.uint64(sport) << np.uint64(16)) | np.uint64(dport)
    return k0, k1


@inlined
def echo_ports(kind, ident):
    """ICMP echo as conntrack sees it: the identifier is the request's source "port" and the
    reply's destination "port", so a reply's tuple is the reverse of its request's."""
    if kind == 8:
        return ident, 0
    return 0, ident


# --- the connection table ------------------------------------------------------------------------

@inlined
def _record_of(ref):
    return np.int64((ref - np.uint64(1)) >> np.uint64(1))


@compiled
def release(ct, rec):
    """Free connection `rec`: both its keys, then the record itself."""
    recs, slots = ct.recs, ct.slots
    if recs[rec, C_PROTO] == 0:
        return
    flows.released(ct, rec)   # the flow log: the end of a connection that started
    for col in (C_SLOT_O, C_SLOT_R):
        j = recs[rec, col]
        if j >= 0 and slots[j, SL_REF] != 0 and _record_of(slots[j, SL_REF]) == rec:
            slots[j, SL_K0] = 0
            slots[j, SL_K1] = 0
            slots[j, SL_REF] = 0
    recs[rec, C_PROTO] = 0
    recs[rec, C_EXPIRES] = 0
    # the first record in use takes its place in `free`, it takes the first free place
    n = ct.stats[CTS_FREE]
    other = ct.free[n]
    ct.free[recs[rec, C_POS]] = other
    recs[other, C_POS] = recs[rec, C_POS]
    ct.free[n] = rec
    recs[rec, C_POS] = n
    ct.stats[CTS_FREE] = n + 1


@compiled
def lookup(ct, k0, k1, now):
    """(record, direction) of the live connection a packet with key (k0, k1) belongs to, or
    (-1, 0). A connection found expired is freed on the way."""
    slots = ct.slots
    mask = slots.shape[0] - 1
    start = np.int64(mix(k0, k1) & np.uint64(mask))
    for d in range(WINDOW):
        j = (start + d) & mask
        ref = slots[j, SL_REF]
        if ref != 0 and slots[j, SL_K1] == k1 and slots[j, SL_K0] == k0:
            rec = _record_of(ref)
            if ct.recs[rec, C_EXPIRES] < now:
                release(ct, rec)
                return -1, 0
            return rec, np.int64((ref - np.uint64(1)) & np.uint64(1))
    return -1, 0


@inlined
def _evictable(recs, rec, now):
    return (recs[rec, C_FLAGS] & F_ASSURED) == 0 and recs[rec, C_EXPIRES] >= now


@internal
def _victim_slot(ct, k0, k1, now, protect):
    """The slot, in key (k0, k1)'s window, of the unassured connection there that expires first
    (never record `protect`), or -1."""
    slots, recs = ct.slots, ct.recs
    mask = slots.shape[0] - 1
    start = np.int64(mix(k0, k1) & np.uint64(mask))
    best, best_rec = -1, -1
    for d in range(WINDOW):
        j = (start + d) & mask
        if slots[j, SL_REF] == 0:
            continue
        rec = _record_of(slots[j, SL_REF])
        if rec != protect and _evictable(recs, rec, now) \
                and (best < 0 or recs[rec, C_EXPIRES] < recs[best_rec, C_EXPIRES]):
            best, best_rec = j, rec
    return best


@internal
def _reclaim(ct, k0, k1, now):
    """Free an expired connection found in key (k0, k1)'s window; whether there was one."""
    slots, recs = ct.slots, ct.recs
    mask = slots.shape[0] - 1
    start = np.int64(mix(k0, k1) & np.uint64(mask))
    for d in range(WINDOW):
        j = (start + d) & mask
        if slots[j, SL_REF] != 0 and recs[_record_of(slots[j, SL_REF]), C_EXPIRES] < now:
            release(ct, _record_of(slots[j, SL_REF]))
            return True
    return False


@internal
def _victim_anywhere(ct, now):
    """An unassured (or expired) connection among the next EVICTION_SCAN records after the
    last place looked (a clock hand over the table): the windows of a new connection's keys
    may hold nobody at all. -1 if all of those are assured."""
    recs = ct.recs
    n = recs.shape[0]
    hand = ct.stats[CTS_HAND]
    for d in range(min(EVICTION_SCAN, n)):
        rec = (hand + d) % n
        if recs[rec, C_PROTO] != 0 and (recs[rec, C_EXPIRES] < now or _evictable(recs, rec, now)):
            ct.stats[CTS_HAND] = (rec + 1) % n
            return rec
    ct.stats[CTS_HAND] = (hand + EVICTION_SCAN) % n
    return -1


@compiled
def _room(ct, k0, k1, now, protect, counters):
    """A free slot in key (k0, k1)'s window: an empty one, one an expired connection held, or
    one an evicted unassured connection held; -1 if all hold live assured connections."""
    slots, recs = ct.slots, ct.recs
    mask = slots.shape[0] - 1
    start = np.int64(mix(k0, k1) & np.uint64(mask))
    for d in range(WINDOW):
        j = (start + d) & mask
        if slots[j, SL_REF] == 0:
            return j
        rec = _record_of(slots[j, SL_REF])
        if recs[rec, C_EXPIRES] < now and rec != protect:
            release(ct, rec)
            return j
    j = _victim_slot(ct, k0, k1, now, protect)
    if j >= 0:
        release(ct, _record_of(slots[j, SL_REF]))
        counters[R_CT_EVICTED] += 1
    return j


@internal
def _put_key(ct, j, k0, k1, rec, direction):
    ct.slots[j, SL_K0] = k0
    ct.slots[j, SL_K1] = k1
    ct.slots[j, SL_REF] = np.uint64(((rec << 1) | direction) + 1)
    ct.recs[rec, C_SLOT_O + direction] = j


@internal
def open_connection(ct, src, dst, proto, sport, dport, new_src, new_sport, new_dst, new_dport,
                    flags, frontend, now, counters):
    """Track a new connection whose first packet arrives as (src, sport > dst, dport) and leaves
    as (new_src, new_sport > new_dst, new_dport); replies arrive as the reverse of the latter.
    Returns its record, or -1 when the table has no room (the caller's verdict:
    ct_full_refused)."""
    k0, k1 = tuple_key(src, dst, proto, sport, dport)
    r0, r1 = tuple_key(new_dst, new_src, proto, new_dport, new_sport)
    old, _ = lookup(ct, r0, r1, now)
    if old >= 0:   # a live connection has this reply tuple (a reused tuple): the new one wins
        release(ct, old)
        counters[R_CT_EVICTED] += 1
    if ct.stats[CTS_FREE] == 0 and not _reclaim(ct, k0, k1, now) and not _reclaim(ct, r0, r1, now):
        # every record in use, none expired within reach: early drop, else refuse
        j = _victim_slot(ct, k0, k1, now, np.int64(-1))
        if j < 0:
            j = _victim_slot(ct, r0, r1, now, np.int64(-1))
        victim = _record_of(ct.slots[j, SL_REF]) if j >= 0 else _victim_anywhere(ct, now)
        if victim < 0:
            return -1
        release(ct, victim)
        counters[R_CT_EVICTED] += 1
    n = ct.stats[CTS_FREE] - 1
    rec = ct.free[n]
    ct.stats[CTS_FREE] = n
    recs = ct.recs
    recs[rec, :] = 0
    recs[rec, C_POS] = n
    recs[rec, C_PROTO] = proto
    recs[rec, C_EXPIRES] = now + 1   # live while its keys are placed
    recs[rec, C_SLOT_O] = -1
    recs[rec, C_SLOT_R] = -1
    j = _room(ct, k0, k1, now, rec, counters)
    if j >= 0:
        _put_key(ct, j, k0, k1, rec, np.int64(0))
        j = _room(ct, r0, r1, now, rec, counters)
    if j < 0:
        release(ct, rec)
        return -1
    _put_key(ct, j, r0, r1, rec, np.int64(1))
    recs[rec, C_O_SRC] = src
    recs[rec, C_O_DST] = dst
    recs[rec, C_O_PORTS] = (sport << 16) | dport
    recs[rec, C_R_SRC] = new_dst
    recs[rec, C_R_DST] = new_src
    recs[rec, C_R_PORTS] = (new_dport << 16) | new_sport
    recs[rec, C_FLAGS] = flags
    recs[rec, C_CREATED] = now
    recs[rec, C_FRONTEND] = frontend
    recs[rec, C_SCALE] = -1
    recs[rec, C_EXPIRES] = now + (T_TCP_SYN_SENT if proto == 6 else
                                  T_UDP_UNREPLIED if proto == 17 else T_ICMP)
    in_use = recs.shape[0] - ct.stats[CTS_FREE]
    if in_use > ct.stats[CTS_HIGH_WATER]:
        ct.stats[CTS_HIGH_WATER] = in_use
    return rec


@compiled
def target(recs, rec, direction):
    """The tuple a packet of `direction` leaves with: (src, sport, dst, dport). The original
    direction leaves as the reply tuple reversed, the reply direction as the original reversed."""
    if direction == 0:
        ports = recs[rec, C_R_PORTS]
        return recs[rec, C_R_DST], ports & 0xFFFF, recs[rec, C_R_SRC], ports >> 16
    ports = recs[rec, C_O_PORTS]
    return recs[rec, C_O_DST], ports & 0xFFFF, recs[rec, C_O_SRC], ports >> 16


@compiled
def sweep(ct, now):
    """Free every expired connection (once a second, on the node's beat); returns how many were
    freed. It visits the records in use only: free[stats[CTS_FREE]:]."""
    recs, free = ct.recs, ct.free
    freed = 0
    for i in range(ct.stats[CTS_FREE], free.shape[0]):
        rec = free[i]
        if recs[rec, C_PROTO] != 0 and recs[rec, C_EXPIRES] < now:
            # its place i now holds a record in use this loop has seen (free[n] before)
            release(ct, rec)
            freed += 1
    return freed


# --- state -----------------------------------------------------------------------------------------

@inlined
def _seq_diff(a, b):
    """a - b as a signed 32-bit distance (sequence numbers wrap)."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= (1 << 31) else d


@internal
def _window_scale(buf, row, l4, doff):
    """The window scale option of a SYN (RFC 7323), or -1 if it has none."""
    k = l4 + 20
    end = l4 + doff
    while k < end:
        kind = buf[row, k]
        if kind == 0:
            break
        if kind == 1:
            k += 1
            continue
        if k + 1 >= end:
            break
        size = np.int64(buf[row, k + 1])
        if size < 2:
            break
        if kind == 3 and size == 3 and k + 2 < end:
            return min(np.int64(buf[row, k + 2]), 14)
        k += size
    return -1


@internal
def _tcp(recs, rec, direction, buf, row, ip, l4, total):
    """Advance a TCP connection with this segment; returns PASS or DROP_RST."""
    tflags = buf[row, l4 + 13]
    syn, ack, fin, rst = tflags & 0x02, tflags & 0x10, tflags & 0x01, tflags & 0x04
    if rst:
        kind = K_RST
    elif syn:
        kind = K_SYNACK if ack else K_SYN
    elif fin:
        kind = K_FIN
    elif ack:
        kind = K_ACK
    else:
        kind = K_NONE
    doff = np.int64(buf[row, l4 + 12] >> 4) * 4
    seq = read32(buf, row, l4 + 4)
    end = (seq + max(total - (l4 - ip) - doff, 0) + (1 if syn else 0) + (1 if fin else 0)) \
        & 0xFFFFFFFF
    win = read16(buf, row, l4 + 14)
    mine, theirs = C_END_O + direction, C_END_O + 1 - direction
    my_win, their_win = C_WIN_O + direction, C_WIN_O + 1 - direction
    old = recs[rec, C_STATE]
    if kind == K_RST:
        if recs[rec, my_win] == 0:
            # it never sent before: only a reset answering what the other side sent is real
            valid = ack != 0 and read32(buf, row, l4 + 8) == recs[rec, theirs]
        else:
            valid = abs(_seq_diff(seq, recs[rec, mine])) <= max(recs[rec, their_win], 1)
        if not valid:
            return DROP_RST
    # what each side sent and advertised: the receiver's window bounds a reset's sequence number
    if syn:
        scale = _window_scale(buf, row, l4, doff)
        if direction == 0:
            recs[rec, C_SCALE] = -1 if scale < 0 else scale
        elif recs[rec, C_SCALE] >= 0 and scale >= 0:
            recs[rec, C_SCALE] |= (scale << 8) | SCALE_BOTH
        else:
            recs[rec, C_SCALE] = -1
        recs[rec, mine] = end
        recs[rec, my_win] = max(win, 1)
    else:
        if recs[rec, my_win] == 0 or _seq_diff(end, recs[rec, mine]) > 0:
            recs[rec, mine] = end
        shift = 0
        if recs[rec, C_SCALE] > 0 and recs[rec, C_SCALE] & SCALE_BOTH:   # RFC 7323: both offered
            shift = (recs[rec, C_SCALE] >> (8 * direction)) & 0xFF
        recs[rec, my_win] = max(recs[rec, my_win], win << shift, 1)
    new = TCP_NEXT[direction, kind, old]
    if new == TCP_INVALID or new == TCP_IGNORE:
        return PASS
    recs[rec, C_STATE] = new
    if new == TCP_ESTABLISHED and (old == TCP_SYN_RECV or recs[rec, C_FLAGS] & F_SEEN_REPLY):
        recs[rec, C_FLAGS] |= F_ASSURED
    if (new == TCP_TIME_WAIT or new == TCP_CLOSE) and old != TCP_TIME_WAIT and old != TCP_CLOSE:
        return ENDED
    return PASS


@inlined
def timeout_of(recs, rec):
    proto = recs[rec, C_PROTO]
    if proto == 6:
        state = recs[rec, C_STATE]
        if state == TCP_ESTABLISHED and not recs[rec, C_FLAGS] & F_ASSURED:
            return T_TCP_UNASSURED
        return TCP_TIMEOUTS[state]
    if proto == 17 or proto == 132:   # SCTP, followed for NetworkPolicy only: as UDP
        return T_UDP_REPLIED if recs[rec, C_FLAGS] & F_SEEN_REPLY else T_UDP_UNREPLIED
    return T_ICMP


@internal
def track(ct, rec, direction, buf, row, ip, now):
    """Account this packet to its connection, advance the state, refresh the expiry. Returns
    PASS, ENDED (passed, and it closed a TCP connection), or DROP_RST for a TCP reset outside
    the receiver's window (nothing changed)."""
    recs = ct.recs
    proto = recs[rec, C_PROTO]
    total = read16(buf, row, ip + 2)
    result = PASS
    if proto == 6:
        l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
        result = _tcp(recs, rec, direction, buf, row, ip, l4, total)
        if result == DROP_RST:
            return DROP_RST
    recs[rec, C_PKTS_O + 2 * direction] += 1
    recs[rec, C_BYTES_O + 2 * direction] += total
    if direction == 1 and not recs[rec, C_FLAGS] & F_SEEN_REPLY:
        recs[rec, C_FLAGS] |= F_SEEN_REPLY
        if proto == 17 or proto == 132:
            recs[rec, C_FLAGS] |= F_ASSURED   # UDP: an answer makes it a real exchange
    recs[rec, C_EXPIRES] = now + timeout_of(recs, rec)
    return result


@inlined
def restarts(recs, rec, direction, buf, row, l4):
    """Is this segment the start of a new connection on the tuple of a TCP connection that has
    closed (TIME_WAIT, CLOSE)? A SYN from the side that opened it (Linux conntrack then starts
    afresh), or a SYN from the other side (a direct connection reusing the backend's 4-tuple,
    whose SYN-ACK the old reply key would otherwise rewrite). The old connection must go."""
    state = recs[rec, C_STATE]
    if recs[rec, C_PROTO] != 6 or not (state == TCP_TIME_WAIT or state == TCP_CLOSE):
        return False
    flags = buf[row, l4 + 13]
    if direction == 0:
        return (flags & 0x12) == 0x02
    return (flags & 0x02) != 0


@inlined
def opens(buf, row, l4, proto):
    """May this packet start a connection? UDP always; TCP a SYN, or (picked up mid-stream, as
    Linux's nf_conntrack_tcp_loose) a segment with ACK; never a lone RST or FIN."""
    if proto != 6:
        return True
    flags = buf[row, l4 + 13]
    if flags & 0x04:
        return False
    if flags & 0x02:
        return (flags & 0x11) == 0   # SYN without ACK or FIN
    return (flags & 0x10) != 0 and (flags & 0x01) == 0



# --- small windowed tables: affinity, fragments ------------------------------------------------

@internal
def wfind(keys, vals, exp_col, k0, k1, now):
    """Slot of a live entry with key (k0, k1), or -1."""
    mask = keys.shape[0] - 1
    start = np.int64(mix(k0, k1) & np.uint64(mask))
    for d in range(WINDOW):
        j = (start + d) & mask
        if keys[j, 1] == k1 and keys[j, 0] == k0 and vals[j, exp_col] >= now:
            return j
    return -1


@internal
def wclaim(keys, vals, exp_col, k0, k1, now, counters, evicted):
    """A slot for key (k0, k1): its own, else a free or expired one, else (evicting, counted in
    counters[evicted]) the live entry that expires first."""
    mask = keys.shape[0] - 1
    start = np.int64(mix(k0, k1) & np.uint64(mask))
    free = -1
    oldest = -1
    for d in range(WINDOW):
        j = (start + d) & mask
        if keys[j, 1] == k1 and keys[j, 0] == k0:
            return j
        if keys[j, 1] == 0 or vals[j, exp_col] < now:
            if free < 0:
                free = j
        elif oldest < 0 or vals[j, exp_col] < vals[oldest, exp_col]:
            oldest = j
    if free < 0:
        free = oldest
        counters[evicted] += 1
    keys[free, 0] = k0
    keys[free, 1] = k1
    return free


# --- building and reading (control plane, numpy) ------------------------------------------------

def aligned_rows(rows: int, cols: int, dtype) -> np.ndarray:
    """A zeroed [rows, cols] array whose rows are padded to whole 64-byte cache lines and start
    on one."""
    words = CACHE_LINE // 8
    width = -(-cols // words) * words if cols > words // 2 else cols
    raw = np.zeros(rows * width + words, dtype=dtype)
    skip = (-raw.ctypes.data % CACHE_LINE) // raw.itemsize
    return raw[skip:skip + rows * width].reshape(rows, width)


def new_state_table(entries: int, cols: int):
    """Keys and values of a windowed state table with at least `entries` slots, an entry's key
    (2 words) and values side by side in whole cache lines."""
    size = 64
    while size < entries:
        size *= 2
    rows = aligned_rows(size, 2 + cols, np.int64)
    return rows[:, :2].view(np.uint64), rows[:, 2:2 + cols]


def connection_arrays(max_entries: int):
    """(slots, recs, free, stats) for at most `max_entries` connections: the slot table keeps
    its two keys per connection at most half full, so windows rarely overflow."""
    size = 64
    while size < 4 * max_entries:
        size *= 2
    slots = aligned_rows(size, SLOT_COLS, np.uint64)
    recs = aligned_rows(max_entries, REC_COLS, np.int64)
    free = np.arange(max_entries - 1, -1, -1, dtype=np.int64)   # record 0 is taken first
    stats = np.zeros(STATS_COLS, dtype=np.int64)
    stats[CTS_FREE] = max_entries
    return slots, recs, free, stats


def live_mask(recs, now) -> np.ndarray:
    return (recs[:, C_PROTO] != 0) & (recs[:, C_EXPIRES] >= now)


def flush_udp(ct, removed, now) -> int:
    """Free the UDP connections (and affinity entries) of Service ports to backends that left
    them: `removed` is a set of (Service port id, backend ip, backend port). Returns how many
    connections were freed. Control plane: numpy finds them, release frees them."""
    if not removed:
        return 0
    recs = ct.recs
    backend_keys = np.array(sorted({(ip << 16) | port for _, ip, port in removed}), dtype=np.int64)
    backend = (recs[:, C_R_SRC] << 16) | (recs[:, C_R_PORTS] >> 16)
    hit = live_mask(recs, now) & (recs[:, C_PROTO] == 17) & np.isin(backend, backend_keys)
    freed = 0
    for rec in np.nonzero(hit)[0].tolist():
        if (int(recs[rec, C_FRONTEND]), int(recs[rec, C_R_SRC]),
                int(recs[rec, C_R_PORTS]) >> 16) in removed:
            release(ct, rec)
            freed += 1
    aff_keys, aff_vals = ct.aff_keys, ct.aff_vals
    for j in np.nonzero(aff_keys[:, 1] != 0)[0].tolist():
        if (int(aff_keys[j, 1]) - 1, int(aff_vals[j, AFF_IP]), int(aff_vals[j, AFF_PORT])) \
                in removed:
            aff_keys[j] = 0
    return freed


def live_entries(keys, vals, exp_col, now) -> int:
    """How many entries of a windowed table are live at second `now` (control plane, numpy)."""
    return int(np.count_nonzero((keys[:, 1] != 0) & (vals[:, exp_col] >= now)))


# The flow log logs a connection's end where its record is freed (release); it reads records with
# this module's columns, so it is imported last, once they are all defined.
from fastpath import flows  # noqa: E402
