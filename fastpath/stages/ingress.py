"""Ingress checks: is this a frame we forward, and may its port send it?

Frames from pods and the outside port come from TAPs with virtio-net offloads: their header
(columns M_V*, M_GSO_*, M_CSUM_*, M_HDR_LEN) is checked against the packet itself, never
trusted: lengths are taken from the IPv4 and TCP headers.
"""
import numpy as np

from fastpath import learning
from fastpath.checksum import read16, read32, read48
from fastpath.ipv4 import ipv4_problem, l4_header_len
from fastpath.jit import inlined, internal
from fastpath.layout import (
    ACT_DROP, ACT_SLOW, ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, GSO_ECN, GSO_NONE, GSO_TCPV4,
    GSO_UDP_L4, M_CSUM_OFFSET, M_CSUM_START, M_GSO_SIZE, M_GSO_TYPE, M_HDR_LEN, M_IN_PORT, M_LEN,
    M_OWN, M_ROW, M_START, M_VFLAGS, P_FDB_AGE, P_FDB_PORT_LIMIT, VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
)
from fastpath.reasons import (
    R_DROP_BAD_GSO_SIZE, R_DROP_BAD_VNET_HEADER, R_DROP_DHCP_SERVER, R_DROP_IPV6,
    R_DROP_OVERSIZE, R_DROP_RUNT, R_DROP_SOURCE_MAC_MULTICAST, R_DROP_SPOOFED_IP,
    R_DROP_SPOOFED_MAC, R_DROP_UNKNOWN_ETHERTYPE, R_FDB_LEARN_PORT_LIMIT, R_FDB_LEARN_TABLE_FULL,
    R_GSO_SUPERFRAMES,
    R_SLOW_ARP,
)
from fastpath.stages import NEXT, finish

GSO_MIN_SIZE = 48        # Linux's TCP_MIN_SND_MSS: no smaller segment is ever asked for
GSO_MAX_SEGMENTS = 1024  # what one super-frame may be cut into (64 KiB / 64 bytes)



@internal
def frame_problem(buf, row, s, length):
    """-1 if the Ethernet frame is acceptable, else the drop reason."""
    if length < ETH_LEN:
        return R_DROP_RUNT
    if s + length >= buf.shape[1]:
        return R_DROP_OVERSIZE   # the read filled the whole slot: the frame was truncated
    if (read48(buf, row, s + 6) >> 40) & 1:
        return R_DROP_SOURCE_MAC_MULTICAST
    return -1


@internal
def ethertype_verdict(ethertype):
    """-1 for IPv4 (go on), else the verdict reason: ARP to the slow path, the rest dropped."""
    if ethertype == ETH_P_IP:
        return -1
    if ethertype == ETH_P_ARP:
        return R_SLOW_ARP
    if ethertype == ETH_P_IPV6:
        return R_DROP_IPV6
    return R_DROP_UNKNOWN_ETHERTYPE


@internal
def vnet_problem(buf, meta, i):
    """-1 if the frame's virtio-net header agrees with the packet, else R_DROP_BAD_VNET_HEADER.

    The IPv4 header has passed ipv4_problem. A partial checksum must sit where the TCP/UDP
    checksum is; a super-frame must be TCP (TSO) or UDP (USO) with a segment size no larger
    than its payload, exactly as long as its IPv4 header says, and a header length (a hint we
    never use) that is not a lie about the frame."""
    flags = meta[i, M_VFLAGS]
    gso = meta[i, M_GSO_TYPE]
    if flags == 0 and gso == GSO_NONE:
        return -1
    bad = R_DROP_BAD_VNET_HEADER
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    if flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID) or read16(buf, row, s + 12) != ETH_P_IP:
        return bad
    ip = s + ETH_LEN
    ihl = np.int64(buf[row, ip] & 0x0F) * 4
    proto = buf[row, ip + 9]
    total = read16(buf, row, ip + 2)
    fragment = (read16(buf, row, ip + 6) & 0x3FFF) != 0
    l4_len = l4_header_len(buf, row, ip)
    if (proto == 6 and l4_len < 20) or ihl + l4_len > total:
        return bad
    if flags & VNET_F_NEEDS_CSUM:
        start, offset = meta[i, M_CSUM_START], meta[i, M_CSUM_OFFSET]
        if start + offset + 2 > length or fragment or start != ETH_LEN + ihl:
            return bad
        if not ((proto == 6 and offset == 16) or (proto == 17 and offset == 6)):
            return bad
    if gso == GSO_NONE:
        return -1
    kind = gso & ~GSO_ECN
    if not ((kind == GSO_TCPV4 and proto == 6) or (gso == GSO_UDP_L4 and proto == 17)):
        return bad
    if not flags & VNET_F_NEEDS_CSUM or ETH_LEN + total != length:
        return bad
    headers = ETH_LEN + ihl + l4_len
    size = meta[i, M_GSO_SIZE]
    hdr_len = meta[i, M_HDR_LEN]
    if size <= 0 or size > length - headers:
        return bad
    # a segment size no kernel sends (TCP_MIN_SND_MSS is 48) would cut 64 KiB into a thousand
    # segments: refused before it costs output rows
    if size < GSO_MIN_SIZE or (length - headers + size - 1) // size > GSO_MAX_SEGMENTS:
        return R_DROP_BAD_GSO_SIZE
    if hdr_len > length or (hdr_len != 0 and hdr_len < headers):
        return bad
    return -1


