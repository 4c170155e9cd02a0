"""The compiled I/O edge (fastpath.io) over real file descriptors, without root or TAP devices.

A TAP is stood in for by a SOCK_SEQPACKET socketpair: like a TAP's fd, one read() returns one
message, the virtio-net header and the frame behind it, and one write() is one frame. The
overlay is the node's real sockets (vrouter.host.underlay.open_overlay: UDP_GRO on the receive
socket, send sockets in the dynamic port range) on unique 127.A.B.x underlay addresses, and each
peer is a plain UDP socket on its own underlay address. The test drives `serve`, `read_tap` and
`recv_overlay` as the data-path thread does, and tests.harness (the same fast path without I/O)
on a twin data plane is the oracle for what must come out.
"""
from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fastpath.groups import Frames
from fastpath.io import (
    BATCH_FRAMES, CAPTURE_RX, CAPTURE_TX, FD_NONE, FD_OVERLAY, FD_WAKE, RX_BYTES, RX_FRAMES,
    ST_BEAT_NS, ST_GATEWAY_N, ST_GONE_PORT, ST_PENDING_N, ST_PENDING_NEXT, ST_PENDING_PORT,
    ST_SPIN_NS, ST_SPIN_UNTIL, ST_TIMEOUT_MS, TX_BYTES, TX_FRAMES, WHY_BEAT, WHY_GATEWAY,
    WHY_PORT_GONE, WHY_SLOW, WHY_TIMEOUT, WHY_WAKE, read_tap, recv_overlay, serve,
)
from fastpath.layout import (
    BATCH, F_ROWS, GSO_TCPV4, HEADROOM, IN_OVERLAY, M_CSUM_OFFSET, M_CSUM_START, M_GSO_SIZE,
    M_GSO_TYPE, M_HDR_LEN, M_IN_PORT, M_LEN, M_ROW, M_SRC_IP, M_START, M_VFLAGS, META_COLS,
    O_KIND, O_SEGMENT, O_SOCKET, OUT_OVERLAY, P_FDB_AGE, VNET_F_NEEDS_CSUM, VXLAN_HEADER_LEN,
)
from fastpath.learning import L_STATIC, LEARNED, learn
from tests.fastpath.test_gso import (
    A_IP, A_MAC, B_IP, B_MAC, GW_A, REMOTE_IP, as_pod_kernel_sends, superframe,
)
from tests.harness import OVERLAY_TARGET, process_datagrams, process_tap, still_clock
from tests.system.cluster import unique_underlay_octets
from vrouter.host.tap import HostError
from vrouter.host.underlay import open_overlay
from vrouter.model import config
from vrouter.node.dataplane import NO_VNET, VNET_HEADER, Dataplane
from vrouter.node.compiling import compile_fast_path
from vrouter.node.datapath import Datapath
from vrouter.node.flowlog import collect
from vrouter.node.nodeio import new_fd_port, new_io, new_rx_ring, new_state, new_tx_ring
from vrouter.node.tables import ip_to_int

SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
WAIT = 5.0            # seconds a datagram on loopback may take to be readable (never, in practice)
READ = 1 << 17        # more than any frame or train


@pytest.fixture(scope="module", autouse=True)
def compiled_serve():
    """serve() compiled (or loaded from numba's cache) before any data plane is built here: its
    first compile takes minutes, long enough for a data plane's peers to count as down."""
    compile_fast_path()


def cluster_on_own_addresses(extra: str = ""):
    """The demo cluster (pods, addresses, MACs of tests/fastpath) on unique underlay addresses,
    so its overlay sockets collide with no running cluster."""
    a, b = unique_underlay_octets()
    text = open("configs/demo.yaml").read().replace("127.0.0.11", f"127.{a}.{b}.1") \
        .replace("127.0.0.12", f"127.{a}.{b}.2")
    return config.parse(text + extra, "demo.yaml", check_host=False)


