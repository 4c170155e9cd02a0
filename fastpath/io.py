"""The node's I/O edge, compiled: system calls made from numba, so that no Python runs per frame.

`serve` waits in epoll_wait (with the GIL released) for the node's TAPs and overlay socket,
reads a batch from each ready one (TAP: read() per frame; overlay: one recvmmsg, UDP GRO trains
split into datagrams), runs the fast path (fastpath.dispatch.forward, called through its address:
fastpath.native) and writes its output batch (TAP: writev() of virtio-net header + frame;
overlay: one sendmmsg per send socket, GSO trains with a UDP_SEGMENT cmsg). It returns to
Python only when Python is needed: frames for the slow path, a control request (the wake-up
eventfd), a peer that went silent or came back, or a timeout. The node's once-a-second beat
(state[ST_BEAT_NS], on whole seconds, also while traffic keeps it busy) runs here: expired state
freed (fastpath.beat), a keepalive to every peer, the peers' liveness. After pod traffic that
ends a quiet spell it keeps polling without sleeping for a bounded time (busy-polling, as
Linux's busy_poll does): waking a sleeping thread costs tens of microseconds on a VM, and the
answer to a request usually comes back within that time. Steady traffic keeps the node awake by
itself; there, spinning would only take a core the pods need.

libc is reached through numba ExternalFunction declarations (resolved by symbol name, so the
compiled code can be cached). The kernel structures (mmsghdr, iovec, cmsghdr, sockaddr_in,
epoll_event) live in numpy arrays that vrouter.node.nodeio builds and fills with addresses once;
their layout here is Linux x86-64/aarch64 (64-bit pointers, little-endian).
"""
import numba
import numpy as np
from numba import types

from fastpath.checksum import copy_bytes
from fastpath.dispatch import forward
from fastpath.beat import housekeeping
from fastpath.flows import FS_CLOCK_NS, FS_HEAD, FS_TAIL
from fastpath.jit import compiled, inlined, internal, releasing_gil
from fastpath.native import address_of, call_at, int64_types
from fastpath.layout import (
    F_DATA, F_ROWS, F_SLOW, HEADROOM, IN_GATEWAY, IN_OVERLAY, KEEPALIVE_LEN, M_CSUM_OFFSET,
    M_CSUM_START, M_GSO_SIZE, M_GSO_TYPE, M_HDR_LEN, M_IN_PORT, M_LEN, M_ROW, M_SRC_IP, M_START,
    M_VFLAGS, O_DONE, O_FRAME, O_KIND, O_LEN, O_ROW, O_SEGMENT, O_SOCKET, O_SRC, O_START,
    O_TARGET, OUT_FLOOD, OUT_OVERLAY, OUT_PORT, OUT_SLOW, P_PORT_COUNT, SLOT,
    SRC_DATA, VNET_HDR_LEN, VXLAN_HEADER_LEN,
)
from fastpath.reasons import (
    R_BUSY_POLLS, R_DROP_NO_ROOM, R_DROP_TX_ERROR, R_RX_FRAMES, R_RX_SYSCALLS, R_TX_DATAGRAMS,
    R_TX_FRAMES, R_TX_SYSCALLS, R_WAKEUPS,
)
from fastpath.stages.overlay import peer_alive

_ssize = types.intp
c_read = types.ExternalFunction("read", _ssize(types.intc, types.uintp, types.uintp))
c_write = types.ExternalFunction("write", _ssize(types.intc, types.uintp, types.uintp))
c_writev = types.ExternalFunction("writev", _ssize(types.intc, types.uintp, types.intc))
c_recvmmsg = types.ExternalFunction(
    "recvmmsg", types.intc(types.intc, types.uintp, types.uintc, types.intc, types.uintp))
c_sendmmsg = types.ExternalFunction(
    "sendmmsg", types.intc(types.intc, types.uintp, types.uintc, types.intc))
c_epoll_wait = types.ExternalFunction(
    "epoll_wait", types.intc(types.intc, types.uintp, types.intc, types.intc))
