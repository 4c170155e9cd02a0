"""The fast path's tables, grouped by the stage that reads them.

Each group is a namedtuple of numpy arrays (numba passes one as a single typed argument). The
control plane (vrouter.node.tables, vrouter.node.servicetables) builds them; the fast path reads them and
updates in place only what it learns (MAC table, neighbours, peer liveness, conntrack). A reload
swaps a whole group between two batches. Dtypes and dimensions are part of the compiled
signature: keep them as the builders make them.
"""
from typing import NamedTuple

import numpy as np

CACHE_LINE = 64


class Ports(NamedTuple):
    """Local pod ports: who is on port p (anti-spoofing, routed delivery, flooding). Ports come
    from a free list: pods come and go while the node runs."""
    port_mac: np.ndarray        # int64[P]
    port_ip: np.ndarray         # int64[P]
    port_live: np.ndarray       # int64[P]: 1 while a pod is attached to port p


class Bridge(NamedTuple):
    """The MAC table (fastpath.learning): MAC -> port, static flag, last seen, learned from."""
    fdb_keys: np.ndarray        # uint64[N]: windowed, bounded (fastpath.learning)
    fdb_vals: np.ndarray        # int64[N, L_COLS]
    fdb_owned: np.ndarray       # int64[P]: learned MACs per pod port (capped: P_FDB_PORT_LIMIT)


class Routes(NamedTuple):
    """Where an IPv4 destination lives: a local pod's port, or a peer's podCIDR."""
    pod_keys: np.ndarray        # uint64: pod IPv4 -> index into pod_port
    pod_port: np.ndarray        # int64
    route_masks: np.ndarray     # int64: prefix masks of peers' podCIDRs, longest first
    route_keys: np.ndarray      # uint64: podCIDR network address -> index into route_peer
    route_peer: np.ndarray      # int64


class Peers(NamedTuple):
    """The other nodes, as VXLAN peers."""
    peer_keys: np.ndarray       # uint64: underlay IPv4 -> index into peer_index
    peer_index: np.ndarray      # int64
    peer_ip: np.ndarray         # int64[K]
    peer_vtep_mac: np.ndarray   # int64[K]
    peer_seen: np.ndarray       # int64[K]: second a datagram last came from the peer
    peer_net: np.ndarray        # int64[K]: its podCIDR (inner sources must lie there...)
    peer_mask: np.ndarray       # int64[K]
    peer_address: np.ndarray    # int64[K]: ...or be its node address
    peer_kernel: np.ndarray     # int64[K]: 1: a Linux VXLAN device (partial checksums arrive)
    peer_keepalive: np.ndarray  # uint8[K, KEEPALIVE_LEN]: the frame the beat sends it
    peer_up: np.ndarray         # int64[K]: up (1) or down (0) at the last beat; -1: not yet


class Outside(NamedTuple):
    """Neighbours on the outside network (fastpath.learning): IPv4 -> MAC, preset and gleaned."""
    nb_keys: np.ndarray         # uint64[N]
    nb_vals: np.ndarray         # int64[N, L_COLS]
    nb_owned: np.ndarray        # int64[1]: gleaned entries


class Services(NamedTuple):
    """Service frontends and backends (rebuilt on reload), see fastpath.stages.services."""
    fe_keys: np.ndarray         # uint64
    fe_vals: np.ndarray         # int64[N, FE_COLS]
    maglev: np.ndarray          # int32[rows, M]
    be_ip: np.ndarray           # int64
    be_port: np.ndarray         # int64
    fe_new: np.ndarray          # int64, like fe_keys: connections each frontend opened


class Flows(NamedTuple):
    """The flow log's ring of connection events (kept across reloads), see fastpath.flows."""
    events: np.ndarray          # int64[N, EV_COLS]: the last N events (N = 0: off)
    state: np.ndarray           # int64[FS_COLS]: head, tail, lost, clock
    watch: np.ndarray           # int64[COUNTER_COUNT]: verdicts logged as refusals


class Conntrack(NamedTuple):
    """Connection state (kept across reloads), see fastpath.conntrack."""
    slots: np.ndarray           # uint64[S, SLOT_COLS]: two keys per connection
    recs: np.ndarray            # int64[N, REC_COLS]: one record per connection
    free: np.ndarray            # int64[N]: free record numbers (a stack)
    stats: np.ndarray           # int64[STATS_COLS]: CTS_*
    aff_keys: np.ndarray
    aff_vals: np.ndarray
    frag_keys: np.ndarray
    frag_vals: np.ndarray
    flows: Flows                # the flow log: a record's end is logged where it is freed


class Policy(NamedTuple):
    """NetworkPolicy of the node's pods (rebuilt on reload and as pods come and go), see
    fastpath.stages.policy."""
    active: np.ndarray          # int64[1]: 1 when a policy selects some pod of this node
    port_rules: np.ndarray      # int64[P, PR_COLS]
    rules: np.ndarray           # int64[R, RU_COLS]
    peer_sets: np.ndarray       # int64[S, PS_COLS]
    excepts: np.ndarray         # int64[E, 3]: peer set, network, mask of an ipBlock's except
    members: np.ndarray         # uint64 hash keys: peer set + 1 << 32 | pod IPv4
    named: np.ndarray           # uint64 hash keys: named set + 1 << 48 | IPv4 << 16 | port
    policy_ids: np.ndarray      # int64[K]: policies isolating a port (port_rules ranges)
    drops: np.ndarray           # int64[policies]: new connections refused, per policy


class Budgets(NamedTuple):
    """What may reach the slow path each second (see fastpath.budgets)."""
    port_used: np.ndarray       # int64[ports + 2, 2]: per ingress port (pods, uplink, overlay)
    dest_keys: np.ndarray       # uint64[N, 2]: per ICMP error destination (windowed)
    dest_vals: np.ndarray       # int64[N, 2]
    node_used: np.ndarray       # int64[2]: all ICMP errors


