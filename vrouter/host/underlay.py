"""The node's overlay sockets on its underlay address.

One socket, bound to (underlay, overlay port), receives every peer's VXLAN datagrams; UDP GRO is
on, so a GSO train from a vrouter peer arrives in one read with its segment size. SEND_SOCKETS
more, bound to the underlay address and ports of the dynamic range (49152-65535), send: the
fast path picks one by a hash of the inner flow, so the outer UDP source port spreads flows as
RFC 7348 asks, and a whole train goes out in one sendmmsg with UDP_SEGMENT. The kernel writes
the outer IPv4/UDP headers (DF set: pod MTU = overlay MTU - 50, so nothing needs fragmenting).
"""
from __future__ import annotations

import contextlib
import errno
import socket
import zlib
from dataclasses import dataclass

from vrouter.model.config import Cluster, Node
from vrouter.node.tables import SEND_SOCKETS
from vrouter.host.tap import HostError

SOL_UDP = 17
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
BUFFER = 16 << 20          # socket buffers: room for a few hundred 64 KiB trains
DYNAMIC_PORTS = (49152, 65535)


@dataclass
class OverlaySockets:
    rx: socket.socket
    tx: list[socket.socket]

    @property
    def source_ports(self) -> list[int]:
        return [s.getsockname()[1] for s in self.tx]


def _buffer(sock: socket.socket, force: int, plain: int) -> None:
    """As big a buffer as root may ask for; without CAP_NET_ADMIN, what rmem/wmem_max allow."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER)


def open_overlay(cluster: Cluster, node: Node, stack: contextlib.ExitStack) -> OverlaySockets:
    address, port = str(node.underlay), cluster.overlay.port
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(rx.close)
    try:
        rx.bind((address, port))
    except OSError as exc:
        why = "it is not an address of this network namespace" if exc.errno == errno.EADDRNOTAVAIL \
            else exc.strerror
        raise HostError(f"cannot bind the overlay socket to {address}:{port} "
                        f"(node {node.name!r} underlay): {why}") from None
    _buffer(rx, SO_RCVBUFFORCE, socket.SO_RCVBUF)
    rx.setsockopt(SOL_UDP, UDP_GRO, 1)
    rx.setblocking(False)
    tx = [_send_socket(address, k, node, stack) for k in range(SEND_SOCKETS)]
    return OverlaySockets(rx, tx)


def _send_socket(address: str, k: int, node: Node, stack: contextlib.ExitStack) -> socket.socket:
    low, high = DYNAMIC_PORTS
    span = high - low + 1
    start = (zlib.crc32(f"{node.name}/{k}".encode()) + 1999 * k) % span
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(sock.close)
    for attempt in range(256):
        try:
            sock.bind((address, low + (start + attempt) % span))
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise HostError(f"cannot bind an overlay send socket on {address}: "
                                f"{exc.strerror}") from None
    else:
        raise HostError(f"no free UDP port in {low}-{high} on {address} for the overlay")
    _buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF)
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    sock.setblocking(False)
    # it only sends: nothing should pile up in its receive queue
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    return sock