class Edge:
    """One node's I/O edge: its data plane, overlay sockets, TAP stand-ins and the peers'
    sockets, wired as vrouter.node.datapath wires the real ones."""

    def __init__(self, cluster, node: str, stack: contextlib.ExitStack, peer_gro=False):
        self.dp = dp = Dataplane(cluster, node)
        self.twin = Dataplane(cluster, node, clock=still_clock())   # the oracle: no I/O
        try:
            self.overlay = open_overlay(cluster, dp.node, stack)
        except HostError as exc:
            pytest.fail(f"the node's overlay sockets: {exc}")
        self.epoll = select.epoll()
        stack.callback(self.epoll.close)
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        stack.callback(os.close, self.wake_fd)
        fd_port = new_fd_port()
        fd_port[self.overlay.rx.fileno()] = FD_OVERLAY
        self.epoll.register(self.overlay.rx.fileno(), select.EPOLLIN)
        fd_port[self.wake_fd] = FD_WAKE
        self.epoll.register(self.wake_fd, select.EPOLLIN)
        port = cluster.overlay.port
        self.peers = []   # each peer node's overlay socket, on its underlay address
        for peer in dp.peers:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stack.callback(sock.close)
            sock.bind((str(peer.underlay), port))
            if peer_gro:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            sock.setblocking(False)
            self.peers.append(sock)
        self.io = new_io(self.epoll.fileno(), dp.uplink + 1,
                         [s.fileno() for s in self.overlay.tx],
                         [(str(p.underlay), port) for p in dp.peers], fd_port)
        self.pods = {}    # port -> the pod's end of its TAP stand-in
        for p in dp.ports:
            node_end, pod_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            stack.callback(node_end.close)
            stack.callback(pod_end.close)
            node_end.setblocking(False)
            pod_end.setblocking(False)
            fd_port[node_end.fileno()] = p
            self.io.tap_fds[p] = node_end.fileno()
            self.epoll.register(node_end.fileno(), select.EPOLLIN)
            self.pods[p] = pod_end
        self.node_fds = {p: int(self.io.tap_fds[p]) for p in self.pods}
        self.tx = new_tx_ring()
        self.rx = new_rx_ring(dp.rx)
        self.state = new_state(0, timeout_ms=0)   # no busy-polling; WHY_TIMEOUT once idle
        self.out = dp.out

    def serve(self) -> int:
        # the peers are alive in these tests, however long the machine takes to get here
        self.dp.mark_peers_seen_now()
        dp = self.dp
        return serve(dp.rx, dp.gw, dp.tables, self.out, self.io, self.tx, self.rx, self.state)

    def counters(self) -> dict:
        return self.dp.counter_dict()

    def from_peer(self, k: int = 0) -> socket.socket:
        """A socket on peer k's underlay address, to send VXLAN datagrams to this node."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((str(self.dp.peers[k].underlay), 0))
        return sock

    @property
    def overlay_address(self):
        return self.overlay.rx.getsockname()


@pytest.fixture
def stack():
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture
def node_a(stack):
    return Edge(cluster_on_own_addresses(), "node-a", stack)


@pytest.fixture
def node_b(stack):
    return Edge(cluster_on_own_addresses(), "node-b", stack)


def wait_readable(sock_or_fd, what: str) -> None:
    poller = select.poll()
    poller.register(sock_or_fd, select.POLLIN)
    if not poller.poll(WAIT * 1000):
        pytest.fail(f"{what}: nothing to read within {WAIT:g} s")


def receive(sock: socket.socket, count: int, what: str, ancillary: bool = False) -> list:
    """Exactly `count` messages from a non-blocking socket (and then nothing more)."""
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < count:
        try:
            if ancillary:
                data, anc, _flags, address = sock.recvmsg(READ, 64)
                got.append((data, anc, address))
            else:
                data, address = sock.recvfrom(READ)
                got.append((data, address))
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: {len(got)} of {count} messages within {WAIT:g} s")
            wait_readable(sock, what)
    assert nothing_more(sock), f"{what}: more than {count} messages"
    return got


def nothing_more(sock: socket.socket) -> bool:
    try:
        sock.recv(READ)
    except BlockingIOError:
        return True
    return False


def small_udp(sport: int, dst=REMOTE_IP, dst_mac=GW_A, payload=b"") -> bytes:
    return bytes(Ether(src=A_MAC, dst=dst_mac) / IP(src=A_IP, dst=dst)
                 / UDP(sport=sport, dport=5201) / payload)


# --- TAP to TAP: read(), the fast path, write() with the header in the headroom -------------------

def test_a_frame_from_a_tap_comes_out_of_the_other_port_with_its_virtio_net_header(node_a):
    _sent, raw = superframe(bytes(range(256)) * 100, 1386, dst=B_IP, dst_mac=B_MAC)   # bridged
    routed = NO_VNET + small_udp(7, dst=B_IP, payload=b"routed")                       # via .1
    (bridged_want,) = process_tap(node_a.twin, 0, [raw])
    (routed_want,) = process_tap(node_a.twin, 0, [routed])
    node_a.pods[0].send(raw)
    node_a.pods[0].send(routed)
    assert node_a.serve() == WHY_TIMEOUT
    (bridged, _a), (written, _b) = receive(node_a.pods[1], 2, "port 1")
    assert bridged == raw == bridged_want.vnet + bridged_want.data   # untouched, header kept
    assert written == routed_want.vnet + routed_want.data and written[:10] == NO_VNET
    got = Ether(written[10:])
    assert (got.src, got.dst, got[IP].ttl) == (GW_A, B_MAC, 63)
    assert nothing_more(node_a.pods[0])
    stats = node_a.io.stats.port_stats
    assert stats[0, RX_FRAMES] == 2 and stats[0, RX_BYTES] == len(raw) + len(routed) - 20
    assert stats[1, TX_FRAMES] == 2 and stats[1, TX_BYTES] == len(raw) + len(routed) - 20
    c = node_a.counters()
    assert (c["rx_syscalls"], c["tx_syscalls"], c["tx_frames"]) == (2, 2, 2)
    assert (c["forwarded_l2"], c["forwarded_routed"], c["drop_tx_error"]) == (1, 1, 0)
    assert node_a.io.stats.batch_sizes[1] == 1 and node_a.io.stats.batch_sizes[BATCH_FRAMES] == 2


def test_read_tap_parses_each_virtio_net_header_and_stops_at_a_full_batch(node_a):
    _sent, raw = superframe(b"h" * 3000, 1000)
    fields = VNET_HEADER.unpack(raw[:10])
    for k in range(BATCH + 6):
        node_a.pods[0].send(raw if k == 0 else NO_VNET + small_udp(k))
    counters = node_a.dp.counters
    frames = node_a.dp.rx
    n = read_tap(node_a.node_fds[0], 0, frames, node_a.io, counters)
    assert n == BATCH and frames.meta[0, M_LEN] == len(raw) - 10
    meta = frames.meta[0]
    assert (meta[M_VFLAGS], meta[M_GSO_TYPE], meta[M_HDR_LEN], meta[M_GSO_SIZE],
            meta[M_CSUM_START], meta[M_CSUM_OFFSET]) == fields
    assert fields[:2] == (VNET_F_NEEDS_CSUM, GSO_TCPV4) and fields[3] == 1000
    assert frames.buf[0, HEADROOM:HEADROOM + len(raw) - 10].tobytes() == raw[10:]
    for k in range(1, BATCH):
        assert (frames.meta[k, M_ROW], frames.meta[k, M_START], frames.meta[k, M_IN_PORT]) \
            == (k, HEADROOM, 0)
        start = k * frames.buf.shape[1] + HEADROOM
        assert frames.buf.reshape(-1)[start:start + frames.meta[k, M_LEN]].tobytes() \
            == small_udp(k)
    assert read_tap(node_a.node_fds[0], 0, frames, node_a.io, counters) == 6   # the rest
    assert read_tap(node_a.node_fds[0], 0, frames, node_a.io, counters) == 0   # EAGAIN
    assert node_a.counters()["rx_syscalls"] == BATCH + 6


def test_a_closed_tap_hangs_up_and_writes_to_it_are_counted_tx_errors(node_a):
    node_a.pods[1].close()       # the pod's end is gone: reads see EOF, writes fail (EPIPE)
    assert node_a.serve() == WHY_PORT_GONE and node_a.state[ST_GONE_PORT] == 1
    node_a.epoll.unregister(node_a.node_fds[1])   # what the data-path thread then does
    frame = small_udp(9, dst=B_IP, dst_mac=B_MAC)
    node_a.pods[0].send(NO_VNET + frame)
    assert node_a.serve() == WHY_TIMEOUT
    c = node_a.counters()
    assert (c["forwarded_l2"], c["drop_tx_error"], c["tx_frames"], c["tx_syscalls"]) == (1, 1, 0, 1)
    assert node_a.io.stats.port_stats[1, TX_FRAMES] == 0
    node_a.pods[0].send(NO_VNET + small_udp(10))   # to the overlay: still served
    assert node_a.serve() == WHY_TIMEOUT
    ((datagram, _source),) = receive(node_a.peers[0], 1, "node-b")
    assert Ether(bytes(VXLAN(datagram).payload))[UDP].sport == 10


class StandInTap:
    """What Datapath needs of a TapPort: the fd, and write() for the slow path's frames."""
    uso = False

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()

    def write(self, frame: bytes) -> None:
        os.write(self.fd, NO_VNET + frame)


