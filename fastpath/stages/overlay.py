"""The VXLAN overlay (RFC 7348): accepting datagrams from peers, and addressing frames to them.

The node's UDP sockets carry the datagrams; the kernel writes the outer IPv4/UDP headers. A
datagram's VXLAN header sits right in front of the inner frame (M_START - 8)."""
import numpy as np

from fastpath import hashtable
from fastpath.checksum import read16, read32, read48, write48
from fastpath.ipv4 import complete_if_partial, decrement_ttl, flow_hash, header_len, ipv4_problem, l4_header_len
from fastpath.jit import inlined, internal
from fastpath.layout import (
    ACT_DROP, ACT_OVERLAY, ACT_SLOW, ETH_LEN, ETH_P_IP, GSO_NONE, M_GSO_SIZE,
    M_GSO_TYPE, M_LEN, M_OUT, M_OWN, M_ROW, M_SOCKET, M_SRC_IP, M_START, P_LOCAL_MASK,
    P_LOCAL_NET, P_PEER_DEAD_AFTER, P_POD_MTU, P_SOCKETS, P_VNI, P_VTEP_MAC, VXLAN_HEADER_LEN,
)
from fastpath.reasons import (
    R_DROP_OVERLAY_BAD_FLAGS, R_DROP_OVERLAY_BAD_INNER, R_DROP_OVERLAY_BAD_VNI,
    R_DROP_OVERLAY_PEER_DOWN, R_DROP_OVERLAY_SPOOFED_SOURCE, R_DROP_OVERLAY_TRUNCATED, R_DROP_OVERLAY_UNKNOWN_SOURCE,
    R_FROM_OVERLAY, R_SLOW_FRAG_NEEDED, R_TO_OVERLAY,
)
from fastpath.stages import NEXT, finish


@internal
def overlay_in(buf, meta, i, now, params, counters, peers):
    """Validate a VXLAN datagram from a peer and its inner frame, which must be IPv4 for our
    VTEP and our podCIDR (no transit routing)."""
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    if length < ETH_LEN:
        return finish(meta, i, ACT_DROP, 0, R_DROP_OVERLAY_TRUNCATED)
    j = hashtable.find(peers.peer_keys, meta[i, M_SRC_IP])
    if j < 0:
        return finish(meta, i, ACT_DROP, 0, R_DROP_OVERLAY_UNKNOWN_SOURCE)
    v = s - VXLAN_HEADER_LEN
    if (buf[row, v] != 0x08 or buf[row, v + 1] != 0 or buf[row, v + 2] != 0
            or buf[row, v + 3] != 0 or buf[row, v + 7] != 0):
        return finish(meta, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_FLAGS)
    vni = (np.int64(buf[row, v + 4]) << 16) | (np.int64(buf[row, v + 5]) << 8) \
        | np.int64(buf[row, v + 6])
    if vni != params[P_VNI]:
        return finish(meta, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_VNI)
    peer = peers.peer_index[j]
    peers.peer_seen[peer] = now   # a datagram from a peer proves it is alive
    if length < ETH_LEN + 20 or read16(buf, row, s + 12) != ETH_P_IP \
            or read48(buf, row, s) != params[P_VTEP_MAC]:
        return finish(meta, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_INNER)
    ip = s + ETH_LEN
    if ipv4_problem(buf, row, ip, length - ETH_LEN) >= 0:
        return finish(meta, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_INNER)
    if (read32(buf, row, ip + 16) & params[P_LOCAL_MASK]) != params[P_LOCAL_NET]:
        return finish(meta, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_INNER)
    # a peer speaks for its own pods and itself only: anything else is forged (any local user
    # can send from a peer's 127.0.0.x)
    src = read32(buf, row, ip + 12)
    if (src & peers.peer_mask[peer]) != peers.peer_net[peer] and src != peers.peer_address[peer]:
        return finish(meta, i, ACT_DROP, 0, R_DROP_OVERLAY_SPOOFED_SOURCE)
    counters[R_FROM_OVERLAY] += 1
    if peers.peer_kernel[peer]:   # only a Linux VXLAN device hands over partial checksums
        complete_if_partial(buf, row, ip, counters)
    return NEXT   # replies of connections this node translated, then routing


@internal
def segment_ip_len(buf, meta, i, ip):
    """The IPv4 length of the largest packet this frame puts on the wire: itself, or for a
    super-frame one full segment (headers + gso_size)."""
    row = meta[i, M_ROW]
    if meta[i, M_GSO_TYPE] == GSO_NONE:
        return read16(buf, row, ip + 2)
    return header_len(buf, row, ip) + l4_header_len(buf, row, ip) + meta[i, M_GSO_SIZE]


@inlined
def peer_alive(peers, params, peer, now):
    """The rule for a peer's liveness: heard from within P_PEER_DEAD_AFTER seconds (traffic to
    it is dropped otherwise; the node's beat reports it down)."""
    return now - peers.peer_seen[peer] <= params[P_PEER_DEAD_AFTER]


@internal
def to_overlay(buf, meta, i, now, params, peers):
    """Towards peer M_OUT: check the MTU (per segment for a super-frame) and that the peer is
    alive, then address the inner frame VTEP to VTEP and pick the send socket by flow hash."""
    row, s, peer = meta[i, M_ROW], meta[i, M_START], meta[i, M_OUT]
    ip = s + ETH_LEN
    forwarded = meta[i, M_OWN] == 0
    if segment_ip_len(buf, meta, i, ip) > params[P_POD_MTU]:
        return finish(meta, i, ACT_SLOW, peer, R_SLOW_FRAG_NEEDED)
    if forwarded and not peer_alive(peers, params, peer, now):
        return finish(meta, i, ACT_DROP, peer, R_DROP_OVERLAY_PEER_DOWN)   # keepalives still go
    if forwarded:
        decrement_ttl(buf, row, ip)
    write48(buf, row, s, peers.peer_vtep_mac[peer])
    write48(buf, row, s + 6, params[P_VTEP_MAC])
    meta[i, M_SOCKET] = flow_hash(buf, row, ip) % params[P_SOCKETS]
    return finish(meta, i, ACT_OVERLAY, peer, R_TO_OVERLAY)


@inlined
def write_vxlan_header(buf, row, v, vni):
    """I flag set, reserved bits zero, the VNI (RFC 7348 section 5)."""
    buf[row, v] = 0x08
    buf[row, v + 1] = 0
    buf[row, v + 2] = 0
    buf[row, v + 3] = 0
    buf[row, v + 4] = (vni >> 16) & 0xFF
    buf[row, v + 5] = (vni >> 8) & 0xFF
    buf[row, v + 6] = vni & 0xFF
    buf[row, v + 7] = 0
