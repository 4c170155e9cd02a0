"""The node the fast-path fuzz targets attack, the input format they share, and the oracle.

One data plane per process (building one costs ~40 ms, a run a few microseconds), put back to
its first state before every input (`Node.reset`): each input is a complete, reproducible
story, however many frames it holds. The cluster has everything the stages branch on: two local
pods, a peer node, Services (ClusterIP, NodePort, LoadBalancer with Local policy, one without
endpoints), a NetworkPolicy that isolates a pod, the outside network, and connection tables
small enough to fill.

Input: records of (selector byte, 2-byte big-endian length, that many bytes). For pod frames
the selector picks the port (pods 0, 1, the uplink) and the bytes are a TAP read (virtio-net
header, then the frame); for overlay datagrams it picks the outer source address (a peer, or
some other address) and the records lie back to back in one receive buffer row, as a UDP GRO
train does.

Under NUMBA_DISABLE_JIT=1 the stages run as Python (for atheris' coverage); libc's memmove,
which copy_bytes calls from compiled code, is then ctypes', and numpy's warning about a division
by zero an error, as compiled code's ZeroDivisionError is.
"""
from __future__ import annotations

import copy
import ctypes
import ipaddress
import struct
import warnings
from pathlib import Path

import numba
import numpy as np

from fastpath import checksum
from fastpath.layout import (
    BATCH, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_UDP_L4, HEADROOM, SLOT, TRAIN_MAX_SEGMENTS,
    VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VXLAN_HEADER_LEN,
)
from fastpath.reasons import COUNTER_NAMES, VERDICTS
from tests.fastpath.test_outside import SERVICES as OUTSIDE_SERVICES
from tests.harness import OVERLAY_TARGET, process_datagrams, process_tap, still_clock
from vrouter.model import config
from vrouter.node.dataplane import VNET_HEADER, Dataplane
from vrouter.node.tables import SEND_SOCKETS

if numba.config.DISABLE_JIT:
    checksum._memmove = lambda dst, src, n: ctypes.memmove(int(dst), int(src), int(n))
    # numpy only warns where compiled code raises ZeroDivisionError
    warnings.filterwarnings("error", "divide by zero", RuntimeWarning)

EXTRA = OUTSIDE_SERVICES + """
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: 10.96.0.11
  selector: {app: nothing}
  ports: [{name: t, port: 80}, {name: u, port: 80, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]
"""
ROOT = Path(__file__).resolve().parents[2]
# small connection tables: quick to put back before each input, and soon full (eviction)
SMALL_TABLES = ("services: {maglevTableSize: 251}\n"
                "  conntrack: {maxEntries: 256, affinityEntries: 64, fragmentEntries: 64}")
MAX_READ = SLOT - HEADROOM + VNET_HDR_LEN   # what one read() of a TAP can return
MAX_TRAIN = SLOT - HEADROOM + VXLAN_HEADER_LEN   # what one recvmmsg message can hold
RECORD = struct.Struct("!BH")
ICMP_ERRORS = (3, 4, 5, 11, 12)


def cluster():
    text = (ROOT / "configs" / "demo.yaml").read_text().replace(
        "serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.96.0.0/16\n  " + SMALL_TABLES) + EXTRA
    return config.parse(text, "demo.yaml", check_host=False)


def records(data: bytes, limit: int) -> list[tuple[int, bytes]]:
    """(selector, bytes) records of an input, at most `limit` of them."""
    out = []
    k = 0
    while k + RECORD.size <= len(data) and len(out) < limit:
        selector, length = RECORD.unpack_from(data, k)
        k += RECORD.size
        out.append((selector, data[k:k + length]))
        k += length
    return out


def encode(items: list[tuple[int, bytes]]) -> bytes:
    """The input format, for seeds and property tests."""
    return b"".join(RECORD.pack(selector, len(body)) + body for selector, body in items)


class Node:
    """A data plane that starts every input from the same state."""

    def __init__(self, name: str):
        self.dp = dp = Dataplane(cluster(), name, clock=still_clock())
        dp.announce()   # as a node does when it starts: the addresses it answers ARP for
        self.ports = sorted(dp.ports) + [dp.uplink]
        self.pod_mtu = dp.cluster.overlay.pod_mtu
        self.vni = dp.cluster.overlay.vni
        self._tables = copy.deepcopy(dp.tables)
        self._slow = {k: copy.deepcopy(v) for k, v in vars(dp.slow).items()
                      if k not in ("counters", "clock")}

    def reset(self) -> None:
        _copy_arrays(self.dp.tables, self._tables)
        for k, v in self._slow.items():
            setattr(self.dp.slow, k, copy.deepcopy(v))

    def verdicts(self) -> tuple[int, int]:
        counts = dict(zip(COUNTER_NAMES, self.dp.counters.tolist()))
        return counts["rx_frames"], sum(counts[name] for name in VERDICTS)


def _copy_arrays(now, then) -> None:
    for field, value in zip(now, then):
        if isinstance(value, np.ndarray):
            np.copyto(field, value)
        elif isinstance(value, tuple):
            _copy_arrays(field, value)


# --- running inputs ---------------------------------------------------------------------------

def run_pod_reads(node: Node, data: bytes) -> list:
    """TAP reads of the input, port by port in order, one batch per run of one port."""
    node.reset()
    reads = [(node.ports[selector % len(node.ports)], body[:MAX_READ])
             for selector, body in records(data, BATCH)]
    emitted = []
    k = 0
    while k < len(reads):   # consecutive reads of one port are one read batch
        port = reads[k][0]
        run = []
        while k < len(reads) and reads[k][0] == port:
            run.append(reads[k][1])
            k += 1
        emitted += process_tap(node.dp, port, run)
    check_accounting(node)
    check_emitted(node, emitted)
    return emitted