def test_the_data_path_thread_stops_polling_a_gone_tap_tells_the_node_and_serves_the_others(node_a, stack):
    """Without that, epoll would report the fd ready for ever and serve() would spin."""
    for fd in node_a.node_fds.values():   # this data path polls the TAPs itself
        node_a.epoll.unregister(fd)
    taps = {}
    for port in node_a.pods:
        node_end, pod_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stack.callback(node_end.close)
        stack.callback(pod_end.close)
        node_end.setblocking(False)
        pod_end.setblocking(False)
        taps[port] = StandInTap(node_end)
        node_a.pods[port] = pod_end
    datapath = Datapath(node_a.dp, taps, node_a.overlay, node_a.dp.cluster.overlay.port, 0)
    datapath.start()
    stack.callback(datapath.stop)
    gone = []
    datapath.on_port_gone = gone.append   # the node detaches the pod when told
    node_a.pods[1].close()
    # epoll reports the hang-up and the request's wake-up together, or the hang-up first:
    # either way the thread has stopped polling port 1 before it runs the request
    assert 1 not in datapath.run_blocking(lambda: sorted(datapath.taps), WAIT)
    assert gone == [1] and datapath.failure is None
    node_a.pods[0].send(NO_VNET + small_udp(11))
    ((datagram, _source),) = receive(node_a.peers[0], 1, "node-b")
    assert Ether(bytes(VXLAN(datagram).payload))[UDP].sport == 11
    # the node's detach finds the port unserved already
    assert datapath.run_blocking(lambda: datapath.remove_tap(1), WAIT) is None


