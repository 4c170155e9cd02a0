"""The flow log: a bounded ring of connection events, as Hubble's ring buffer holds flows.

An event is written when a connection starts (its first packet got a delivering verdict), when
one ends (a TCP FIN or RST moved it into TIME_WAIT or CLOSE, or its record is freed: timed out,
evicted, flushed), and when a packet is refused (a NetworkPolicy, a Service without endpoints,
spoofing, no route, a full conntrack table: the verdicts of WATCH_DROP and WATCH_REJECT).
Events come from the conntrack record (fastpath.conntrack: both tuples, the Service port, packets
and bytes each way), so the flow log does nothing on the packets of an established connection:
the dispatch loop tests M_FLOW and one row of `watch` per frame, and conntrack reports a TCP
close where its state machine makes it.

The ring (the Flows group, built by vrouter.node.tables; held by the Conntrack group, whose
records' ends are logged where they are freed):
  events[N, EV_COLS]   int64: the last N events, oldest overwritten (counted in state[FS_LOST])
  state[FS_COLS]       head (events ever written), tail (the first one not yet read), lost, the
                       fast path's clock (seconds, and the batch's monotonic ns)
  watch[COUNTER_COUNT] per verdict: K_DROP / K_REJECT if a frame given it is logged, else 0
N = 0 turns the flow log off. The node drains the ring between batches (vrouter.node.flowlog:
names resolved from the live model there, never here).
"""
import numpy as np

# module objects, not names: conntrack imports this module (its records' ends are logged where
# they are freed), and the policy stage imports conntrack
from fastpath import conntrack
from fastpath.checksum import read16, read32
from fastpath.jit import compiled, inlined, internal
from fastpath.stages import policy as policy_stage
from fastpath.layout import (
    ACT_DROP, ETH_LEN, ETH_P_IP, FLOW_ENDED, FLOW_NEW, M_CT_SLOT, M_FLOW, M_IN_PORT, M_LEN,
    M_OUT, M_ROW, M_START,
)
from fastpath.reasons import COUNTER_COUNT, COUNTER_NAMES, R_DROP_POLICY_EGRESS, R_DROP_POLICY_INGRESS

# --- event columns -------------------------------------------------------------------------------
EV_TIME_NS = 0       # the batch's monotonic clock (ns; whole seconds when the I/O edge gave none)
EV_KIND = 1          # K_*
EV_REASON = 2        # the verdict's counter (R_*); for K_END: END_*
EV_PROTO = 3
EV_SRC = 4           # the connection's original tuple (as its first packet came), or the
EV_DST = 5           # refused packet's
EV_SPORT = 6         # (ICMP echo: the identifier)
EV_DPORT = 7
EV_TO_SRC = 8        # the tuple it leaves with: after Service DNAT (the backend) and SNAT
EV_TO_SPORT = 9      # (masquerade, hairpin, external traffic)
EV_TO_DST = 10
EV_TO_DPORT = 11
EV_FRONTEND = 12     # the Service port id (FE_ID), -1: none
EV_TCP_FLAGS = 13    # the packet's TCP flags, -1: no packet or not TCP
EV_IN_PORT = 14      # where the packet came in (M_IN_PORT)
EV_OUT = 15          # the verdict's port or peer (M_OUT)
EV_REPLY = 16        # 1: the packet went the reply way; -1: no packet (a record freed)
EV_PKTS_O = 17       # the connection's packets and bytes, each way
EV_BYTES_O = 18
EV_PKTS_R = 19
EV_BYTES_R = 20
EV_CREATED = 21      # the second it opened (the fast path's clock)
EV_CT_FLAGS = 22     # its conntrack flags (F_*), -1: no connection record
EV_STATE = 23        # its TCP state (TCP_*)
EV_POLICY_DIR = 24   # a policy drop: DIR_INGRESS / DIR_EGRESS
EV_POLICIES = 25     # how many policies isolate the pod that way...
EV_POLICY = 26       # ...and the first MAX_POLICIES of them (policytables' policy index)
MAX_POLICIES = 4
EV_COLS = 32         # 256 bytes: four cache lines

