"""The raw Python ceiling: what a plain Python loop that only moves frames reaches on this
machine, with the same TAP offloads vrouter uses and no processing at all.

- TAP<->TAP: two pod namespaces on one L2 segment, one process copying every read of one TAP
  into the other (the shape of same-node traffic);
- TAP<->UDP<->TAP: the same, but two processes joined by UDP on loopback: each sends what its
  TAP gives it as one datagram and writes what it receives into its TAP (the shape of
  cross-node traffic). A UDP datagram holds at most 65507 bytes, so the pods' super-frames are
  capped at 65000 bytes (gso_max_size) here.

Used by benchmarks/__main__.py; `python3 -m benchmarks.ceiling` runs it alone.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from tests.system.cluster import new_prefix, unique_underlay_octets
from vrouter.host.tap import open_tap

MTU = 1450
SUBNET = "10.250.0"   # only inside the two namespaces this creates


def _move_into(tap, netns: str, address: str, mac: str, gso_max: int | None) -> None:
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=tap.name)[0], net_ns_fd=f"/run/netns/{netns}",
                 ifname="eth0")
    with IPRoute(netns=f"/run/netns/{netns}") as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("set", index=index, address=mac, mtu=MTU)
        if gso_max:
            ipr.link("set", index=index, gso_max_size=gso_max)
        ipr.link("set", index=index, state="up")
        ipr.addr("add", index=index, address=address, prefixlen=24)


def _copy_loop(pairs: dict[int, callable]) -> None:
    """Wait for any fd; hand each read to its writer; until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    epoll = select.epoll()
    for fd in pairs:
        os.set_blocking(fd, False)
        epoll.register(fd, select.EPOLLIN)
    buf = bytearray(70000)
    view = memoryview(buf)
    while True:
        for fd, _ in epoll.poll():
            send = pairs[fd]
            for _ in range(64):
                try:
                    got = os.readv(fd, [view])
                except BlockingIOError:
                    break
                if not got:
                    break
                try:
                    send(view[:got])
                except OSError:
                    pass


@contextlib.contextmanager
def ceiling(kind: str):
    """Two namespaces (yields their names and addresses) joined by a plain copy loop."""
    prefix = new_prefix()
    names = [f"{prefix}-c1", f"{prefix}-c2"]
    taps, children = [], []
    try:
        for k, name in enumerate(names):
            pr_netns.create(name)
            tap, _uso = open_tap("vrc")
            taps.append(tap)
            _move_into(tap, name, f"{SUBNET}.{k + 1}", f"0a:58:0a:fa:00:0{k + 1}",
                       65000 if kind == "udp" else None)
        fds = [t.fileno() for t in taps]
        if kind == "tap":
            children.append(_fork(lambda: _copy_loop({fds[0]: lambda b: os.write(fds[1], b),
                                                      fds[1]: lambda b: os.write(fds[0], b)})))
        else:
            a, b = unique_underlay_octets()
            addrs = [(f"127.{a}.{b}.1", 4789), (f"127.{a}.{b}.2", 4789)]
            socks = []
            for addr in addrs:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(addr)
                s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)   # SO_RCVBUFFORCE
                s.setsockopt(socket.SOL_SOCKET, 32, 16 << 20)   # SO_SNDBUFFORCE
                socks.append(s)
            for k in (0, 1):
                tap_fd, sock, peer = fds[k], socks[k], addrs[1 - k]
                children.append(_fork(lambda tap_fd=tap_fd, sock=sock, peer=peer: _copy_loop({
                    tap_fd: lambda data: sock.sendto(data, peer),
                    sock.fileno(): lambda data: os.write(tap_fd, data)})))
            for s in socks:
                s.close()
        yield names, [f"{SUBNET}.1", f"{SUBNET}.2"]
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        for tap in taps:
            tap.close()
        for name in names:
            if os.path.exists(f"/run/netns/{name}"):
                pr_netns.remove(name)


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


if __name__ == "__main__":
    from benchmarks.measure import iperf_tcp, iperf_udp_kpps
    for kind in ("tap", "udp"):
        with ceiling(kind) as (netns, ips):
            print(kind, "TCP Gbit/s", round(iperf_tcp(netns[1], ips[1], netns[0], 3), 2),
                  "UDP kpps", round(iperf_udp_kpps(netns[1], ips[1], netns[0], 3), 1))
    sys.exit(0)
