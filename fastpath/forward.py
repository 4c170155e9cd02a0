"""The hot path: one call classifies, rewrites and chooses the next hop for a whole batch.

Input: frames in `buf` rows, `meta[:, M_START/M_LEN/M_IN_PORT/M_SRC_IP]`.
Output: `meta[:, M_ACTION/M_OUT/M_REASON]`, rewritten frames in place, `counters` incremented
(exactly one decision counter per frame, plus `rx_frames`).

Tables (built by vrouter.tables, read here; the FDB is also learned into):
  port_mac[p], port_ip[p]           the pod on local port p
  fdb_keys / fdb_vals[:, FDB_*]      MAC -> port, static flag, last-seen second
  pod_keys / pod_port                pod IPv4 -> local port
  route_masks, route_keys/route_peer remote node podCIDRs -> peer index (one hash per prefix length)
  peer_keys / peer_index             underlay IPv4 -> peer index (accepting overlay datagrams)
  peer_ip, peer_vtep_mac, peer_seen  per peer; peer_seen: second a datagram last came from it
                                     (a peer silent for longer than P_PEER_DEAD_AFTER is down)
  nb_keys / nb_mac                   outside network neighbours: IPv4 -> MAC (other nodes and the
                                     outside host preset; others gleaned from what they send us)
  the services tables                see fastpath.nat

Ports: 0..P-1 are the pods' TAPs, P (P_UPLINK_PORT) is the node's TAP on the outside network,
where the node is a host with its node address (NodePorts) and a router for its pods.
"""
import numpy as np
from numba import njit

from fastpath import hashtable
from fastpath.nat import NAT_DONE, NAT_DROP_NO_LOCAL, NAT_PASS, NAT_REJECT, nat_stage
from fastpath.checksum import (
    checksum, read16, read32, read48, update16, write16, write32, write48,
)
from fastpath.layout import (
    ACT_DROP, ACT_FLOOD, ACT_OVERLAY, ACT_PORT, ACT_SLOW, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6,
    IN_GATEWAY, IN_OVERLAY, M_ACTION, M_IN_PORT, M_LEN, M_OUT, M_REASON, M_SRC_IP, M_START,
    P_FDB_AGE, P_GW_IP, P_PEER_DEAD_AFTER, P_GW_MAC, P_LOCAL_MASK, P_LOCAL_NET, P_OVERLAY_PORT,
    P_POD_MTU, P_UNDERLAY_IP, P_VNI, P_VTEP_MAC, P_NODE_IP, P_NODE_MAC, P_OUTSIDE_MASK,
    P_OUTSIDE_NET, P_UPLINK_PORT,
    R_DROP_BAD_IPV4_CHECKSUM, R_DROP_BAD_IPV4_HEADER, R_DROP_IPV6, R_DROP_OVERLAY_BAD_FLAGS,
    R_DROP_OVERLAY_BAD_INNER, R_DROP_OVERLAY_BAD_VNI, R_DROP_OVERLAY_PEER_DOWN,
    R_DROP_OVERLAY_TRUNCATED, R_DROP_OVERLAY_UNKNOWN_SOURCE, R_DROP_OVERSIZE, R_DROP_RUNT,
    R_DROP_SAME_PORT, R_DROP_SLOWPATH_IGNORED, R_DROP_SOURCE_MAC_MULTICAST, R_DROP_SPOOFED_IP,
    R_DROP_SPOOFED_MAC, R_DROP_UNKNOWN_ETHERTYPE, R_FDB_LEARN_TABLE_FULL, R_FLOODED,
    R_FORWARDED_L2, R_FORWARDED_ROUTED, R_FROM_OVERLAY, R_RX_FRAMES, R_SLOW_ARP,
    R_SLOW_FRAG_NEEDED, R_SLOW_HOST_UNREACHABLE, R_SLOW_NO_ROUTE, R_SLOW_TO_GATEWAY,
    R_SLOW_TTL_EXCEEDED, R_TO_OVERLAY, VXLAN_HEADER_LEN, R_SLOW_SERVICE_REJECT,
    R_DROP_SERVICE_NO_LOCAL_ENDPOINT, R_DROP_SERVICE_NO_SNAT_PORT, R_DROP_OUTSIDE_NOT_FOR_US,
    R_FROM_OUTSIDE, R_OUTSIDE_NEIGHBOUR_TABLE_FULL, R_SLOW_OUTSIDE_ARP_NEEDED, R_TO_OUTSIDE,
)

