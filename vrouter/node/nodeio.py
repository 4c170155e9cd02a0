"""The memory the compiled I/O edge (fastpath.io) hands to the kernel: struct mmsghdr, iovec,
cmsghdr, sockaddr_in and epoll_event arrays, laid out once with the addresses of the node's
batch buffers filled in. Pure numpy: nothing here makes a system call."""
from __future__ import annotations

import platform
import socket
import struct

import numpy as np

from fastpath.groups import Capture, Frames, Io, RxRing, Stats, TxRing
from fastpath.io import (
    BATCH_FRAMES, CMSG_WORDS, FD_NONE, MH_CONTROL, MH_CONTROLLEN, MH_IOV, MH_IOVLEN, MH_NAME, MH_NAMELEN,
    MMSG_WORDS, SOCKADDR_WORDS, STATE_COLS, ST_PENDING_PORT, ST_SPIN_NS, ST_TIMEOUT_MS,
)
from fastpath.layout import BATCH, HEADROOM, OUT_ROWS, SLOT, VXLAN_HEADER_LEN

MAX_FDS = 65536
MAX_EVENTS = 64
# struct epoll_event is packed on x86-64 (__EPOLL_PACKED), naturally aligned elsewhere
EVENT_STRIDE = 12 if platform.machine() in ("x86_64", "AMD64") else 16


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) \
        + bytes(8)


CAPTURE_ROWS = 8192
CAPTURE_BYTES = 8 << 20


def new_io(epfd: int, ports: int, sock_fds: list[int], peers: list[tuple[str, int]],
           fd_port: np.ndarray) -> Io:
    """`ports`: how many TAP ports there can be (pods and the uplink); all start free (-1).
    Stats and capture have one row more: the overlay."""
    addrs = b"".join(sockaddr_in(ip, port) for ip, port in peers) or bytes(16)
    return Io(tap_fds=np.full(ports, -1, dtype=np.int64),
              sock_fds=np.array(sock_fds, dtype=np.int64),
              peer_addrs=np.frombuffer(addrs, dtype=np.uint64).copy(),
              fd_port=fd_port,
              events=np.zeros(MAX_EVENTS * EVENT_STRIDE, dtype=np.uint8),
              clock=np.zeros(2, dtype=np.int64),
              stats=Stats(np.zeros((ports + 1, 4), dtype=np.int64),
                          np.zeros(BATCH_FRAMES + 1, dtype=np.int64)),
              capture=Capture(np.zeros(1, dtype=np.int64), np.zeros(ports + 1, dtype=np.int64),
                              np.zeros((CAPTURE_ROWS, 4), dtype=np.int64),
                              np.zeros((1, CAPTURE_BYTES), dtype=np.uint8),
                              np.zeros(3, dtype=np.int64)),
              epfd=epfd, event_stride=EVENT_STRIDE)


def new_fd_port() -> np.ndarray:
    return np.full(MAX_FDS, FD_NONE, dtype=np.int64)


def new_tx_ring() -> TxRing:
    msgs = np.zeros(OUT_ROWS * MMSG_WORDS, dtype=np.uint64)
    iovs = np.zeros(OUT_ROWS * 2, dtype=np.uint64)
    for k in range(OUT_ROWS):
        m = k * MMSG_WORDS
        msgs[m + MH_NAMELEN] = SOCKADDR_WORDS * 8
        msgs[m + MH_IOV] = iovs.ctypes.data + 2 * k * 8
        msgs[m + MH_IOVLEN] = 1
    return TxRing(msgs=msgs, iovs=iovs, cmsgs=np.zeros(OUT_ROWS * CMSG_WORDS, dtype=np.uint64),
                  queue=np.zeros(OUT_ROWS, dtype=np.int64), vnet=np.zeros(16, dtype=np.uint8),
                  tap_iov=np.zeros(4, dtype=np.uint64))


def new_rx_ring(frames: Frames) -> RxRing:
    """Message k lands in buffer row k, its VXLAN header just before HEADROOM, so the inner
    frame starts where a TAP read puts one."""
    msgs = np.zeros(BATCH * MMSG_WORDS, dtype=np.uint64)
    iovs = np.zeros(BATCH * 2, dtype=np.uint64)
    addrs = np.zeros(BATCH * SOCKADDR_WORDS, dtype=np.uint64)
    cmsgs = np.zeros(BATCH * CMSG_WORDS, dtype=np.uint64)
    base = frames.buf.ctypes.data
    for k in range(BATCH):
        iovs[2 * k] = base + k * SLOT + HEADROOM - VXLAN_HEADER_LEN
        iovs[2 * k + 1] = SLOT - HEADROOM + VXLAN_HEADER_LEN
        m = k * MMSG_WORDS
        msgs[m + MH_NAME] = addrs.ctypes.data + k * SOCKADDR_WORDS * 8
        msgs[m + MH_NAMELEN] = SOCKADDR_WORDS * 8
        msgs[m + MH_IOV] = iovs.ctypes.data + 2 * k * 8
        msgs[m + MH_IOVLEN] = 1
        msgs[m + MH_CONTROL] = cmsgs.ctypes.data + k * CMSG_WORDS * 8
        msgs[m + MH_CONTROLLEN] = CMSG_WORDS * 8
    return RxRing(msgs, iovs, addrs, cmsgs)


def new_state(busy_poll_us: int, timeout_ms: int = 1000) -> np.ndarray:
    state = np.zeros(STATE_COLS, dtype=np.int64)
    state[ST_PENDING_PORT] = FD_NONE
    state[ST_SPIN_NS] = busy_poll_us * 1000
    state[ST_TIMEOUT_MS] = timeout_ms
    return state