def run_datagrams(node: Node, data: bytes) -> list:
    """The input's datagrams, back to back in one receive buffer row."""
    node.reset()
    items = records(data, TRAIN_MAX_SEGMENTS)
    if not items:
        return []
    sources = [int(p.underlay) for p in node.dp.peers] + [int(ipaddress.IPv4Address("127.0.0.99"))]
    source = sources[items[0][0] % len(sources)]
    datagrams, used = [], 0
    for _selector, body in items:
        if used + len(body) > MAX_TRAIN:   # the kernel cuts what does not fit the buffer
            body = body[:MAX_TRAIN - used]
        datagrams.append(body)
        used += len(body)
    emitted = process_datagrams(node.dp, [(source, datagrams)], detail=True)
    check_accounting(node)
    check_emitted(node, emitted)
    return emitted


# --- the oracle -------------------------------------------------------------------------------

def check_accounting(node: Node) -> None:
    """Every frame the fast path took (input frames, and what the gateway sent in answer) was
    counted with exactly one verdict."""
    received, verdicts = node.verdicts()
    assert verdicts == received, f"{received} frames received, {verdicts} verdicts counted"


def check_emitted(node: Node, emitted) -> None:
    for e in emitted:
        if e.target >= OVERLAY_TARGET:
            assert 0 <= e.target - OVERLAY_TARGET < len(node.dp.peers), e.target
            assert 0 <= e.socket < SEND_SOCKETS, e.socket
            check_datagram(node, e.data)
        else:
            assert e.target in node.ports, f"written to port {e.target}"
            check_frame(e.data)
            check_vnet_header(e.vnet, e.data)


def check_datagram(node: Node, datagram: bytes) -> None:
    """A VXLAN datagram as RFC 7348 has it, within the overlay MTU, its inner frame sound."""
    assert len(datagram) >= VXLAN_HEADER_LEN + 14 + 20, f"datagram of {len(datagram)} bytes"
    flags, vni = datagram[0], int.from_bytes(datagram[4:7], "big")
    assert flags == 0x08 and datagram[1:4] == b"\0\0\0" and datagram[7] == 0, datagram[:8].hex()
    assert vni == node.vni, vni
    check_frame(datagram[VXLAN_HEADER_LEN:], node.pod_mtu)


def _ones(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def check_frame(frame: bytes, mtu: int | None = None) -> None:
    """An Ethernet frame vrouter writes: IPv4 or ARP; scapy reads it back to the same bytes; an
    IPv4 header that is whole, has a valid checksum and a total length the frame holds (and,
    going over the overlay, at most the pod MTU: the underlay never fragments)."""
    from scapy.layers.l2 import Ether
    assert len(frame) >= 14, f"frame of {len(frame)} bytes"
    ethertype = int.from_bytes(frame[12:14], "big")
    assert ethertype in (0x0800, 0x0806), f"ethertype {ethertype:#06x}"
    if ethertype != 0x0800:
        assert len(frame) >= 14 + 28, f"ARP frame of {len(frame)} bytes"
        assert bytes(Ether(frame)) == frame, "scapy does not read the frame back to its bytes"
        return
    ip = frame[14:]
    assert len(ip) >= 20 and ip[0] >> 4 == 4, ip[:1].hex()
    ihl = (ip[0] & 0xF) * 4
    total = int.from_bytes(ip[2:4], "big")
    assert 20 <= ihl <= len(ip) and ihl <= total <= len(ip), (ihl, total, len(ip))
    assert _ones(ip[:ihl]) == 0xFFFF, "IPv4 header checksum"
    if ip[9] == 1 and total >= ihl + 8 and ip[ihl] in ICMP_ERRORS:
        # scapy takes the end of a long quote for RFC 4884 extensions: read the error's
        # headers and the packet it quotes apart
        from scapy.layers.inet import IP
        head = 14 + ihl + 8
        assert bytes(Ether(frame[:head])) == frame[:head], "scapy reads the ICMP error otherwise"
        quote = frame[head:]
        if len(quote) >= 20 and quote[0] >> 4 == 4 and 20 <= (quote[0] & 0xF) * 4 <= len(quote):
            assert bytes(IP(quote)) == quote, "scapy reads the quoted packet otherwise"
    else:
        assert bytes(Ether(frame)) == frame, "scapy does not read the frame back to its bytes"
    if mtu is not None:
        assert total <= mtu, f"{total}-byte packet over an MTU of {mtu}"


def check_vnet_header(vnet: bytes, frame: bytes) -> None:
    """The virtio-net header written in front of a frame to a TAP: what the kernel accepts
    (include/linux/virtio_net.h virtio_net_hdr_to_skb): known flags, a checksum offset inside
    the frame at the L4 checksum field, GSO only for TCP/UDP over IPv4 with a segment size."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HEADER.unpack(vnet)
    assert flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID) == 0, f"flags {flags:#x}"
    kind = gso_type & ~GSO_ECN
    assert kind in (GSO_NONE, GSO_TCPV4, GSO_UDP_L4), f"gso_type {gso_type:#x}"
    if flags & VNET_F_NEEDS_CSUM:
        assert int.from_bytes(frame[12:14], "big") == 0x0800
        ihl = (frame[14] & 0xF) * 4
        proto = frame[14 + 9]
        assert csum_start == 14 + ihl, (csum_start, ihl)
        assert (proto, csum_offset) in ((6, 16), (17, 6)), (proto, csum_offset)
        assert csum_start + csum_offset + 2 <= len(frame)
    if kind != GSO_NONE:
        assert flags & VNET_F_NEEDS_CSUM and gso_size > 0, (flags, gso_size)
        assert frame[14 + 9] == (6 if kind == GSO_TCPV4 else 17), (kind, frame[14 + 9])