# --- to the overlay: sendmmsg per send socket, GSO trains with UDP_SEGMENT --------------------------

def test_small_datagrams_go_out_with_one_sendmmsg_per_send_socket(node_a):
    frames = [NO_VNET + small_udp(20000 + k) for k in range(BATCH)]
    want = process_tap(node_a.twin, 0, frames)
    for f in frames:
        node_a.pods[0].send(f)
    assert node_a.serve() == WHY_TIMEOUT
    rows = node_a.out.rows[:node_a.out.fill[F_ROWS]]
    used = set(rows[rows[:, O_KIND] == OUT_OVERLAY, O_SOCKET].tolist())
    assert len(used) > 1                       # 64 flows spread over the 8 sockets
    c = node_a.counters()
    assert c["tx_syscalls"] == len(used) and c["tx_datagrams"] == BATCH
    got = receive(node_a.peers[0], BATCH, "node-b")
    ports = node_a.overlay.source_ports
    assert sorted((d, a[1]) for d, a in got) == sorted((e.data, ports[e.socket]) for e in want)
    assert all(a[0] == str(node_a.dp.node.underlay) for _d, a in got)
    assert {e.target for e in want} == {OVERLAY_TARGET}
    assert node_a.io.stats.port_stats[node_a.dp.uplink + 1, TX_FRAMES] == BATCH


def test_a_gso_train_goes_out_in_one_sendmmsg_and_arrives_as_datagrams_of_its_segment_size(node_a):
    _sent, raw = superframe(bytes(range(256)) * 40, 1386)   # 10240 bytes: 8 segments
    want = [e.data for e in process_tap(node_a.twin, 0, [raw])]
    node_a.pods[0].send(raw)
    assert node_a.serve() == WHY_TIMEOUT
    rows = node_a.out.rows[:node_a.out.fill[F_ROWS]]
    (segment,) = rows[rows[:, O_KIND] == OUT_OVERLAY, O_SEGMENT].tolist()
    assert segment == VXLAN_HEADER_LEN + 14 + 20 + 32 + 1386
    c = node_a.counters()
    assert (c["tx_syscalls"], c["tx_datagrams"], c["gso_segments"]) == (1, 8, 8)
    got = [d for d, _a in receive(node_a.peers[0], 8, "node-b")]
    assert got == want and [len(d) for d in got[:-1]] == [segment] * 7
    assert len(got[-1]) == VXLAN_HEADER_LEN + 14 + 20 + 32 + 10240 - 7 * 1386


