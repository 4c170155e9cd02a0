"""The outside network: the node is a host there (its node address, NodePorts, load-balancer
addresses it announces) and the router between it and its pods.

Tables: the Outside group, neighbours IPv4 -> MAC (the other nodes and the outside host preset;
others gleaned from what they send us, which spares an ARP round trip for the replies)."""
import numpy as np

from fastpath import learning
from fastpath.checksum import read16, read32, read48, write48
from fastpath.ipv4 import decrement_ttl
from fastpath.jit import internal
from fastpath.layout import (
    ACT_DROP, ACT_PORT, ACT_SLOW, ETH_LEN, ETH_P_ARP, GSO_NONE, M_GSO_TYPE, M_LEN, M_ROW, M_START,
    M_VFLAGS, P_LOCAL_MASK, P_LOCAL_NET, P_NEIGHBOUR_AGE, P_NODE_MAC, P_OUTSIDE_MASK, P_OUTSIDE_NET,
    P_UPLINK_PORT,
)
from fastpath.reasons import (
    R_DROP_BAD_VNET_HEADER, R_DROP_MARTIAN, R_DROP_OUTSIDE_NOT_FOR_US, R_DROP_SPOOFED_IP,
    R_FROM_OUTSIDE,
    R_GSO_SUPERFRAMES, R_OUTSIDE_NEIGHBOUR_TABLE_FULL, R_SLOW_ARP, R_SLOW_OUTSIDE_ARP_NEEDED,
    R_TO_OUTSIDE,
)
from fastpath.stages import NEXT, finish
from fastpath.stages.ingress import ethertype_verdict, frame_problem, packet_problem


@internal
def glean(outside, ip, mac, now, params, counters):
    """Remember an on-link outside host's MAC from a frame it sent us."""
    if ip == 0 or (ip & params[P_OUTSIDE_MASK]) != params[P_OUTSIDE_NET]:
        return
    if learning.learn(outside.nb_keys, outside.nb_vals, ip, mac, now, params[P_NEIGHBOUR_AGE],
                      outside.nb_owned, np.int64(0), outside.nb_keys.shape[0]) != learning.LEARNED:
        counters[R_OUTSIDE_NEIGHBOUR_TABLE_FULL] += 1


@internal
def outside_in(buf, meta, i, now, params, counters, outside):
    """A frame from the outside bridge: for our MAC (or an ARP broadcast), not from our pods."""
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    problem = frame_problem(buf, row, s, length)
    if problem >= 0:
        return finish(meta, i, ACT_DROP, 0, problem)
    dst_mac = read48(buf, row, s)
    src_mac = read48(buf, row, s + 6)
    ethertype = read16(buf, row, s + 12)
    if dst_mac != params[P_NODE_MAC] and not (dst_mac == 0xFFFFFFFFFFFF and ethertype == ETH_P_ARP):
        # another host's frame the outside bridge flooded to us, or multicast chatter
        return finish(meta, i, ACT_DROP, 0, R_DROP_OUTSIDE_NOT_FOR_US)
    verdict = ethertype_verdict(ethertype)
    if verdict >= 0:
        if meta[i, M_VFLAGS] != 0 or meta[i, M_GSO_TYPE] != GSO_NONE:
            return finish(meta, i, ACT_DROP, 0, R_DROP_BAD_VNET_HEADER)
        if verdict != R_SLOW_ARP:
            return finish(meta, i, ACT_DROP, 0, verdict)
        if length >= ETH_LEN + 28:   # learn the sender of any ARP
            glean(outside, read32(buf, row, s + 28), read48(buf, row, s + 22), now, params,
                  counters)
        return finish(meta, i, ACT_SLOW, 0, R_SLOW_ARP)
    problem = packet_problem(buf, meta, i)
    if problem >= 0:
        return finish(meta, i, ACT_DROP, 0, problem)
    src = read32(buf, row, s + ETH_LEN + 12)
    if (src & params[P_LOCAL_MASK]) == params[P_LOCAL_NET]:   # our own pods are not out there
        return finish(meta, i, ACT_DROP, 0, R_DROP_SPOOFED_IP)
    if src == 0 or (src >> 24) == 127 or src >= 0xE0000000:
        return finish(meta, i, ACT_DROP, 0, R_DROP_MARTIAN)
    glean(outside, src, src_mac, now, params, counters)
    counters[R_FROM_OUTSIDE] += 1
    if meta[i, M_GSO_TYPE] != GSO_NONE:
        counters[R_GSO_SUPERFRAMES] += 1
    return NEXT


@internal
def to_outside(buf, meta, i, dst, next_hop, forwarded, now, params, outside):
    """Out of the uplink towards `dst` through neighbour `next_hop` (dst itself on the outside
    network, or its gateway). An unknown neighbour: the slow path asks with ARP, and this
    packet is dropped, as routers do."""
    row, s = meta[i, M_ROW], meta[i, M_START]
    j = learning.find(outside.nb_keys, outside.nb_vals, next_hop, now, params[P_NEIGHBOUR_AGE])
    if j < 0:
        return finish(meta, i, ACT_SLOW, 0, R_SLOW_OUTSIDE_ARP_NEEDED)
    write48(buf, row, s, outside.nb_vals[j, learning.L_VALUE])
    write48(buf, row, s + 6, params[P_NODE_MAC])
    if forwarded:
        decrement_ttl(buf, row, s + ETH_LEN)
    return finish(meta, i, ACT_PORT, params[P_UPLINK_PORT], R_TO_OUTSIDE)
