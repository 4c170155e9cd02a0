"""The node's cluster DNS server: real UDP and TCP sockets on port 53 inside the node's DNS server
pod (kube-system, at the top of the node's podCIDR), so queries reach it as any pod's traffic
does: the kube-dns Service's ClusterIP is DNATed by the fast path to the local server pod
(internalTrafficPolicy Local). Answers come from vrouter.model.dns on the node's live model.
"""
from __future__ import annotations

import contextlib
import logging
import socket
from typing import Callable

import trio

from vrouter.host import netns
from vrouter.host.tap import HostError
from vrouter.model.config import Cluster, Pod
from vrouter.model.dns import Resolver

log = logging.getLogger(__name__)

PORT = 53
TCP_IDLE = 10          # seconds a TCP client may stay silent (RFC 7766 suggests seconds)
TCP_CLIENTS = 64       # concurrent TCP connections; more wait in the listen backlog
MAX_TCP_MESSAGE = 65535


def open_sockets(pod: Pod, stack: contextlib.ExitStack) -> tuple[socket.socket, socket.socket]:
    """UDP and listening TCP sockets bound to the pod's address, made inside its network
    namespace (a socket stays in the namespace it was made in)."""
    try:
        with netns.entered(pod.netns_path):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stack.callback(udp.close)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stack.callback(tcp.close)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((str(pod.ip), PORT))
        tcp.bind((str(pod.ip), PORT))
        tcp.listen(TCP_CLIENTS)
    except OSError as exc:
        raise HostError(f"cannot serve cluster DNS on {pod.ip}:{PORT} in {pod.netns}: "
                        f"{exc.strerror}") from None
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


class DnsServer:
    """Serves one node's DNS sockets from trio; `cluster()` is the node's live model."""

    def __init__(self, cluster: Callable[[], Cluster], udp: socket.socket, tcp: socket.socket):
        self.cluster = cluster
        self.seen = cluster()
        self.resolver = Resolver(self.seen)
        self.udp = trio.socket.from_stdlib_socket(udp)
        self.tcp = trio.socket.from_stdlib_socket(tcp)
        self.clients = trio.CapacityLimiter(TCP_CLIENTS)

    def answer(self, wire: bytes, limit: int | None) -> bytes | None:
        """The reply, or None; a query that trips a bug is dropped and logged, never fatal."""
        try:
            current = self.cluster()
            if current is not self.seen:   # a reload or an attachment: new records
                self.seen = current
                self.resolver.update(current)
            return self.resolver.answer(wire, limit)
        except Exception:
            log.exception("dns: dropped a query that could not be answered")
            self.resolver.counts["dropped"] += 1
            return None

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_udp)
            nursery.start_soon(self._serve_tcp, nursery)

    async def _serve_udp(self) -> None:
        while True:
            try:
                wire, peer = await self.udp.recvfrom(MAX_TCP_MESSAGE)
            except OSError as exc:   # e.g. ECONNREFUSED left by an earlier ICMP error
                log.debug("dns: udp receive: %s", exc)
                continue
            reply = self.answer(wire, limit=512)
            if reply is not None:
                with contextlib.suppress(OSError):
                    await self.udp.sendto(reply, peer)

    async def _serve_tcp(self, nursery: trio.Nursery) -> None:
        while True:
            conn, _ = await self.tcp.accept()
            if not self.clients.available_tokens:   # the others wait (in the listen backlog)
                self.resolver.counts["tcp_clients_full"] += 1
            await self.clients.acquire_on_behalf_of(conn)
            nursery.start_soon(self._client, conn)

    async def _client(self, conn) -> None:
        """RFC 7766: two-byte length, then the message; several queries per connection."""
        stream = trio.SocketStream(conn)
        try:
            async with stream:
                while True:
                    head = wire = b""
                    with trio.move_on_after(TCP_IDLE):
                        head = await _read_exactly(stream, 2)
                        length = int.from_bytes(head, "big") if head else 0
                        wire = await _read_exactly(stream, length) if length else b""
                    if not head or not wire:
                        return   # closed, idle or an empty message
                    reply = self.answer(wire, limit=None)
                    if reply is None:
                        return
                    await stream.send_all(len(reply).to_bytes(2, "big") + reply)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("dns: tcp client: %s", exc)
        finally:
            self.clients.release_on_behalf_of(conn)


async def _read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data