@internal
def packet_problem(buf, meta, i):
    """-1 if a TAP frame carrying IPv4 has a sane header and a virtio-net header that agrees
    with it, else the drop reason."""
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    problem = ipv4_problem(buf, row, s + ETH_LEN, length - ETH_LEN)
    if problem < 0:
        problem = vnet_problem(buf, meta, i)
    return problem


@internal
def pod_in(buf, meta, i, now, params, counters, ports, bridge):
    """A frame from a pod's TAP: well-formed, from the pod's own MAC and IP; learn its MAC."""
    row, s, length, in_port = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN], meta[i, M_IN_PORT]
    problem = frame_problem(buf, row, s, length)
    if problem >= 0:
        return finish(meta, i, ACT_DROP, 0, problem)
    src_mac = read48(buf, row, s + 6)
    fdb_keys, fdb_vals = bridge.fdb_keys, bridge.fdb_vals
    j = learning.find(fdb_keys, fdb_vals, src_mac, now, params[P_FDB_AGE])
    if j >= 0 and fdb_vals[j, learning.L_STATIC] == 1 and fdb_vals[j, learning.L_VALUE] != in_port:
        return finish(meta, i, ACT_DROP, 0, R_DROP_SPOOFED_MAC)
    verdict = ethertype_verdict(read16(buf, row, s + 12))
    if verdict >= 0:
        if meta[i, M_VFLAGS] != 0 or meta[i, M_GSO_TYPE] != GSO_NONE:
            return finish(meta, i, ACT_DROP, 0, R_DROP_BAD_VNET_HEADER)
        return finish(meta, i, ACT_SLOW if verdict == R_SLOW_ARP else ACT_DROP, 0, verdict)
    problem = packet_problem(buf, meta, i)
    if problem >= 0:
        return finish(meta, i, ACT_DROP, 0, problem)
    ip = s + ETH_LEN
    if read32(buf, row, ip + 12) != ports.port_ip[in_port]:
        return finish(meta, i, ACT_DROP, 0, R_DROP_SPOOFED_IP)
    if rogue_dhcp(buf, row, ip):
        return finish(meta, i, ACT_DROP, 0, R_DROP_DHCP_SERVER)
    # the frame is valid: learn where its source MAC lives (a pod's own MAC is static)
    if j < 0 or fdb_vals[j, learning.L_STATIC] == 0:
        learned = learning.learn(fdb_keys, fdb_vals, src_mac, in_port, now, params[P_FDB_AGE],
                                 bridge.fdb_owned, in_port, params[P_FDB_PORT_LIMIT])
        if learned == learning.TABLE_FULL:
            counters[R_FDB_LEARN_TABLE_FULL] += 1
        elif learned == learning.OWNER_FULL:
            counters[R_FDB_LEARN_PORT_LIMIT] += 1
    if meta[i, M_GSO_TYPE] != GSO_NONE:
        counters[R_GSO_SUPERFRAMES] += 1
    return NEXT


@inlined
def rogue_dhcp(buf, row, ip):
    """A DHCP server's answer (UDP 67 -> 68): pods get their address from the node, and one
    that answers others' DHCP could hand them its own gateway (the CVE-2020-10749 class)."""
    if buf[row, ip + 9] != 17 or (read16(buf, row, ip + 6) & 0x1FFF) != 0:
        return False
    l4 = ip + np.int64(buf[row, ip] & 0x0F) * 4
    return read16(buf, row, l4) == 67 and read16(buf, row, l4 + 2) == 68


@internal
def gateway_in(buf, meta, i):
    """A packet the node's slow path built (echo reply, ICMP error, keepalive): routed like any
    other, but it is not forwarded (no TTL decrement) and may not open Service connections."""
    if meta[i, M_LEN] < ETH_LEN + 20:
        return finish(meta, i, ACT_DROP, 0, R_DROP_RUNT)
    meta[i, M_OWN] = 1
    return NEXT