c_clock_gettime = types.ExternalFunction("clock_gettime", types.intc(types.intc, types.uintp))
c_errno = types.ExternalFunction("__errno_location", types.CPointer(types.intc)())
c_sched_yield = types.ExternalFunction("sched_yield", types.intc())

EINTR = 4
EAGAIN = 11
EPOLLERR = 0x008
EPOLLHUP = 0x010
MSG_DONTWAIT = 0x40
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IOV_MAX = 1024
HUNG_UP = -1          # read_tap: the fd has nothing to read, ever again (EOF or an error)

# kernel structure sizes, in 8-byte words
MMSG_WORDS = 8        # struct mmsghdr: msghdr (56 bytes) + msg_len, padded
CMSG_WORDS = 4        # one cmsghdr with up to 8 bytes of data (CMSG_SPACE(4) = 24, rounded)
SOCKADDR_WORDS = 2    # struct sockaddr_in
# struct msghdr fields (word index)
MH_NAME, MH_NAMELEN, MH_IOV, MH_IOVLEN, MH_CONTROL, MH_CONTROLLEN, MH_FLAGS, MH_LEN = range(8)

# fd_port values for what is not a port
FD_NONE = -1
FD_OVERLAY = -2
FD_WAKE = -3

# serve() results
WHY_SLOW = 1          # out holds frames for the slow path (out.fill[F_SLOW] > 0)
WHY_WAKE = 2          # the wake-up eventfd is readable: a control request
WHY_TIMEOUT = 3       # nothing happened for the wait time
WHY_ERROR = 4         # epoll_wait failed
WHY_GATEWAY = 5       # the gateway's batch (state[ST_GATEWAY_N]) is written
WHY_CAPTURE = 6       # the capture ring is half full: drain it
WHY_PORT_GONE = 7     # a TAP fails (its device is gone with the pod's netns): state[ST_GONE_PORT]
WHY_FLOWS = 8         # the flow log's ring is half full: drain it
WHY_BEAT = 9          # the beat found a peer gone silent or back (or first looked at them)

# Stats.batch_sizes: 8 buckets (1, 2-3, ..., 128+) of frames per read, then their sum
BATCH_FRAMES = 8

# Stats.port_stats columns
RX_FRAMES, RX_BYTES, TX_FRAMES, TX_BYTES = 0, 1, 2, 3
# Capture.points bits
CAPTURE_RX = 1
CAPTURE_TX = 2

# state[] columns (kept between serve() calls)
ST_PENDING_PORT = 0   # a batch interrupted by slow-path frames: its ingress (or FD_NONE)
ST_PENDING_NEXT = 1   # ... its next frame
ST_PENDING_N = 2      # ... and its frame count
ST_SPIN_UNTIL = 3     # monotonic ns until which to busy-poll (set by traffic after a quiet spell)
ST_SPIN_NS = 4        # busy-poll window after traffic (0: off)
ST_TIMEOUT_MS = 5     # longest sleep in epoll_wait before returning WHY_TIMEOUT (-1: forever)
ST_NOW = 6            # the fast path's clock (seconds), as of the last wake-up
ST_GATEWAY_N = 7      # > 0: run this many frames of the gateway's batch, then return
ST_GONE_PORT = 8      # the port of the last WHY_PORT_GONE
ST_BEAT_NS = 9        # monotonic ns of the next beat (0: none): _beat runs then, busy or not
ST_FORWARD = 10       # where forward's compiled code is, for these frames and tables (serve)
ST_HOUSEKEEPING = 11  # ... and fastpath.beat.housekeeping's, for these tables
STATE_COLS = 12
NS = 1_000_000_000


@inlined
def event_fd(events, e, stride):
    """The fd of epoll event e: its epoll_data (Python's epoll.register puts the fd there)."""
    p = e * stride + 4
    return np.int64(events[p]) | (np.int64(events[p + 1]) << 8) \
        | (np.int64(events[p + 2]) << 16) | (np.int64(events[p + 3]) << 24)


@inlined
def _errno():
    return c_errno()[0]