def test_a_receiver_with_udp_gro_gets_the_train_in_one_read_with_its_segment_size(stack):
    node_a = Edge(cluster_on_own_addresses(), "node-a", stack, peer_gro=True)
    _sent, raw = superframe(bytes(range(256)) * 40, 1386)
    want = [e.data for e in process_tap(node_a.twin, 0, [raw])]
    node_a.pods[0].send(raw)
    assert node_a.serve() == WHY_TIMEOUT
    ((train, ancillary, _source),) = receive(node_a.peers[0], 1, "node-b", ancillary=True)
    assert train == b"".join(want)
    assert [(level, kind, struct.unpack("=i", data[:4])[0]) for level, kind, data in ancillary] \
        == [(SOL_UDP, UDP_GRO, len(want[0]))]


def test_a_send_socket_that_cannot_send_counts_each_message_as_a_tx_error(node_a):
    for sock in node_a.overlay.tx:
        with contextlib.suppress(OSError):   # ENOTCONN, but sends fail from now on (EPIPE)
            sock.shutdown(socket.SHUT_WR)
    _sent, raw = superframe(b"t" * 5000, 1386)            # one GSO train of 4 datagrams
    node_a.pods[0].send(raw)
    for k in range(3):
        node_a.pods[0].send(NO_VNET + small_udp(30000 + k))
    assert node_a.serve() == WHY_TIMEOUT
    rows = node_a.out.rows[:node_a.out.fill[F_ROWS]]
    messages = rows[rows[:, O_KIND] == OUT_OVERLAY]
    sockets = len(set(messages[:, O_SOCKET].tolist()))
    c = node_a.counters()
    # a failed sendmmsg counts every message it had left (a GSO train is one message)
    assert len(messages) == 4 and c["drop_tx_error"] == 4 and c["to_overlay"] == 4
    assert c["tx_syscalls"] == sockets
    assert nothing_more(node_a.peers[0])


# --- from the overlay: recvmmsg, GRO trains, writev() of header + frame ------------------------------

def overlay_datagrams(edge: Edge, payload: bytes, mss: int) -> list[bytes]:
    """What node-a sends to node-b for one super-frame of web-1 to web-3 (the twin of a
    node-a edge of the same cluster computes it)."""
    node_a = Dataplane(edge.dp.cluster, "node-a", clock=still_clock())
    _sent, raw = superframe(payload, mss)
    return [e.data for e in process_tap(node_a, 0, [raw])]


def send_train(sock: socket.socket, datagrams: list[bytes], to) -> None:
    """The datagrams as one UDP GSO send (all but the last of one size), as a vrouter peer
    sends them."""
    sock.sendmsg([b"".join(datagrams)],
                 [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(datagrams[0])))], 0, to)


def test_a_gro_train_from_a_peer_is_split_coalesced_and_written_as_one_super_frame(node_b, stack):
    datagrams = overlay_datagrams(node_b, bytes(range(256)) * 30, 1386)   # 6 segments
    (want,) = process_datagrams(node_b.twin, [(ip_to_int(str(node_b.dp.peers[0].underlay)),
                                                datagrams)], detail=True)
    sender = node_b.from_peer()
    stack.callback(sender.close)
    send_train(sender, datagrams, node_b.overlay_address)
    wait_readable(node_b.overlay.rx, "node-b's overlay socket")
    assert node_b.serve() == WHY_TIMEOUT
    ((written, _a),) = receive(node_b.pods[1], 1, "web-3")
    assert written == want.vnet + want.data      # writev: the header, then the frame
    assert VNET_HEADER.unpack(written[:10])[1:4] == (GSO_TCPV4, 14 + 20 + 32, 1386)
    assert len(Ether(written[10:])[TCP].payload) == 7680
    c = node_b.counters()
    assert (c["rx_syscalls"], c["rx_frames"], c["from_overlay"], c["gro_coalesced"]) \
        == (1, 6, 6, 5)
    stats = node_b.io.stats.port_stats[node_b.dp.uplink + 1]
    assert stats[RX_FRAMES] == 6 and stats[RX_BYTES] == sum(len(d) for d in datagrams)