FDB_PORT = 0
FDB_STATIC = 1
FDB_SEEN = 2

ETH_LEN = 14
OUTER_IP_UDP_VXLAN = 36   # what the node writes in front of the inner frame (the kernel adds Ethernet)
UDP_SPORT_BASE = 49152    # RFC 7348: source port from the dynamic range, hashed from the inner flow


@njit(cache=True, inline="always")
def _decide(meta, counters, i, action, out, reason):
    meta[i, M_ACTION] = action
    meta[i, M_OUT] = out
    meta[i, M_REASON] = reason
    counters[reason] += 1


@njit(cache=True)
def ipv4_problem(buf, i, ip, avail):
    """-1 if the IPv4 header at `ip` is sane within `avail` bytes, else the drop reason."""
    if avail < 20:
        return R_DROP_BAD_IPV4_HEADER
    vihl = buf[i, ip]
    ihl = np.int64(vihl & 0x0F) * 4
    total = read16(buf, i, ip + 2)
    if (vihl >> 4) != 4 or ihl < 20 or ihl > avail or total < ihl or total > avail:
        return R_DROP_BAD_IPV4_HEADER
    if checksum(buf, i, ip, ihl) != 0:
        return R_DROP_BAD_IPV4_CHECKSUM
    return -1


@njit(cache=True, inline="always")
def _decrement_ttl(buf, i, ip):
    ttl = np.int64(buf[i, ip + 8])
    proto = np.int64(buf[i, ip + 9])
    check = read16(buf, i, ip + 10)
    buf[i, ip + 8] = ttl - 1
    write16(buf, i, ip + 10, update16(check, (ttl << 8) | proto, ((ttl - 1) << 8) | proto))


@njit(cache=True)
def flow_hash(buf, i, ip):
    """Hash of the inner flow (addresses, protocol, L4 ports when present) for ECMP entropy."""
    proto = np.uint64(buf[i, ip + 9])
    h = np.uint64(read32(buf, i, ip + 12)) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(read32(buf, i, ip + 16)) + (proto << np.uint64(32))
    ihl = np.int64(buf[i, ip] & 0x0F) * 4
    not_fragment = (read16(buf, i, ip + 6) & 0x1FFF) == 0
    if not_fragment and (proto == 6 or proto == 17):
        h ^= np.uint64(read32(buf, i, ip + ihl)) << np.uint64(16)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(31)
    return np.int64(h & np.uint64(0x7FFFFFFF))


@njit(cache=True)
def encapsulate(buf, i, s, length, peer, params, peer_ip, peer_vtep_mac):
    """Address the inner frame VTEP to VTEP and write outer IPv4/UDP/VXLAN in front of it.

    Returns the new start; the datagram handed to the raw socket is OUTER_IP_UDP_VXLAN + length.
    Outer TTL 64 and DF set: pod MTU = overlay MTU - 50, so the underlay never has to fragment.
    """
    write48(buf, i, s, peer_vtep_mac[peer])
    write48(buf, i, s + 6, params[P_VTEP_MAC])
    sport = UDP_SPORT_BASE + (flow_hash(buf, i, s + ETH_LEN) & 0x3FFF)
    o = s - OUTER_IP_UDP_VXLAN
    total = OUTER_IP_UDP_VXLAN + length
    buf[i, o] = 0x45
    buf[i, o + 1] = 0
    write16(buf, i, o + 2, total)
    write16(buf, i, o + 4, 0)           # IP ID 0 is fine with DF set (RFC 6864)
    write16(buf, i, o + 6, 0x4000)      # DF
    buf[i, o + 8] = 64
    buf[i, o + 9] = 17
    write16(buf, i, o + 10, 0)
    write32(buf, i, o + 12, params[P_UNDERLAY_IP])
    write32(buf, i, o + 16, peer_ip[peer])
    write16(buf, i, o + 10, checksum(buf, i, o, 20))
    u = o + 20
    write16(buf, i, u, sport)
    write16(buf, i, u + 2, params[P_OVERLAY_PORT])
    write16(buf, i, u + 4, total - 20)
    write16(buf, i, u + 6, 0)           # UDP checksum 0 over IPv4, as Linux vxlan does by default
    v = u + 8
    buf[i, v] = 0x08                    # I flag
    buf[i, v + 1] = 0
    buf[i, v + 2] = 0
    buf[i, v + 3] = 0
    vni = params[P_VNI]
    buf[i, v + 4] = (vni >> 16) & 0xFF
    buf[i, v + 5] = (vni >> 8) & 0xFF
    buf[i, v + 6] = vni & 0xFF
    buf[i, v + 7] = 0
    return o