# kinds
K_START = 1
K_END = 2
K_DROP = 3
K_REJECT = 4         # refused with an answer: TCP RST or an ICMP error
KIND_NAMES = {K_START: "start", K_END: "end", K_DROP: "drop", K_REJECT: "reject"}

# why a connection ended (EV_REASON of K_END)
END_FIN = 1
END_RST = 2
END_TIMEOUT = 3
END_EVICTED = 4      # made room for another (early drop, a reused tuple) or flushed by a reload
END_NAMES = {END_FIN: "closed", END_RST: "reset", END_TIMEOUT: "timeout", END_EVICTED: "evicted"}

DIR_INGRESS = 1
DIR_EGRESS = 2

# state columns
FS_HEAD = 0
FS_TAIL = 1
FS_LOST = 2
FS_NOW = 3           # the fast path's clock (s): forward() sets it, and the node before a sweep
FS_CLOCK_NS = 4      # the monotonic ns of the batch being forwarded (the I/O edge sets it)
FS_COLS = 8

# the verdicts whose frames are logged whatever conntrack knew of them
WATCH_DROP = ("drop_policy_ingress", "drop_policy_egress", "drop_service_no_local_endpoint",
              "drop_service_no_snat_port", "ct_full_refused", "drop_spoofed_mac",
              "drop_spoofed_ip", "drop_overlay_spoofed_source", "drop_martian",
              "drop_dhcp_server", "drop_overlay_peer_down")
WATCH_REJECT = ("slow_service_reject", "slow_no_route", "slow_host_unreachable",
                "slow_ttl_exceeded")

F_FLOW_STARTED = 1 << 8   # conntrack record flags (C_FLAGS) the flow log owns: its start...
F_FLOW_ENDED = 1 << 9     # ...and its end are logged


def new_ring(events: int):
    """(events, state, watch) of a ring of at least `events` events (a power of two; 0: the
    flow log is off)."""
    size = 1 << max(events - 1, 0).bit_length() if events > 0 else 0
    watch = np.zeros(COUNTER_COUNT, dtype=np.int64)
    for name in WATCH_DROP:
        watch[COUNTER_NAMES.index(name)] = K_DROP
    for name in WATCH_REJECT:
        watch[COUNTER_NAMES.index(name)] = K_REJECT
    return (np.zeros((size, EV_COLS), dtype=np.int64), np.zeros(FS_COLS, dtype=np.int64),
            watch)


# --- writing (compiled) --------------------------------------------------------------------------

@compiled
def _claim(fl, kind, reason):
    """The row of a new event (the oldest overwritten and counted lost when the ring is full),
    with its time, kind and reason set and the rest zero; -1 when the flow log is off."""
    events, st = fl.events, fl.state
    n = events.shape[0]
    if n == 0:
        return -1
    head = st[FS_HEAD]
    if head - st[FS_TAIL] >= n:   # the reader is behind: the oldest unread event is lost
        st[FS_TAIL] = head - n + 1
        st[FS_LOST] += 1
    st[FS_HEAD] = head + 1
    r = head & (n - 1)   # n is a power of two
    events[r, :] = 0
    t = st[FS_CLOCK_NS]
    events[r, EV_TIME_NS] = t if t // 1_000_000_000 == st[FS_NOW] else st[FS_NOW] * 1_000_000_000
    events[r, EV_KIND] = kind
    events[r, EV_REASON] = reason
    events[r, EV_TCP_FLAGS] = -1
    events[r, EV_CT_FLAGS] = -1
    events[r, EV_FRONTEND] = -1
    events[r, EV_REPLY] = -1
    return r