def test_frames_sharing_a_train_row_are_each_written_intact(node_b, stack):
    """Datagrams of one GRO train lie back to back in one buffer row: writing the header in
    front of a frame would overwrite the end of the datagram before it."""
    src_mac, dst_mac = "0e:76:0a:f4:01:00", "0e:76:0a:f4:02:00"
    inner = [bytes(VXLAN(vni=1, flags=0x08) / Ether(src=src_mac, dst=dst_mac)
                   / IP(src=A_IP, dst=dst, ttl=63) / UDP(sport=5000 + k, dport=53)
                   / (bytes([k]) * 20)) for k, dst in enumerate(["10.244.2.3", "10.244.2.2"] * 3)]
    source = ip_to_int(str(node_b.dp.peers[0].underlay))
    want = process_datagrams(node_b.twin, [(source, inner)], detail=True)
    assert len(want) == 6 and {e.target for e in want} == {0, 1}
    sender = node_b.from_peer()
    stack.callback(sender.close)
    send_train(sender, inner, node_b.overlay_address)
    wait_readable(node_b.overlay.rx, "node-b's overlay socket")
    assert node_b.serve() == WHY_TIMEOUT
    for port in (0, 1):
        got = [d for d, _a in receive(node_b.pods[port], 3, f"port {port}")]
        assert got == [e.vnet + e.data for e in want if e.target == port]
        assert all(d[:10] == NO_VNET for d in got)
    meta, buf = node_b.dp.rx.meta, node_b.dp.rx.buf   # and no write clobbered its neighbour
    for i, e in enumerate(want):
        row, start, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
        assert row == 0 and buf[row, start:start + length].tobytes() == e.data, i


def test_recv_overlay_splits_trains_and_cuts_one_longer_than_the_batch(node_b, stack):
    sender = node_b.from_peer()
    stack.callback(sender.close)
    address = node_b.overlay_address
    trains = [[bytes([k, j]) * 30 for j in range(n)] + [b"end" * 5] for k, n in ((1, 9), (2, 11))]
    for train in trains:   # 10 and 12 datagrams, the last of each shorter
        send_train(sender, train, address)
    sender.sendto(b"single" * 10, address)
    wait_readable(node_b.overlay.rx, "node-b's overlay socket")
    frames = Frames(node_b.dp.rx.buf, np.zeros((16, META_COLS), dtype=np.int64))   # 16 frames
    n = recv_overlay(node_b.overlay.rx.fileno(), frames, node_b.rx, node_b.io, node_b.dp.counters)
    assert n == 16
    c = node_b.counters()
    assert (c["rx_syscalls"], c["rx_frames"], c["drop_no_room"]) == (1, 7, 7)   # 10 + 12 + 1 - 16
    meta, buf = frames.meta, frames.buf
    peer = ip_to_int(str(node_b.dp.peers[0].underlay))
    expected = [(0, d) for d in trains[0]] + [(1, d) for d in trains[1][:6]]
    offsets = {0: 0, 1: 0}
    for i, (row, datagram) in enumerate(expected):
        start = HEADROOM + offsets[row]
        offsets[row] += len(datagram)
        assert (meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN], meta[i, M_IN_PORT],
                meta[i, M_SRC_IP]) == (row, start, len(datagram) - 8, IN_OVERLAY, peer), i
        assert buf[row, start - 8:start - 8 + len(datagram)].tobytes() == datagram
    # the single datagram was in the same recvmmsg but found no frame left: counted, not read
    assert nothing_more(node_b.overlay.rx)


# --- serve(): why it returns -------------------------------------------------------------------------

def test_the_wake_eventfd_returns_why_wake(node_a):
    assert node_a.serve() == WHY_TIMEOUT
    os.eventfd_write(node_a.wake_fd, 1)
    assert node_a.serve() == WHY_WAKE
    assert node_a.counters()["wakeups"] == 1


def arp_request(k: int) -> bytes:
    return bytes(Ether(src=A_MAC, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc=A_MAC, psrc=A_IP, pdst=f"10.244.1.{100 + k}"))


def test_slow_path_frames_return_why_slow_and_the_pending_batch_resumes(node_a):
    """Twelve frames in one read batch, every other one ARP for the slow path. With room for
    only three slow-path copies the batch stops after the third and resumes where it stopped."""
    frames = [arp_request(k) if k % 2 == 0 else small_udp(k, dst=B_IP, dst_mac=B_MAC)
              for k in range(12)]
    assert {len(f) for f in frames} == {42}
    node_a.out = node_a.dp.out._replace(slow=np.zeros((1, 3 * 42), dtype=np.uint8))
    for f in frames:
        node_a.pods[0].send(NO_VNET + f)

    def bridged(count):
        return [Ether(d[10:])[UDP].sport for d, _a in receive(node_a.pods[1], count, "port 1")]

    def slow():
        items = node_a.dp.slow_items(node_a.out)
        node_a.out.fill[:] = 0      # as the data path does once it has the slow path's frames
        return [frame for frame, port, _reason in items if port == 0]

    assert node_a.serve() == WHY_SLOW
    assert slow() == frames[0:5:2] and bridged(2) == [1, 3]
    pending = node_a.state[[ST_PENDING_PORT, ST_PENDING_NEXT, ST_PENDING_N]].tolist()
    assert pending == [0, 5, 12]
    assert node_a.serve() == WHY_SLOW
    assert slow() == frames[6:11:2] and bridged(3) == [5, 7, 9]
    assert node_a.state[[ST_PENDING_PORT, ST_PENDING_NEXT]].tolist() == [0, 11]
    assert node_a.serve() == WHY_TIMEOUT
    assert slow() == [] and bridged(1) == [11]
    assert node_a.state[ST_PENDING_PORT] == FD_NONE
    c = node_a.counters()
    assert (c["rx_frames"], c["slow_arp"], c["forwarded_l2"], c["rx_syscalls"]) == (12, 6, 6, 12)