@inlined
def _leading_zeros(n):
    k = 0
    while k < 64 and not (n >> (63 - k)) & 1:
        k += 1
    return k


@compiled
def monotonic_ns(ts):
    c_clock_gettime(CLOCK_MONOTONIC, ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1]


@compiled
def overlay_port(io):
    """The row of the overlay in Stats and Capture: after the TAP ports."""
    return io.tap_fds.shape[0]


@compiled
def _count(io, port, column, length):
    io.stats.port_stats[port, column] += 1
    io.stats.port_stats[port, column + 1] += length


@internal
def _capture(io, port, sent, buf, row, start, length):
    """Copy a frame into the capture ring if this port and direction are captured."""
    cap = io.capture
    if not cap.points[port] & (CAPTURE_TX if sent else CAPTURE_RX) or length <= 0:
        return
    rows, used = cap.fill[0], cap.fill[1]
    if rows >= cap.index.shape[0] or used + length > cap.data.shape[1]:
        cap.fill[2] += 1   # ring full: the reader is behind
        return
    copy_bytes(cap.data, np.int64(0), used, buf, row, start, length)
    c_clock_gettime(CLOCK_REALTIME, io.clock.ctypes.data)
    cap.index[rows, 0] = used
    cap.index[rows, 1] = length
    cap.index[rows, 2] = port * 2 + (1 if sent else 0)
    cap.index[rows, 3] = io.clock[0] * 1_000_000_000 + io.clock[1]
    cap.fill[0] = rows + 1
    cap.fill[1] = used + length


@compiled
def read_tap(fd, port, frames, io, counters):
    """Read up to a batch of frames (each behind its virtio-net header) from a TAP, one per row,
    into meta rows 0..n-1; returns n, or HUNG_UP when there was nothing to read and never will
    be: end of file (the other end closed) or an error other than EAGAIN (a TAP whose device is
    gone: a read then fails for ever, and epoll reports the fd ready for ever)."""
    buf, meta = frames.buf, frames.meta
    base = buf.ctypes.data
    room = SLOT - HEADROOM + VNET_HDR_LEN
    n = 0
    while n < buf.shape[0]:
        got = c_read(fd, base + n * SLOT + HEADROOM - VNET_HDR_LEN, room)
        if got <= 0:
            if n == 0 and (got == 0 or (_errno() != EAGAIN and _errno() != EINTR)):
                return HUNG_UP
            break
        counters[R_RX_SYSCALLS] += 1
        h = HEADROOM - VNET_HDR_LEN
        meta[n, :] = 0
        meta[n, M_ROW] = n
        meta[n, M_START] = HEADROOM
        meta[n, M_LEN] = got - VNET_HDR_LEN
        meta[n, M_IN_PORT] = port
        meta[n, M_VFLAGS] = buf[n, h]
        meta[n, M_GSO_TYPE] = buf[n, h + 1]
        meta[n, M_HDR_LEN] = np.int64(buf[n, h + 2]) | (np.int64(buf[n, h + 3]) << 8)
        meta[n, M_GSO_SIZE] = np.int64(buf[n, h + 4]) | (np.int64(buf[n, h + 5]) << 8)
        meta[n, M_CSUM_START] = np.int64(buf[n, h + 6]) | (np.int64(buf[n, h + 7]) << 8)
        meta[n, M_CSUM_OFFSET] = np.int64(buf[n, h + 8]) | (np.int64(buf[n, h + 9]) << 8)
        _count(io, port, np.int64(RX_FRAMES), got - VNET_HDR_LEN)
        if io.capture.active[0]:
            _capture(io, port, np.bool_(False), buf, n, np.int64(HEADROOM), got - VNET_HDR_LEN)
        n += 1
    return n