@internal
def _from_record(events, r, recs, rec):
    """The connection's tuples, Service port, counts and state into event row r."""
    events[r, EV_PROTO] = recs[rec, conntrack.C_PROTO]   # 0 once freed: the caller knows it
    events[r, EV_SRC] = recs[rec, conntrack.C_O_SRC]
    events[r, EV_DST] = recs[rec, conntrack.C_O_DST]
    events[r, EV_SPORT] = recs[rec, conntrack.C_O_PORTS] >> 16
    events[r, EV_DPORT] = recs[rec, conntrack.C_O_PORTS] & 0xFFFF
    to_src, to_sport, to_dst, to_dport = conntrack.target(recs, rec, 0)
    events[r, EV_TO_SRC] = to_src
    events[r, EV_TO_SPORT] = to_sport
    events[r, EV_TO_DST] = to_dst
    events[r, EV_TO_DPORT] = to_dport
    events[r, EV_FRONTEND] = recs[rec, conntrack.C_FRONTEND]
    events[r, EV_PKTS_O] = recs[rec, conntrack.C_PKTS_O]
    events[r, EV_BYTES_O] = recs[rec, conntrack.C_BYTES_O]
    events[r, EV_PKTS_R] = recs[rec, conntrack.C_PKTS_R]
    events[r, EV_BYTES_R] = recs[rec, conntrack.C_BYTES_R]
    events[r, EV_CREATED] = recs[rec, conntrack.C_CREATED]
    events[r, EV_CT_FLAGS] = recs[rec, conntrack.C_FLAGS]
    events[r, EV_STATE] = recs[rec, conntrack.C_STATE]


@internal
def _from_packet(events, r, buf, meta, i, with_tuple):
    """What the frame says: where it came and went, its TCP flags, and (with_tuple) its IPv4
    5-tuple as it is now. False if it is not IPv4."""
    events[r, EV_IN_PORT] = meta[i, M_IN_PORT]
    events[r, EV_OUT] = meta[i, M_OUT]
    row, s = meta[i, M_ROW], meta[i, M_START]
    if meta[i, M_LEN] < ETH_LEN + 20 or read16(buf, row, s + 12) != ETH_P_IP:
        return False
    ip = s + ETH_LEN
    proto = np.int64(buf[row, ip + 9])
    l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
    end = ip + read16(buf, row, ip + 2)
    first = (read16(buf, row, ip + 6) & 0x1FFF) == 0
    if proto == 6 and first and l4 + 14 <= end:
        events[r, EV_TCP_FLAGS] = buf[row, l4 + 13]
    if with_tuple:
        events[r, EV_PROTO] = proto
        events[r, EV_SRC] = read32(buf, row, ip + 12)
        events[r, EV_DST] = read32(buf, row, ip + 16)
        if (proto == 6 or proto == 17) and first and l4 + 4 <= end:
            events[r, EV_SPORT] = read16(buf, row, l4)
            events[r, EV_DPORT] = read16(buf, row, l4 + 2)
        elif proto == 1 and first and l4 + 8 <= end and buf[row, l4] == 8:
            events[r, EV_SPORT] = read16(buf, row, l4 + 4)   # an echo request's identifier
        events[r, EV_TO_SRC] = events[r, EV_SRC]
        events[r, EV_TO_SPORT] = events[r, EV_SPORT]
        events[r, EV_TO_DST] = events[r, EV_DST]
        events[r, EV_TO_DPORT] = events[r, EV_DPORT]
    return True


@internal
def _policies(events, r, reason, meta, i, policy):
    """For a NetworkPolicy drop: which way, and the policies that isolate the pod that way (the
    policy stage leaves the receiving pod's port in M_OUT; the sender's is the ingress port)."""
    if reason == R_DROP_POLICY_EGRESS:
        port, base, way = meta[i, M_IN_PORT], policy_stage.PR_EGRESS, DIR_EGRESS
    else:
        port, base, way = meta[i, M_OUT], policy_stage.PR_INGRESS, DIR_INGRESS
    pr = policy.port_rules
    if port < 0 or port >= pr.shape[0]:
        return
    first = pr[port, base + policy_stage.D_FIRST_POLICY]
    count = pr[port, base + policy_stage.D_POLICIES]
    events[r, EV_POLICY_DIR] = way
    events[r, EV_POLICIES] = count
    for k in range(min(count, MAX_POLICIES)):
        events[r, EV_POLICY + k] = policy.policy_ids[first + k]