@njit(cache=True)
def _to_local_pod(buf, meta, counters, i, s, dst, forwarded, params, port_mac, pod_keys, pod_port):
    """Routed delivery to a pod of this node: gateway MAC -> pod MAC, TTL - 1 when forwarded."""
    j = hashtable.find(pod_keys, dst)
    if j < 0:
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_HOST_UNREACHABLE)
        return
    port = pod_port[j]
    write48(buf, i, s, port_mac[port])
    write48(buf, i, s + 6, params[P_GW_MAC])
    if forwarded:
        _decrement_ttl(buf, i, s + ETH_LEN)
    _decide(meta, counters, i, ACT_PORT, port, R_FORWARDED_ROUTED)


@njit(cache=True)
def _to_outside(buf, meta, counters, i, s, dst, forwarded, params, nb_keys, nb_mac):
    """Out of the uplink to an outside host (another node, the outside namespace)."""
    j = hashtable.find(nb_keys, dst)
    if j < 0:
        # the slow path asks with ARP; this packet is dropped, as routers do while resolving
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_OUTSIDE_ARP_NEEDED)
        return
    write48(buf, i, s, nb_mac[j])
    write48(buf, i, s + 6, params[P_NODE_MAC])
    if forwarded:
        _decrement_ttl(buf, i, s + ETH_LEN)
    _decide(meta, counters, i, ACT_PORT, params[P_UPLINK_PORT], R_TO_OUTSIDE)


@njit(cache=True)
def _glean(nb_keys, nb_mac, ip, mac, params, counters):
    """Remember an on-link outside host's MAC from a frame it sent us (spares an ARP round trip
    for the replies we route back to it)."""
    if ip == 0 or (ip & params[P_OUTSIDE_MASK]) != params[P_OUTSIDE_NET]:
        return
    j = hashtable.find_or_claim(nb_keys, ip)
    if j < 0:
        counters[R_OUTSIDE_NEIGHBOUR_TABLE_FULL] += 1
        return
    nb_mac[j] = mac


@njit(cache=True)
def _route(buf, meta, counters, i, s, length, forwarded, params, port_mac,
           pod_keys, pod_port, route_masks, route_keys, route_peer,
           peer_ip, peer_vtep_mac, peer_seen, nb_keys, nb_mac, now):
    """L3 forwarding of an IPv4 frame addressed to the gateway (or decapsulated for us).
    `forwarded`: a packet passing through (TTL checked and decremented), not one we originate."""
    ip = s + ETH_LEN
    dst = read32(buf, i, ip + 16)
    if dst == params[P_GW_IP] or dst == params[P_NODE_IP]:
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_TO_GATEWAY)
        return
    if forwarded and buf[i, ip + 8] <= 1:
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_TTL_EXCEEDED)
        return
    if (dst & params[P_LOCAL_MASK]) == params[P_LOCAL_NET]:
        _to_local_pod(buf, meta, counters, i, s, dst, forwarded, params, port_mac, pod_keys, pod_port)
        return
    if (dst & params[P_OUTSIDE_MASK]) == params[P_OUTSIDE_NET]:
        _to_outside(buf, meta, counters, i, s, dst, forwarded, params, nb_keys, nb_mac)
        return
    peer = -1
    for m in range(route_masks.shape[0]):
        j = hashtable.find(route_keys, dst & route_masks[m])
        if j >= 0:
            peer = route_peer[j]
            break
    if peer < 0:
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_NO_ROUTE)
        return
    if read16(buf, i, ip + 2) > params[P_POD_MTU]:
        _decide(meta, counters, i, ACT_SLOW, peer, R_SLOW_FRAG_NEEDED)
        return
    if forwarded and now - peer_seen[peer] > params[P_PEER_DEAD_AFTER]:   # keepalives still go
        _decide(meta, counters, i, ACT_DROP, peer, R_DROP_OVERLAY_PEER_DOWN)
        return
    if forwarded:
        _decrement_ttl(buf, i, ip)
    meta[i, M_START] = encapsulate(buf, i, s, length, peer, params, peer_ip, peer_vtep_mac)
    meta[i, M_LEN] = length + OUTER_IP_UDP_VXLAN
    _decide(meta, counters, i, ACT_OVERLAY, peer, R_TO_OVERLAY)