def test_the_gateways_batch_is_forwarded_and_written_alone_why_gateway(node_a):
    node_a.state[ST_GATEWAY_N] = node_a.dp.load_gateway(node_a.dp.keepalive_frames)
    assert node_a.serve() == WHY_GATEWAY
    ((datagram, source),) = receive(node_a.peers[0], 1, "node-b")
    inner = Ether(bytes(VXLAN(datagram).payload))
    assert (inner[IP].src, inner[IP].dst, inner[ICMP].type) == ("10.244.1.0", "10.244.2.0", 0)
    assert source[0] == str(node_a.dp.node.underlay)
    assert node_a.state[ST_GATEWAY_N] == 0 and node_a.counters()["wakeups"] == 0


def test_it_busy_polls_after_a_pods_frame_but_not_after_a_peers_keepalive(node_a, stack):
    """Keepalives arrive ~60 times a second at each node of a 32-node cluster: spinning after
    each would keep 32 idle nodes at a quarter of a core."""
    node_a.state = new_state(0, timeout_ms=0)
    node_a.state[ST_SPIN_NS] = 1   # 1 ns: every wake-up ends a "quiet spell"; the window shows
    peer = node_a.dp.peers[0]
    keepalive = bytes(VXLAN(vni=1, flags=0x08)
                      / Ether(src=peer.vtep_mac, dst=node_a.dp.node.vtep_mac)
                      / IP(src=str(peer.pod_cidr.network_address),
                           dst=str(node_a.dp.node.pod_cidr.network_address))
                      / ICMP(id=0x7672, seq=0))
    sender = node_a.from_peer()
    stack.callback(sender.close)
    sender.sendto(keepalive, node_a.overlay_address)
    wait_readable(node_a.overlay.rx, "node-a's overlay socket")
    assert node_a.serve() == WHY_TIMEOUT
    ((answer, _source),) = receive(node_a.peers[0], 1, "node-b")   # answered, from the VTEP
    assert Ether(bytes(VXLAN(answer).payload))[ICMP].type == 0
    assert node_a.state[ST_SPIN_UNTIL] == 0   # no window opened
    node_a.pods[0].send(NO_VNET + small_udp(7, dst=B_IP))   # a pod's frame: its answer may follow
    assert node_a.serve() == WHY_TIMEOUT
    receive(node_a.pods[1], 1, "port 1")
    assert node_a.state[ST_SPIN_UNTIL] > 0


def keepalive_of(datagram: bytes):
    inner = Ether(bytes(VXLAN(datagram).payload))
    return inner[IP].src, inner[IP].dst, inner[ICMP].type, inner[ICMP].id


