"""The raw ceilings: what a loop that only moves frames reaches on this machine, with the same
TAP offloads vrouter uses and no processing at all, written in plain Python (the raw Python
ceiling) and compiled with numba (the compiled ceiling: the same system calls vrouter's data path
makes, one read() per frame from a TAP and one write() per frame into one, and nothing else; what
a router built on TAP reads and writes in one thread cannot beat).

- TAP<->TAP: two pod namespaces on one L2 segment, one process copying every read of one TAP
  into the other (the shape of same-node traffic);
- TAP<->UDP<->TAP: the same, but two processes joined by UDP on loopback: each sends what its
  TAP gives it as one datagram and writes what it receives into its TAP (the shape of
  cross-node traffic). A UDP datagram holds at most 65507 bytes, so the pods' super-frames are
  capped at 65000 bytes (gso_max_size) here.

And the floor under a round trip through a userspace router on this machine: waking a process
that sleeps in a system call (`wakeup_us`), which the kernel's forwarding never pays (it runs
in the sender's context) and a node pays for the first frame after a quiet spell.

Used by benchmarks/__main__.py; `python3 -m benchmarks.ceiling` runs them alone.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time

import numba
import numpy as np
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from fastpath.io import c_epoll_wait, c_read, c_write, event_fd
from fastpath.layout import BATCH
from tests.system.cluster import new_prefix, unique_underlay_octets
from vrouter.host.tap import open_tap
from vrouter.node.nodeio import EVENT_STRIDE

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


@numba.njit(cache=True, nogil=True)
def _relay(epfd, partner, events, buf, lengths, stride, rounds):
    """The compiled copy loop, batched as vrouter's data path is: wait for any fd, read up to a
    batch of frames (a row of `buf` each) from each ready one, then write them into its partner
    fd in order (virtio-net header and all). `rounds` waits (-1: until killed; 0: return at
    once, which compiles it)."""
    waited = 0
    base = buf.ctypes.data
    row = buf.shape[1]
    while rounds < 0 or waited < rounds:
        waited += 1
        ready = c_epoll_wait(epfd, events.ctypes.data, events.shape[0] // stride, 1000)
        for e in range(ready):
            fd = event_fd(events, e, stride)
            n = 0
            while n < buf.shape[0]:
                got = c_read(fd, base + n * row, row)
                if got <= 0:
                    break
                lengths[n] = got
                n += 1
            for k in range(n):
                c_write(partner[fd], base + k * row, lengths[k])
    return waited


def _compiled_loop(pairs: dict[int, int]) -> None:
    """_relay over `pairs` (fd -> the fd its reads go to), until SIGTERM (its default: the
    process ends, also inside the compiled loop)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    epoll = select.epoll()
    partner = np.full(max(pairs) + 1, -1, dtype=np.int64)
    for fd, to in pairs.items():
        os.set_blocking(fd, False)
        epoll.register(fd, select.EPOLLIN)
        partner[fd] = to
    _relay(epoll.fileno(), partner, np.zeros(64 * EVENT_STRIDE, dtype=np.uint8),
           np.zeros((BATCH, 65536 + 128), dtype=np.uint8), np.zeros(BATCH, dtype=np.int64),
           EVENT_STRIDE, -1)


def compile_relay() -> None:
    """Compile _relay (or load it from numba's cache) before a measurement forks it."""
    _relay(-1, np.zeros(1, dtype=np.int64), np.zeros(EVENT_STRIDE, dtype=np.uint8),
           np.zeros((1, 1), dtype=np.uint8), np.zeros(1, dtype=np.int64), EVENT_STRIDE, 0)


@contextlib.contextmanager
def ceiling(kind: str, compiled: bool = False):
    """Two namespaces (yields their names and addresses) joined by a plain copy loop, in
    Python or (`compiled`) in numba."""
    if compiled:
        compile_relay()
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
        if kind == "tap" and compiled:
            children.append(_fork(lambda: _compiled_loop({fds[0]: fds[1], fds[1]: fds[0]})))
        elif kind == "tap":
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
                if compiled:   # write() to a connected socket: the same datagram as sendto
                    sock.connect(peer)
                    children.append(_fork(lambda tap_fd=tap_fd, sock=sock: _compiled_loop(
                        {tap_fd: sock.fileno(), sock.fileno(): tap_fd})))
                    continue
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


def wakeup_us(rounds: int = 1000, interval: float = 0.01) -> list[float]:
    """One-way wake-up times in us, sorted: a child process sleeps in read() on a pipe; every
    `interval` (as the benchmark's pings come) the parent writes a byte and sleeps in read() on
    a second pipe until the child's answer. A round trip is two wake-ups of a sleeping
    process; half of it is one (the system calls' own cost, ~1 us, included)."""
    there_r, there_w = os.pipe()
    back_r, back_w = os.pipe()

    def echo() -> None:
        os.close(there_w)   # so that the parent's close is the end of file here
        while os.read(there_r, 1):
            os.write(back_w, b"x")
    child = _fork(echo)
    times = []
    try:
        for _ in range(rounds):
            time.sleep(interval)
            start = time.perf_counter_ns()
            os.write(there_w, b"x")
            os.read(back_r, 1)
            times.append((time.perf_counter_ns() - start) / 2000)
    finally:
        os.close(there_w)   # the child reads end of file and exits
        os.waitpid(child, 0)
        for fd in (there_r, back_r, back_w):
            os.close(fd)
    return sorted(times)


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
    for kind, compiled in (("tap", False), ("tap", True), ("udp", False), ("udp", True)):
        with ceiling(kind, compiled) as (netns, ips):
            print(kind, "compiled" if compiled else "Python",
                  "TCP Gbit/s", round(iperf_tcp(netns[1], ips[1], netns[0], 3), 2),
                  "UDP kpps", round(iperf_udp_kpps(netns[1], ips[1], netns[0], 3), 1))
    times = wakeup_us()
    print(f"wake-up of a sleeping process: p50 {times[len(times) // 2]:.1f} us, "
          f"p99 {times[len(times) * 99 // 100]:.1f} us")
    sys.exit(0)