@inlined
def after_verdict(buf, meta, i, action, reason, ct, policy):
    """Log what frame i's verdict means for its connection (the dispatch loop calls this only
    for a connection's first packet, a packet that ended one, and the verdicts of `watch`):
    a start, an end, or a refusal. A refused first packet takes the connection it opened with
    it, as Linux destroys an unconfirmed conntrack entry whose packet was dropped. (Inlined:
    a call would pass both groups by value, their every array, for each new connection.)"""
    fl = ct.flows
    recs = ct.recs
    kind = fl.watch[reason]
    flow = meta[i, M_FLOW]
    if flow == FLOW_NEW:
        rec = meta[i, M_CT_SLOT]
        refused = kind != 0 or action == ACT_DROP
        r = _claim(fl, (kind if kind != 0 else K_DROP) if refused else K_START, reason)
        if r >= 0:
            _from_record(fl.events, r, recs, rec)
            _from_packet(fl.events, r, buf, meta, i, np.bool_(False))
            fl.events[r, EV_PROTO] = buf[meta[i, M_ROW], meta[i, M_START] + ETH_LEN + 9]
            fl.events[r, EV_REPLY] = 0
            if reason == R_DROP_POLICY_INGRESS or reason == R_DROP_POLICY_EGRESS:
                _policies(fl.events, r, reason, meta, i, policy)
        if refused:
            conntrack.release(ct, rec)   # never started: nothing more is logged of it
        else:
            recs[rec, conntrack.C_FLAGS] |= F_FLOW_STARTED
        return
    if flow == FLOW_ENDED:
        rec = meta[i, M_CT_SLOT]
        if (recs[rec, conntrack.C_FLAGS] & (F_FLOW_STARTED | F_FLOW_ENDED)) == F_FLOW_STARTED:
            r = _claim(fl, np.int64(K_END), np.int64(END_FIN))
            if r >= 0:
                _from_record(fl.events, r, recs, rec)
                _from_packet(fl.events, r, buf, meta, i, np.bool_(False))
                if fl.events[r, EV_TCP_FLAGS] >= 0 and fl.events[r, EV_TCP_FLAGS] & 0x04:
                    fl.events[r, EV_REASON] = END_RST
                # which way it went: its source is the original's source or destination...
                row, ip = meta[i, M_ROW], meta[i, M_START] + ETH_LEN
                src = read32(buf, row, ip + 12)
                fl.events[r, EV_REPLY] = 0 if src == fl.events[r, EV_SRC] \
                    or src == fl.events[r, EV_TO_SRC] else 1
            recs[rec, conntrack.C_FLAGS] |= F_FLOW_ENDED
        if kind == 0:
            return
    if kind == 0:
        return
    r = _claim(fl, kind, reason)
    if r < 0:
        return
    if not _from_packet(fl.events, r, buf, meta, i, np.bool_(True)):
        fl.events[r, EV_PROTO] = 0   # not IPv4 (a spoofed MAC's ARP): the ports say where
    if reason == R_DROP_POLICY_INGRESS or reason == R_DROP_POLICY_EGRESS:
        _policies(fl.events, r, reason, meta, i, policy)
        fl.events[r, EV_REPLY] = 0   # policy judges only a connection's first packet


@internal
def released(ct, rec):
    """Connection `rec` is being freed (fastpath.conntrack.release): log its end unless it never
    started (a refused first packet) or its end is logged already (FIN/RST)."""
    recs = ct.recs
    if (recs[rec, conntrack.C_FLAGS] & (F_FLOW_STARTED | F_FLOW_ENDED)) != F_FLOW_STARTED:
        return
    recs[rec, conntrack.C_FLAGS] |= F_FLOW_ENDED
    fl = ct.flows
    why = END_TIMEOUT if recs[rec, conntrack.C_EXPIRES] < fl.state[FS_NOW] else END_EVICTED
    r = _claim(fl, np.int64(K_END), why)
    if r >= 0:
        _from_record(fl.events, r, recs, rec)


# --- reading (the node, between batches) ---------------------------------------------------------

def drain(events: np.ndarray, state: np.ndarray) -> np.ndarray:
    """The events written since the last drain, oldest first (a copy), and the ring marked read.
    Run where nothing writes meanwhile: the data-path thread between batches."""
    head, tail = int(state[FS_HEAD]), int(state[FS_TAIL])
    if head == tail or events.shape[0] == 0:
        return events[:0].copy()
    rows = events[np.arange(tail, head) % events.shape[0]]
    state[FS_TAIL] = head
    return rows