@compiled
def recv_overlay(fd, frames, rx, io, counters):
    """One recvmmsg of up to a batch of VXLAN datagrams (or UDP GRO trains of them, one per
    row); every datagram becomes a frame (meta row) starting after its VXLAN header. Returns the
    frame count."""
    meta = frames.meta
    msgs = rx.msgs
    count = msgs.shape[0] // MMSG_WORDS
    for k in range(count):   # the kernel overwrote these with what it returned last time
        m = k * MMSG_WORDS
        msgs[m + MH_NAMELEN] = SOCKADDR_WORDS * 8
        msgs[m + MH_CONTROLLEN] = CMSG_WORDS * 8
        msgs[m + MH_FLAGS] = 0
    got = c_recvmmsg(fd, msgs.ctypes.data, count, MSG_DONTWAIT, 0)
    if got <= 0:
        return 0
    counters[R_RX_SYSCALLS] += 1
    n = 0
    overlay = overlay_port(io)
    for k in range(got):
        m = k * MMSG_WORDS
        length = np.int64(msgs[m + MH_LEN] & np.uint64(0xFFFFFFFF))
        addr = rx.addrs[k * SOCKADDR_WORDS]
        source = np.int64((addr >> np.uint64(32)) & np.uint64(0xFFFFFFFF))   # sin_addr, network order
        source = ((source & 0xFF) << 24) | ((source & 0xFF00) << 8) | ((source >> 8) & 0xFF00) \
            | ((source >> 24) & 0xFF)
        size = length
        c = k * CMSG_WORDS
        if msgs[m + MH_CONTROLLEN] >= 20:
            level_type = rx.cmsgs[c + 1]
            if level_type == np.uint64(SOL_UDP) | (np.uint64(UDP_GRO) << np.uint64(32)):
                size = np.int64(rx.cmsgs[c + 2] & np.uint64(0xFFFFFFFF))
        if size <= 0 or size > length:
            size = length
        # an empty datagram is one (truncated) frame; a train of more datagrams than the batch
        # has frames for (a peer sending tiny segments) is cut, the rest counted as dropped
        datagrams = 1 if length == 0 else (length + size - 1) // size
        if n + datagrams > meta.shape[0]:
            counters[R_RX_FRAMES] += n + datagrams - meta.shape[0]
            counters[R_DROP_NO_ROOM] += n + datagrams - meta.shape[0]
            datagrams = meta.shape[0] - n
        base = HEADROOM - VXLAN_HEADER_LEN
        for d in range(datagrams):
            first = d * size
            meta[n, :] = 0
            meta[n, M_ROW] = k
            meta[n, M_START] = base + first + VXLAN_HEADER_LEN
            meta[n, M_LEN] = min(size, length - first) - VXLAN_HEADER_LEN
            meta[n, M_IN_PORT] = IN_OVERLAY
            meta[n, M_SRC_IP] = source
            _count(io, overlay, np.int64(RX_FRAMES), min(size, length - first))
            if io.capture.active[0]:
                _capture(io, overlay, np.bool_(False), frames.buf, k, meta[n, M_START],
                         meta[n, M_LEN])
            n += 1
    return n


@internal
def _vnet_header(h, at, meta, i):
    """The frame's virtio-net header (little-endian) into h[at:at + 10]."""
    h[at] = meta[i, M_VFLAGS]
    h[at + 1] = meta[i, M_GSO_TYPE]
    h[at + 2] = meta[i, M_HDR_LEN] & 0xFF
    h[at + 3] = meta[i, M_HDR_LEN] >> 8
    h[at + 4] = meta[i, M_GSO_SIZE] & 0xFF
    h[at + 5] = meta[i, M_GSO_SIZE] >> 8
    h[at + 6] = meta[i, M_CSUM_START] & 0xFF
    h[at + 7] = meta[i, M_CSUM_START] >> 8
    h[at + 8] = meta[i, M_CSUM_OFFSET] & 0xFF
    h[at + 9] = meta[i, M_CSUM_OFFSET] >> 8