def test_serve_beats_by_itself_busy_or_idle_and_returns_only_when_a_peer_changes(node_a):
    """The beat (a keepalive to every peer, expired state freed) runs inside serve: first thing
    when it is due, also while traffic keeps serve busy, and waking it from a sleep longer than
    the time left; then on the next whole second. serve returns to Python for it only when a
    peer's liveness changed (the first beat, which knows no peer yet, reports them all)."""
    keepalive = ("10.244.1.0", "10.244.2.0", 0, 0x7672)   # a one-way heartbeat to a vrouter
    node_a.pods[0].send(NO_VNET + small_udp(7, dst=B_IP))
    node_a.state[ST_BEAT_NS] = 1   # long due
    assert node_a.dp.tables.peers.peer_up.tolist() == [-1]
    assert node_a.serve() == WHY_BEAT
    assert node_a.dp.tables.peers.peer_up.tolist() == [1]   # node-b: up
    ((datagram, _source),) = receive(node_a.peers[0], 1, "node-b")
    assert keepalive_of(datagram) == keepalive
    assert node_a.counters()["rx_syscalls"] == 0   # it beat first: the pod's frame waits
    beat = int(node_a.state[ST_BEAT_NS])
    assert beat % 10**9 == 0 and 0 < beat - time.monotonic_ns() <= 10**9
    node_a.state[ST_BEAT_NS] = 0   # no beat
    assert node_a.serve() == WHY_TIMEOUT and node_a.counters()["rx_syscalls"] == 1
    assert collect(node_a.dp) is not None   # the pod's flow, drained as the node's loop does
    # due in 50 ms, while serve would sleep 250 ms longer: it wakes for the beat, and since
    # nothing changed (and no flow or capture waits) it does not return for it; it sleeps on
    # (each sleep at most the timeout) and returns at the timeout, before the next beat: the
    # next whole second after `due`, moved past a nearer one if need be
    started = time.monotonic_ns()
    due = started + 50_000_000
    next_second = (due // 10**9 + 1) * 10**9
    if next_second - due < 400_000_000:
        due = next_second + 50_000_000   # then the next beat is 950 ms after due
    node_a.state[ST_TIMEOUT_MS] = (due - started) // 1_000_000 + 250   # 300-750 ms
    node_a.state[ST_BEAT_NS] = due
    assert node_a.serve() == WHY_TIMEOUT
    assert time.monotonic_ns() >= due
    assert int(node_a.state[ST_BEAT_NS]) > due and node_a.state[ST_BEAT_NS] % 10**9 == 0
    beats = receive(node_a.peers[0], 1, "node-b")   # the one beat's keepalive
    assert [keepalive_of(d) for d, _ in beats] == [keepalive]


def test_the_beat_frees_what_expired_and_notices_a_silent_peer(node_a):
    """What the beat frees (housekeeping: a learned MAC past the MAC table's age) and a peer
    silent longer than P_PEER_DEAD_AFTER: serve returns WHY_BEAT, and peer_up says which."""
    dp = node_a.dp
    t = dp.tables
    age = int(t.params[P_FDB_AGE])
    # a MAC port 0 taught the node, last seen longer ago than the MAC table keeps one
    assert learn(t.bridge.fdb_keys, t.bridge.fdb_vals, 0x02AABBCCDDEE, 0, dp.now - age - 5, age,
                 t.bridge.fdb_owned, 0, 100) == LEARNED
    assert t.bridge.fdb_owned[0] == 1
    t.peers.peer_up[:] = 1
    node_a.state[ST_BEAT_NS] = 1
    # Edge.serve marks the peers seen now; this one goes around it: node-b silent for a minute
    dp.tables.peers.peer_seen[:] = dp.now - 60
    assert serve(dp.rx, dp.gw, dp.tables, node_a.out, node_a.io, node_a.tx, node_a.rx,
                 node_a.state) == WHY_BEAT
    assert t.peers.peer_up.tolist() == [0]
    assert not ((t.bridge.fdb_keys != 0) & (t.bridge.fdb_vals[:, L_STATIC] == 0)).any()
    assert t.bridge.fdb_owned.sum() == 0   # recounted


def test_a_capture_copies_frames_as_read_and_as_written(node_a):
    cap = node_a.io.capture
    cap.active[0] = 1
    cap.points[0] = CAPTURE_RX
    cap.points[node_a.dp.uplink + 1] = CAPTURE_TX   # the overlay, as sent: the inner frames
    frame = as_pod_kernel_sends(Ether(src=A_MAC, dst=GW_A) / IP(src=A_IP, dst=REMOTE_IP)
                                / UDP(sport=1, dport=2) / b"seen")
    node_a.pods[0].send(frame)
    assert node_a.serve() == WHY_TIMEOUT
    (datagram, _a), = receive(node_a.peers[0], 1, "node-b")
    rows = cap.index[:cap.fill[0]]
    assert rows[:, 2].tolist() == [0 * 2, (node_a.dp.uplink + 1) * 2 + 1]
    data = cap.data[0]
    read = data[rows[0, 0]:rows[0, 0] + rows[0, 1]].tobytes()
    sent = data[rows[1, 0]:rows[1, 0] + rows[1, 1]].tobytes()
    assert read == frame[10:] and sent == datagram[VXLAN_HEADER_LEN:]
    assert cap.fill[2] == 0
