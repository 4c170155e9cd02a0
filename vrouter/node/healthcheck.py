"""kube-proxy's service health checks: for every LoadBalancer Service with
externalTrafficPolicy Local, its healthCheckNodePort on each node's address answers HTTP with 200
while this node has a local endpoint for it and 503 otherwise, so a load balancer sends traffic
only to nodes that can take it.

The fast path leads nodeAddress:healthCheckNodePort to this node's DNS server pod (a frontend
servicetables builds), where the node process listens on real TCP sockets, one per port, made
inside that pod's network namespace; h11 speaks HTTP/1.1. The answer is kube-proxy's:
{"service": {"namespace", "name"}, "localEndpoints": N, "serviceProxyHealthy": true}.
"""
from __future__ import annotations

import contextlib
import json
import logging
import socket

import h11
import trio

from vrouter.host import netns
from vrouter.model.services import endpoints

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0
MAX_REQUEST = 16 * 1024
MAX_CLIENTS = 64     # concurrent health-check connections per node; more wait in the backlog


def local_endpoints(cluster, service, node_name: str) -> int:
    """How many of the Service's endpoints (pods, over every port) are on this node."""
    pods = {e.pod.name for sp in service.ports for e in endpoints(service, sp, cluster.pods)
            if e.pod.node == node_name}
    return len(pods)


def answer(cluster, service_key: str, node_name: str) -> tuple[int, bytes]:
    """(status, JSON body) of a health check for `service_key` on this node."""
    try:
        service = cluster.service_by_key(service_key)
    except KeyError:
        return 503, b'{"serviceProxyHealthy": true, "localEndpoints": 0}'
    count = local_endpoints(cluster, service, node_name)
    body = json.dumps({"service": {"namespace": service.namespace, "name": service.name},
                       "localEndpoints": count, "serviceProxyHealthy": True}).encode()
    return (200 if count else 503), body


class HealthChecks:
    """The node's health-check listeners, reconciled with the live model (`update`)."""

    def __init__(self, node_name: str, pod, cluster_of):
        self.node_name = node_name
        self.pod = pod                    # the DNS server pod: where the sockets live
        self.cluster_of = cluster_of      # () -> the live model
        self.listeners: dict[int, tuple[str, trio.CancelScope]] = {}   # port -> (service, scope)
        self.clients = trio.CapacityLimiter(MAX_CLIENTS)
        self.counts = {"answered": 0, "malformed": 0, "failed_listens": 0}
        self.nursery: trio.Nursery | None = None

    def wanted(self) -> dict[int, str]:
        cluster = self.cluster_of()
        return {s.health_check_node_port: s.key for s in cluster.services
                if s.health_check_node_port and s.proxied}

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await self.update()
            await trio.sleep_forever()

    async def update(self) -> None:
        """Listen on the ports the model asks for, stop listening on the others."""
        if self.nursery is None:
            return
        wanted = self.wanted()
        for port, (key, scope) in list(self.listeners.items()):
            if wanted.get(port) != key:
                scope.cancel()
                del self.listeners[port]
        for port, key in wanted.items():
            if port in self.listeners:
                continue
            try:
                sock = await trio.to_thread.run_sync(self._listen, port)
            except OSError as exc:
                self.counts["failed_listens"] += 1
                log.warning("health check for %s: cannot listen on %s:%d: %s", key,
                            self.pod.ip, port, exc)
                continue
            scope = trio.CancelScope()
            self.listeners[port] = (key, scope)
            self.nursery.start_soon(self._accept, sock, key, scope)

    def _listen(self, port: int) -> socket.socket:
        with netns.entered(self.pod.netns_path):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(self.pod.ip), port))
            sock.listen(MAX_CLIENTS)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _accept(self, sock: socket.socket, key: str, scope: trio.CancelScope) -> None:
        listener = trio.socket.from_stdlib_socket(sock)
        with scope, listener:
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    await self.clients.acquire_on_behalf_of(conn)
                    nursery.start_soon(self._client, conn, key)

    async def _client(self, conn, key: str) -> None:
        stream = trio.SocketStream(conn)
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            async with stream:
                with trio.move_on_after(READ_TIMEOUT):
                    while True:
                        event = http.next_event()
                        if event is h11.NEED_DATA:
                            data = await stream.receive_some(4096)
                            http.receive_data(data)
                            continue
                        if isinstance(event, h11.Request):
                            status, body = answer(self.cluster_of(), key, self.node_name)
                            headers = [("content-type", "application/json"),
                                       ("x-content-type-options", "nosniff"),
                                       ("content-length", str(len(body))),
                                       ("connection", "close")]
                            await stream.send_all(http.send(h11.Response(status_code=status,
                                                                         headers=headers)))
                            await stream.send_all(http.send(h11.Data(data=body)))
                            await stream.send_all(http.send(h11.EndOfMessage()))
                            self.counts["answered"] += 1
                        return
        except (h11.RemoteProtocolError, h11.LocalProtocolError):
            self.counts["malformed"] += 1
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.clients.release_on_behalf_of(conn)
            with contextlib.suppress(Exception):
                conn.close()