@internal
def _write_tap(fd, buf, row, start, length, meta, i, tx, io, port, counters):
    """One write of virtio-net header + frame. A frame alone in its row (from a TAP or the
    gateway) gets its header in the headroom in front of it and one write(); a frame in a row
    of overlay datagrams must not overwrite the end of the datagram before it, so it goes with
    writev(header, frame)."""
    counters[R_TX_SYSCALLS] += 1
    if meta[i, M_IN_PORT] != IN_OVERLAY:
        _vnet_header(buf[row], start - VNET_HDR_LEN, meta, i)
        done = c_write(fd, buf.ctypes.data + row * buf.shape[1] + start - VNET_HDR_LEN,
                       length + VNET_HDR_LEN)
    else:
        _vnet_header(tx.vnet, np.int64(0), meta, i)
        iov = tx.tap_iov
        iov[0] = np.uint64(tx.vnet.ctypes.data)
        iov[1] = np.uint64(VNET_HDR_LEN)
        iov[2] = np.uint64(buf.ctypes.data + row * buf.shape[1] + start)
        iov[3] = np.uint64(length)
        done = c_writev(fd, iov.ctypes.data, 2)
    if done < 0:
        counters[R_DROP_TX_ERROR] += 1
        return
    counters[R_TX_FRAMES] += 1
    _count(io, port, np.int64(TX_FRAMES), length)
    if io.capture.active[0]:
        _capture(io, port, np.bool_(True), buf, row, start, length)


@internal
def _count_datagrams(io, buf, out, rows, r):
    """Stats (and capture: the inner frames) of a VXLAN datagram or GSO train to be sent."""
    overlay = overlay_port(io)
    length, segment = rows[r, O_LEN], rows[r, O_SEGMENT]
    step = segment if segment > 0 else length
    source = out.data if rows[r, O_SRC] == SRC_DATA else buf
    row = 0 if rows[r, O_SRC] == SRC_DATA else rows[r, O_ROW]
    for first in range(0, length, step):
        size = min(step, length - first)
        _count(io, overlay, np.int64(TX_FRAMES), size)
        if io.capture.active[0]:
            _capture(io, overlay, np.bool_(True), source, row,
                     rows[r, O_START] + first + VXLAN_HEADER_LEN, size - VXLAN_HEADER_LEN)


@internal
def _flush_socket(fd, tx, first, count, counters):
    sent = 0
    while sent < count:
        got = c_sendmmsg(fd, tx.msgs.ctypes.data + (first + sent) * MMSG_WORDS * 8,
                         min(count - sent, IOV_MAX), MSG_DONTWAIT)
        counters[R_TX_SYSCALLS] += 1
        if got <= 0:
            counters[R_DROP_TX_ERROR] += count - sent
            return
        sent += got