@njit(cache=True)
def _services(buf, meta, counters, i, ip, may_open, now, params, svc):
    """Run the NAT stage; True when it decided the frame's fate (reject or drop)."""
    (fe_keys, fe_vals, maglev, be_ip, be_port, ct_keys, ct_vals, aff_keys, aff_vals,
     frag_keys, frag_vals) = svc
    result = nat_stage(buf, i, ip, may_open, now, params[P_GW_IP], counters, fe_keys, fe_vals,
                       maglev, be_ip, be_port, ct_keys, ct_vals, aff_keys, aff_vals,
                       frag_keys, frag_vals)
    if result == NAT_PASS or result == NAT_DONE:
        return False
    if result == NAT_REJECT:
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_SERVICE_REJECT)
    elif result == NAT_DROP_NO_LOCAL:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_SERVICE_NO_LOCAL_ENDPOINT)
    else:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_SERVICE_NO_SNAT_PORT)
    return True


@njit(cache=True)
def _frame_problem(buf, meta, counters, i, s, length):
    """True (and decided: dropped) when the frame is a runt, truncated, or from a multicast MAC."""
    if length < ETH_LEN:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_RUNT)
        return True
    if s + length >= buf.shape[1]:
        # the read filled the whole slot: the frame was truncated
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OVERSIZE)
        return True
    if (read48(buf, i, s + 6) >> 40) & 1:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_SOURCE_MAC_MULTICAST)
        return True
    return False


@njit(cache=True)
def _not_ipv4(buf, meta, counters, i, s, length, ethertype):
    """True (and decided) unless the frame carries a sane IPv4 packet; ARP goes to the slow path."""
    if ethertype == ETH_P_ARP:
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_ARP)
        return True
    if ethertype == ETH_P_IPV6:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_IPV6)
        return True
    if ethertype != ETH_P_IP:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_UNKNOWN_ETHERTYPE)
        return True
    problem = ipv4_problem(buf, i, s + ETH_LEN, length - ETH_LEN)
    if problem >= 0:
        _decide(meta, counters, i, ACT_DROP, 0, problem)
        return True
    return False


@njit(cache=True)
def _from_pod(buf, meta, counters, i, s, length, in_port, now, params, port_mac, port_ip,
              fdb_keys, fdb_vals, pod_keys, pod_port, route_masks, route_keys, route_peer,
              peer_ip, peer_vtep_mac, peer_seen, nb_keys, nb_mac, svc):
    if _frame_problem(buf, meta, counters, i, s, length):
        return
    dst_mac = read48(buf, i, s)
    src_mac = read48(buf, i, s + 6)
    j = hashtable.find(fdb_keys, src_mac)
    if j >= 0 and fdb_vals[j, FDB_STATIC] == 1 and fdb_vals[j, FDB_PORT] != in_port:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_SPOOFED_MAC)
        return
    if _not_ipv4(buf, meta, counters, i, s, length, read16(buf, i, s + 12)):
        return
    ip = s + ETH_LEN
    if read32(buf, i, ip + 12) != port_ip[in_port]:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_SPOOFED_IP)
        return
    # the frame is valid: learn where its source MAC lives
    j = hashtable.find_or_claim(fdb_keys, src_mac)
    if j < 0:
        counters[R_FDB_LEARN_TABLE_FULL] += 1
    elif fdb_vals[j, FDB_STATIC] == 0:
        fdb_vals[j, FDB_PORT] = in_port
        fdb_vals[j, FDB_SEEN] = now
    if _services(buf, meta, counters, i, ip, True, now, params, svc):
        return
    if dst_mac == params[P_GW_MAC]:
        _route(buf, meta, counters, i, s, length, True, params, port_mac, pod_keys, pod_port,
               route_masks, route_keys, route_peer, peer_ip, peer_vtep_mac, peer_seen,
               nb_keys, nb_mac, now)
        return
    if (dst_mac >> 40) & 1:
        _decide(meta, counters, i, ACT_FLOOD, 0, R_FLOODED)
        return
    j = hashtable.find(fdb_keys, dst_mac)
    if j >= 0 and (fdb_vals[j, FDB_STATIC] == 1 or now - fdb_vals[j, FDB_SEEN] <= params[P_FDB_AGE]):
        port = fdb_vals[j, FDB_PORT]
        if port == in_port:
            _decide(meta, counters, i, ACT_DROP, 0, R_DROP_SAME_PORT)
        else:
            _decide(meta, counters, i, ACT_PORT, port, R_FORWARDED_L2)
        return
    _decide(meta, counters, i, ACT_FLOOD, 0, R_FLOODED)   # unknown unicast, as a bridge does