class Tables(NamedTuple):
    params: np.ndarray          # int64[PARAM_COUNT], P_*
    counters: np.ndarray        # uint64[COUNTER_COUNT], R_*
    ports: Ports
    bridge: Bridge
    routes: Routes
    peers: Peers
    outside: Outside
    services: Services
    conntrack: Conntrack
    policy: Policy
    budgets: Budgets
    code: np.ndarray            # int64[STAGE_COUNT]: a linked stage's compiled code, 0 until
                                # the tables need it (fastpath.stages.link; forward calls it)


class Frames(NamedTuple):
    """An input batch: frames in rows of `buf`, one `meta` row each (see fastpath.layout)."""
    buf: np.ndarray             # uint8[rows, SLOT]
    meta: np.ndarray            # int64[FRAMES_MAX, META_COLS]


class Output(NamedTuple):
    """An output batch (see fastpath.layout, O_*)."""
    rows: np.ndarray            # int64[OUT_ROWS, OUT_COLS]
    data: np.ndarray            # uint8[1, OUT_DATA]: GSO segments, VXLAN-encapsulated
    slow: np.ndarray            # uint8[1, SLOW_DATA]: copies of frames for the slow path
    fill: np.ndarray            # int64[FILL_COLS]: rows, data and slow bytes used (F_*)
    trace: np.ndarray           # int64[steps, TRACE_COLS]: each stage's decision (0 rows: off)


class Stats(NamedTuple):
    """What the I/O edge counts: per port (pods, the uplink, then the overlay as one more)."""
    port_stats: np.ndarray      # int64[ports + 1, 4]: rx frames, rx bytes, tx frames, tx bytes
    batch_sizes: np.ndarray     # int64[9]: reads of 1, 2-3, 4-7, ..., 64-127, 128+ frames; frames


class Capture(NamedTuple):
    """A capture ring (vrouter capture): frames copied at a port as read or as written."""
    active: np.ndarray          # int64[1]: 0 while nobody captures (then it costs one test)
    points: np.ndarray          # int64[ports + 1]: per port CAPTURE_RX | CAPTURE_TX
    index: np.ndarray           # int64[rows, 4]: offset, length, port*2 + (1 if sent), time ns
    data: np.ndarray            # uint8[1, bytes]
    fill: np.ndarray            # int64[3]: rows, bytes, frames dropped (ring full)


class Io(NamedTuple):
    """The node's file descriptors and the memory fastpath.io hands to the kernel."""
    tap_fds: np.ndarray         # int64[max pods + 1]: TAP fd of each port (-1: free), the uplink last
    sock_fds: np.ndarray        # int64[sockets]: overlay send sockets (one UDP source port each)
    peer_addrs: np.ndarray      # uint64[peers * 2]: struct sockaddr_in of each peer
    fd_port: np.ndarray         # int64[65536]: fd -> port, or FD_OVERLAY / FD_WAKE / FD_NONE
    events: np.ndarray          # uint8: struct epoll_event[]
    clock: np.ndarray           # int64[2]: struct timespec
    stats: Stats
    capture: Capture
    epfd: int
    event_stride: int           # sizeof(struct epoll_event): 12 on x86-64, 16 elsewhere


class TxRing(NamedTuple):
    """sendmmsg() and writev() arguments, reused for every output batch."""
    msgs: np.ndarray            # uint64[OUT_ROWS * 8]: struct mmsghdr[]
    iovs: np.ndarray            # uint64[OUT_ROWS * 2]: struct iovec[], one per message
    cmsgs: np.ndarray           # uint64[OUT_ROWS * 4]: a UDP_SEGMENT cmsg per message
    queue: np.ndarray           # int64[OUT_ROWS]: output rows waiting for sendmmsg
    vnet: np.ndarray            # uint8[16]: the virtio-net header of the next TAP write
    tap_iov: np.ndarray         # uint64[4]: struct iovec[2] for writev(header, frame)


class RxRing(NamedTuple):
    """recvmmsg() arguments for the overlay socket: one message per input buffer row."""
    msgs: np.ndarray            # uint64[BATCH * 8]: struct mmsghdr[]
    iovs: np.ndarray            # uint64[BATCH * 2]
    addrs: np.ndarray           # uint64[BATCH * 2]: struct sockaddr_in (the sender)
    cmsgs: np.ndarray           # uint64[BATCH * 4]: the UDP_GRO cmsg (segment size)


def copy_group(value, _roots=None):
    """A copy of a group (or one array of it) laid out exactly as the original: arrays that
    were views of one buffer (a state table's keys and values) are views of one new buffer, at
    the same offsets, strides and cache-line alignment, so numba sees the same types and
    compiles nothing new for the copy (vrouter trace runs the fast path on such copies)."""
    roots = {} if _roots is None else _roots
    if isinstance(value, np.ndarray):
        root = value
        while isinstance(root.base, np.ndarray):
            root = root.base
        if id(root) not in roots:
            raw = np.empty(root.nbytes + CACHE_LINE, np.uint8)
            skip = (root.ctypes.data - raw.ctypes.data) % CACHE_LINE
            copy = raw[skip:skip + root.nbytes].view(root.dtype).reshape(root.shape)
            copy[...] = root
            roots[id(root)] = (root, copy)
        copy = roots[id(root)][1]
        if value is root:
            return copy
        return np.ndarray(value.shape, value.dtype, buffer=copy,
                          offset=value.ctypes.data - root.ctypes.data, strides=value.strides)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(copy_group(v, roots) for v in value))
    return value