@compiled
def write_out(frames, out, io, tx, params, counters, port_live):
    """Write the output batch: TAP frames in order, then every VXLAN datagram and GSO train with
    one sendmmsg per send socket. Rows for the slow path are left to Python. (Given three of
    the tables, not all: a call passes each of its arrays' fields, over 400 for all.)"""
    buf, meta = frames.buf, frames.meta
    rows = out.rows
    ports = params[P_PORT_COUNT]
    queued = 0
    for r in range(out.fill[F_ROWS]):
        kind = rows[r, O_KIND]
        if rows[r, O_DONE] or kind == OUT_SLOW:
            continue
        if kind == OUT_PORT:
            _write_tap(io.tap_fds[rows[r, O_TARGET]], buf, rows[r, O_ROW], rows[r, O_START],
                       rows[r, O_LEN], meta, rows[r, O_FRAME], tx, io, rows[r, O_TARGET], counters)
        elif kind == OUT_FLOOD:
            for port in range(ports):
                if port != rows[r, O_TARGET] and port_live[port] and io.tap_fds[port] >= 0:
                    _write_tap(io.tap_fds[port], buf, rows[r, O_ROW], rows[r, O_START],
                               rows[r, O_LEN], meta, rows[r, O_FRAME], tx, io, port, counters)
        elif kind == OUT_OVERLAY:
            tx.queue[queued] = r
            queued += 1
            _count_datagrams(io, buf, out, rows, r)
    if queued == 0:
        return
    # one sendmmsg per socket, the messages of each socket side by side in tx.msgs
    k = np.int64(0)   # not a literal: _flush_socket would be compiled for first == 0 too
    for sock in range(io.sock_fds.shape[0]):
        first = k
        for q in range(queued):
            r = tx.queue[q]
            if rows[r, O_SOCKET] != sock:
                continue
            if rows[r, O_SRC] == SRC_DATA:
                address = out.data.ctypes.data + rows[r, O_START]
            else:
                address = buf.ctypes.data + rows[r, O_ROW] * buf.shape[1] + rows[r, O_START]
            m = k * MMSG_WORDS
            tx.iovs[2 * k] = np.uint64(address)
            tx.iovs[2 * k + 1] = np.uint64(rows[r, O_LEN])
            tx.msgs[m + MH_NAME] = np.uint64(io.peer_addrs.ctypes.data
                                             + rows[r, O_TARGET] * SOCKADDR_WORDS * 8)
            segment = rows[r, O_SEGMENT]
            if segment > 0:   # a GSO train: the kernel cuts it into datagrams of this size
                c = k * CMSG_WORDS
                tx.cmsgs[c] = np.uint64(18)   # CMSG_LEN(sizeof(u16))
                tx.cmsgs[c + 1] = np.uint64(SOL_UDP) | (np.uint64(UDP_SEGMENT) << np.uint64(32))
                tx.cmsgs[c + 2] = np.uint64(segment)
                tx.msgs[m + MH_CONTROL] = np.uint64(tx.cmsgs.ctypes.data + c * 8)
                tx.msgs[m + MH_CONTROLLEN] = np.uint64(CMSG_WORDS * 8)
                counters[R_TX_DATAGRAMS] += (rows[r, O_LEN] + segment - 1) // segment
            else:
                tx.msgs[m + MH_CONTROL] = 0
                tx.msgs[m + MH_CONTROLLEN] = 0
                counters[R_TX_DATAGRAMS] += 1
            k += 1
        if k > first:
            _flush_socket(io.sock_fds[sock], tx, first, k - first, counters)


@inlined
def _run_batch(frames, first, n, now, tables, out, io, tx, state, port):
    """Forward and write frames first..n-1; stop early when the slow path has frames to see
    (remembering where to go on). Returns True when the batch is done."""
    i = first
    while i < n:
        out.fill[F_ROWS] = 0
        out.fill[F_DATA] = 0
        out.fill[F_SLOW] = 0
        i = call_at(state[ST_FORWARD],   # forward(frames, i, n, now, tables, out)
                    (frames, np.int64(i), np.int64(n), np.int64(now), tables, out))
        write_out(frames, out, io, tx, tables.params, tables.counters, tables.ports.port_live)
        if out.fill[F_SLOW] > 0:
            if i < n:
                state[ST_PENDING_PORT] = port
                state[ST_PENDING_NEXT] = i
                state[ST_PENDING_N] = n
            return i >= n
    return True


def serve(frames, gateway, tables, out, io, tx, rx, state) -> int:
    """serve_loop, with the addresses of `forward` and `housekeeping` for these frames and
    tables in state[ST_FORWARD] and state[ST_HOUSEKEEPING] (looked up once; fastpath.native
    says why serve calls them there)."""
    if state[ST_FORWARD] == 0:
        assert numba.typeof(gateway) == numba.typeof(frames), "serve forwards both alike"
        state[ST_FORWARD] = address_of(forward, forward_types(frames, tables, out))
    if state[ST_HOUSEKEEPING] == 0:
        state[ST_HOUSEKEEPING] = address_of(housekeeping, int64_types(tables, 0))
    return serve_loop(frames, gateway, tables, out, io, tx, rx, state)


def forward_types(frames, tables, out) -> tuple:
    """The argument types serve_loop calls forward with (frames, first, n, now, tables, out)."""
    return int64_types(frames, 0, 0, 0, tables, out)


@internal
def _keepalives(gateway, peers, first):
    """The keepalives of peers first, first + 1, ... into the gateway's batch, as many as it
    holds; returns how many."""
    n = min(gateway.meta.shape[0], peers.peer_keepalive.shape[0] - first)
    for j in range(n):
        for b in range(KEEPALIVE_LEN):
            gateway.buf[j, HEADROOM + b] = peers.peer_keepalive[first + j, b]
        gateway.meta[j, :] = 0
        gateway.meta[j, M_ROW] = j
        gateway.meta[j, M_START] = HEADROOM
        gateway.meta[j, M_LEN] = KEEPALIVE_LEN
        gateway.meta[j, M_IN_PORT] = IN_GATEWAY
    return n