@njit(cache=True)
def _from_outside(buf, meta, counters, i, s, length, now, params, port_mac, pod_keys, pod_port,
                  route_masks, route_keys, route_peer, peer_ip, peer_vtep_mac, peer_seen,
                  nb_keys, nb_mac, svc):
    """A frame from the outside network: the node is a host there (its node address, NodePorts,
    load-balancer addresses it announces) and the router to its pods."""
    if _frame_problem(buf, meta, counters, i, s, length):
        return
    dst_mac = read48(buf, i, s)
    src_mac = read48(buf, i, s + 6)
    ethertype = read16(buf, i, s + 12)
    broadcast = dst_mac == 0xFFFFFFFFFFFF
    if dst_mac != params[P_NODE_MAC] and not (broadcast and ethertype == ETH_P_ARP):
        # another host's frame the outside bridge flooded to us, or multicast chatter
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OUTSIDE_NOT_FOR_US)
        return
    if ethertype == ETH_P_ARP and length >= ETH_LEN + 28:
        _glean(nb_keys, nb_mac, read32(buf, i, s + 28), read48(buf, i, s + 22), params, counters)
    if _not_ipv4(buf, meta, counters, i, s, length, ethertype):
        return
    ip = s + ETH_LEN
    src = read32(buf, i, ip + 12)
    if (src & params[P_LOCAL_MASK]) == params[P_LOCAL_NET]:
        # our own pods are not out there
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_SPOOFED_IP)
        return
    _glean(nb_keys, nb_mac, src, src_mac, params, counters)
    counters[R_FROM_OUTSIDE] += 1
    if _services(buf, meta, counters, i, ip, True, now, params, svc):
        return
    _route(buf, meta, counters, i, s, length, True, params, port_mac, pod_keys, pod_port,
           route_masks, route_keys, route_peer, peer_ip, peer_vtep_mac, peer_seen,
           nb_keys, nb_mac, now)


@njit(cache=True)
def _from_overlay(buf, meta, counters, i, s, length, now, params, port_mac, pod_keys, pod_port,
                  peer_keys, peer_index, peer_seen, route_masks, route_keys, route_peer,
                  peer_ip, peer_vtep_mac, nb_keys, nb_mac, svc):
    """Validate a VXLAN datagram (RFC 7348) and deliver its inner frame to a local pod."""
    if length < VXLAN_HEADER_LEN + ETH_LEN:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OVERLAY_TRUNCATED)
        return
    j = hashtable.find(peer_keys, meta[i, M_SRC_IP])
    if j < 0:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OVERLAY_UNKNOWN_SOURCE)
        return
    if (buf[i, s] != 0x08 or buf[i, s + 1] != 0 or buf[i, s + 2] != 0 or buf[i, s + 3] != 0
            or buf[i, s + 7] != 0):
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_FLAGS)
        return
    vni = (np.int64(buf[i, s + 4]) << 16) | (np.int64(buf[i, s + 5]) << 8) | np.int64(buf[i, s + 6])
    if vni != params[P_VNI]:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_VNI)
        return
    peer_seen[peer_index[j]] = now   # a datagram from a peer proves it is alive
    s += VXLAN_HEADER_LEN
    length -= VXLAN_HEADER_LEN
    meta[i, M_START] = s
    meta[i, M_LEN] = length
    if length < ETH_LEN + 20 or read16(buf, i, s + 12) != ETH_P_IP \
            or read48(buf, i, s) != params[P_VTEP_MAC]:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_INNER)
        return
    ip = s + ETH_LEN
    if ipv4_problem(buf, i, ip, length - ETH_LEN) >= 0:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_INNER)
        return
    dst = read32(buf, i, ip + 16)
    if (dst & params[P_LOCAL_MASK]) != params[P_LOCAL_NET]:
        _decide(meta, counters, i, ACT_DROP, 0, R_DROP_OVERLAY_BAD_INNER)   # no transit routing
        return
    counters[R_FROM_OVERLAY] += 1
    # replies of connections this node translated (their backends may live on other nodes)
    if _services(buf, meta, counters, i, ip, False, now, params, svc):
        return
    dst = read32(buf, i, ip + 16)
    if (dst & params[P_LOCAL_MASK]) != params[P_LOCAL_NET]:
        _route(buf, meta, counters, i, s, length, True, params, port_mac, pod_keys, pod_port,
               route_masks, route_keys, route_peer, peer_ip, peer_vtep_mac, peer_seen,
               nb_keys, nb_mac, now)
        return
    if dst == params[P_GW_IP] or dst == params[P_LOCAL_NET]:   # gateway, or our VTEP address
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_TO_GATEWAY)
        return
    if buf[i, ip + 8] <= 1:
        _decide(meta, counters, i, ACT_SLOW, 0, R_SLOW_TTL_EXCEEDED)
        return
    _to_local_pod(buf, meta, counters, i, s, dst, True, params, port_mac, pod_keys, pod_port)


@njit(cache=True)
def forward_batch(buf, meta, n, now, params, counters, port_mac, port_ip, fdb_keys, fdb_vals,
                  pod_keys, pod_port, route_masks, route_keys, route_peer,
                  peer_keys, peer_index, peer_ip, peer_vtep_mac, peer_seen, nb_keys, nb_mac,
                  fe_keys, fe_vals, maglev, be_ip, be_port, ct_keys, ct_vals, aff_keys, aff_vals,
                  frag_keys, frag_vals):
    svc = (fe_keys, fe_vals, maglev, be_ip, be_port, ct_keys, ct_vals, aff_keys, aff_vals,
           frag_keys, frag_vals)
    uplink = params[P_UPLINK_PORT]
    for i in range(n):
        counters[R_RX_FRAMES] += 1
        s = meta[i, M_START]
        length = meta[i, M_LEN]
        in_port = meta[i, M_IN_PORT]
        if in_port == uplink:
            _from_outside(buf, meta, counters, i, s, length, now, params, port_mac, pod_keys,
                          pod_port, route_masks, route_keys, route_peer, peer_ip, peer_vtep_mac,
                          peer_seen, nb_keys, nb_mac, svc)
        elif in_port >= 0:
            _from_pod(buf, meta, counters, i, s, length, in_port, now, params, port_mac, port_ip,
                      fdb_keys, fdb_vals, pod_keys, pod_port, route_masks, route_keys, route_peer,
                      peer_ip, peer_vtep_mac, peer_seen, nb_keys, nb_mac, svc)
        elif in_port == IN_OVERLAY:
            _from_overlay(buf, meta, counters, i, s, length, now, params, port_mac, pod_keys,
                          pod_port, peer_keys, peer_index, peer_seen, route_masks, route_keys,
                          route_peer, peer_ip, peer_vtep_mac, nb_keys, nb_mac, svc)
        elif in_port == IN_GATEWAY and length >= ETH_LEN + 20:
            # built by the slow path: routed like a pod's packet, but it is not forwarded, so no
            # TTL; an ICMP error about a translated connection is translated first
            _services(buf, meta, counters, i, s + ETH_LEN, False, now, params, svc)
            _route(buf, meta, counters, i, s, length, False, params, port_mac, pod_keys, pod_port,
                   route_masks, route_keys, route_peer, peer_ip, peer_vtep_mac, peer_seen,
                   nb_keys, nb_mac, now)
            if meta[i, M_ACTION] == ACT_SLOW:
                if meta[i, M_REASON] == R_SLOW_OUTSIDE_ARP_NEEDED:
                    continue   # the slow path asks for the address (and drops this one)
                # never loop back into the slow path with our own packets
                counters[meta[i, M_REASON]] -= 1
                _decide(meta, counters, i, ACT_DROP, 0, R_DROP_SLOWPATH_IGNORED)
        else:
            _decide(meta, counters, i, ACT_DROP, 0, R_DROP_RUNT)