@internal
def _liveness_changed(peers, params, now):
    """Which peers are up (by the rule to_overlay drops by), into peer_up; True if any differs
    from the last beat's."""
    changed = False
    for k in range(peers.peer_seen.shape[0]):
        up = 1 if peer_alive(peers, params, np.int64(k), now) else 0
        if peers.peer_up[k] != up:
            peers.peer_up[k] = up
            changed = True
    return changed


@internal
def _beat(now_ns, gateway, tables, out, io, tx, state):
    """The node's once-a-second work: expired state freed (fastpath.beat.housekeeping), a
    keepalive to every peer (through the fast path, as the gateway's own frames), the peers'
    liveness; the next beat on the next whole second (every node of the machine beats
    together, so a node reads its peers' keepalives in a few wake-ups). Returns 0, or why
    Python is needed: WHY_SLOW (a keepalive for the slow path, in `out`), WHY_BEAT (a peer's
    liveness changed), WHY_CAPTURE / WHY_FLOWS (frames captured or flows logged since: drained
    at least once a second)."""
    state[ST_BEAT_NS] = (now_ns // NS + 1) * NS
    now = now_ns // NS
    state[ST_NOW] = now
    tables.conntrack.flows.state[FS_CLOCK_NS] = now_ns
    call_at(state[ST_HOUSEKEEPING], (tables, np.int64(now)))   # housekeeping(tables, now)
    peers = tables.peers
    first = 0
    while first < peers.peer_keepalive.shape[0]:
        n = _keepalives(gateway, peers, np.int64(first))
        out.fill[F_ROWS] = 0
        out.fill[F_DATA] = 0
        out.fill[F_SLOW] = 0
        call_at(state[ST_FORWARD], (gateway, np.int64(0), np.int64(n), np.int64(now),
                                     tables, out))   # forward(...)
        write_out(gateway, out, io, tx, tables.params, tables.counters, tables.ports.port_live)
        if out.fill[F_SLOW] > 0:
            return WHY_SLOW
        first += n
    if _liveness_changed(peers, tables.params, now):
        return WHY_BEAT
    if io.capture.active[0] and io.capture.fill[0] > 0:
        return WHY_CAPTURE
    fl = tables.conntrack.flows
    if fl.state[FS_HEAD] != fl.state[FS_TAIL]:
        return WHY_FLOWS
    return 0


@releasing_gil
def serve_loop(frames, gateway, tables, out, io, tx, rx, state):
    """Move traffic until Python is needed; returns WHY_*. When it returns WHY_SLOW, `out`
    holds the frames for the slow path and state[ST_PENDING_*] where the batch goes on.

    With state[ST_GATEWAY_N] set, it only forwards and writes that many frames of the
    `gateway` batch (what the node originates: the slow path's answers; the beat puts its
    keepalives there too) and returns WHY_GATEWAY, their own slow-path rows (outside neighbours
    to resolve) left in `out`."""
    counters = tables.counters
    if state[ST_FORWARD] == 0 or state[ST_HOUSEKEEPING] == 0:   # see serve
        return WHY_ERROR
    if state[ST_GATEWAY_N] > 0:
        n = state[ST_GATEWAY_N]
        state[ST_GATEWAY_N] = 0
        out.fill[F_ROWS] = 0
        out.fill[F_DATA] = 0
        out.fill[F_SLOW] = 0
        now = monotonic_ns(io.clock) // 1_000_000_000
        call_at(state[ST_FORWARD], (gateway, np.int64(0), np.int64(n), np.int64(now),
                                     tables, out))   # forward(...)
        write_out(gateway, out, io, tx, tables.params, tables.counters,
                  tables.ports.port_live)
        return WHY_GATEWAY
    events = io.events
    stride = io.event_stride
    if state[ST_PENDING_PORT] != FD_NONE:   # finish a batch the slow path interrupted
        port = state[ST_PENDING_PORT]
        state[ST_PENDING_PORT] = FD_NONE
        if not _run_batch(frames, state[ST_PENDING_NEXT], state[ST_PENDING_N], state[ST_NOW],
                          tables, out, io, tx, state, port):
            return WHY_SLOW
        if out.fill[F_SLOW] > 0:
            return WHY_SLOW
    while True:
        before = monotonic_ns(io.clock)
        beat = state[ST_BEAT_NS]
        if beat > 0 and before >= beat:
            why = _beat(before, gateway, tables, out, io, tx, state)
            if why != 0:
                return why
            continue
        spinning = before < state[ST_SPIN_UNTIL]
        wait = state[ST_TIMEOUT_MS]
        if beat > 0:
            until_beat = (beat - before) // 1_000_000 + 1   # ms, rounded up: not woken early
            if wait < 0 or wait > until_beat:
                wait = until_beat
        ready = c_epoll_wait(io.epfd, events.ctypes.data, events.shape[0] // stride,
                             0 if spinning else wait)
        if ready < 0:
            if _errno() == EINTR:
                continue
            return WHY_ERROR
        if ready == 0:
            if spinning:   # let whatever else is runnable here (a pod, the other node) go first
                counters[R_BUSY_POLLS] += 1
                c_sched_yield()
                continue
            if beat > 0 and monotonic_ns(io.clock) >= beat:
                continue   # the beat, first thing in the loop
            return WHY_TIMEOUT
        counters[R_WAKEUPS] += 1
        after = monotonic_ns(io.clock)
        now = after // 1_000_000_000
        state[ST_NOW] = now
        tables.conntrack.flows.state[FS_CLOCK_NS] = after   # the flow log's event times
        # busy-poll after pod traffic that broke a quiet spell (likely a request whose answer
        # comes back through this node soon): a frame from a pod, or one delivered to a pod.
        # Not after the node's own traffic (peers' keepalives and their answers: 32 nodes
        # would spin ~60 times a second each, idle). Steady traffic keeps the node awake by
        # itself, and spinning then only takes a core the pods need.
        quiet = not spinning and after - before >= state[ST_SPIN_NS]
        woken = False
        for e in range(ready):
            fd = event_fd(events, e, stride)
            port = io.fd_port[fd]
            if port == FD_WAKE:
                woken = True
                continue
            if port == FD_OVERLAY:
                n = recv_overlay(fd, frames, rx, io, counters)
            elif port >= 0:
                n = read_tap(fd, port, frames, io, counters)
                # the pod's netns went: Python stops polling the fd and detaches the pod
                if n == HUNG_UP or (n == 0 and events[e * stride] & (EPOLLERR | EPOLLHUP)):
                    state[ST_GONE_PORT] = port
                    return WHY_PORT_GONE
            else:
                continue
            if n == 0:
                continue
            io.stats.batch_sizes[min(7, 63 - _leading_zeros(n))] += 1
            io.stats.batch_sizes[BATCH_FRAMES] += n
            delivered = counters[R_TX_FRAMES]
            done = _run_batch(frames, np.int64(0), n, now, tables, out, io, tx, state, port)
            if quiet and (port >= 0 or counters[R_TX_FRAMES] != delivered):
                state[ST_SPIN_UNTIL] = after + state[ST_SPIN_NS]
                quiet = False
            if not done:
                return WHY_SLOW
            if out.fill[F_SLOW] > 0:
                return WHY_SLOW
        if woken:
            return WHY_WAKE
        cap = io.capture
        if cap.active[0] and (2 * cap.fill[0] >= cap.index.shape[0]
                              or 2 * cap.fill[1] >= cap.data.shape[1]):
            return WHY_CAPTURE
        fl = tables.conntrack.flows
        if 2 * (fl.state[FS_HEAD] - fl.state[FS_TAIL]) > fl.events.shape[0]:
            return WHY_FLOWS
