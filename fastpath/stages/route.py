"""L3: the gateway routes IPv4 to a local pod, the outside network, or a peer's podCIDR."""

from fastpath import hashtable
from fastpath.checksum import read32, write48
from fastpath.ipv4 import decrement_ttl
from fastpath.jit import inlined, internal
from fastpath.layout import (
    ACT_DROP, ACT_PORT, ACT_SLOW, ETH_LEN, M_OUT, M_OWN, M_ROW, M_START, P_CLUSTER_MASK,
    P_CLUSTER_NET, P_GW_IP, P_GW_MAC, P_LOCAL_MASK, P_LOCAL_NET, P_NODE_IP, P_OUTSIDE_GW,
    P_OUTSIDE_MASK, P_OUTSIDE_NET, P_SERVICE_MASK, P_SERVICE_NET,
)
from fastpath.reasons import (
    R_DROP_MARTIAN, R_FORWARDED_ROUTED, R_SLOW_HOST_UNREACHABLE, R_SLOW_NO_ROUTE,
    R_SLOW_TO_GATEWAY, R_SLOW_TTL_EXCEEDED,
)
from fastpath.stages import BRANCH, NEXT, finish
from fastpath.stages.outside import to_outside


@internal
def route_stage(buf, meta, i, now, params, ports, routes, outside):
    """`forwarded` packets pass through (TTL checked and decremented); the node's own
    (M_OWN: built by the gateway, or an echo answer) are originated here."""
    row, s = meta[i, M_ROW], meta[i, M_START]
    forwarded = meta[i, M_OWN] == 0
    ip = s + ETH_LEN
    dst = read32(buf, row, ip + 16)
    if martian(dst):   # loopback, "this network", multicast, broadcast: never routed
        return finish(meta, i, ACT_DROP, 0, R_DROP_MARTIAN)
    if dst == params[P_GW_IP] or dst == params[P_NODE_IP] or dst == params[P_LOCAL_NET]:
        if not forwarded:   # the node's own packet for itself: nothing to do
            return finish(meta, i, ACT_SLOW, 0, R_SLOW_TO_GATEWAY)
        return BRANCH   # for the gateway, node or VTEP address: the local stage
    if forwarded and buf[row, ip + 8] <= 1:
        return finish(meta, i, ACT_SLOW, 0, R_SLOW_TTL_EXCEEDED)
    if (dst & params[P_LOCAL_MASK]) == params[P_LOCAL_NET]:
        j = hashtable.find(routes.pod_keys, dst)
        if j < 0:
            return finish(meta, i, ACT_SLOW, 0, R_SLOW_HOST_UNREACHABLE)
        port = routes.pod_port[j]
        write48(buf, row, s, ports.port_mac[port])
        write48(buf, row, s + 6, params[P_GW_MAC])
        if forwarded:
            decrement_ttl(buf, row, ip)
        return finish(meta, i, ACT_PORT, port, R_FORWARDED_ROUTED)
    if (dst & params[P_OUTSIDE_MASK]) == params[P_OUTSIDE_NET]:
        return to_outside(buf, meta, i, dst, dst, forwarded, now, params, outside)
    masks = routes.route_masks
    for m in range(masks.shape[0]):
        j = hashtable.find(routes.route_keys, dst & masks[m])
        if j >= 0:
            meta[i, M_OUT] = routes.route_peer[j]
            return NEXT   # a peer's podCIDR: to the overlay
    if params[P_OUTSIDE_GW] != 0 and not in_cluster(dst, params):
        # the world beyond: the default route, via the outside network's gateway
        return to_outside(buf, meta, i, dst, params[P_OUTSIDE_GW], forwarded, now, params,
                          outside)
    return finish(meta, i, ACT_SLOW, 0, R_SLOW_NO_ROUTE)


@inlined
def martian(ip):
    """0.0.0.0/8, 127.0.0.0/8, multicast and reserved (224.0.0.0 and up): no router forwards
    them (RFC 1812 5.3.7); a pod reaching the node's loopback is the CVE-2020-8558 class."""
    first = ip >> 24
    return first == 0 or first == 127 or ip >= 0xE0000000


@inlined
def in_cluster(ip, params):
    """In the cluster's podCIDR or serviceCIDR: routed inside the cluster or not at all."""
    return (ip & params[P_CLUSTER_MASK]) == params[P_CLUSTER_NET] \
        or (ip & params[P_SERVICE_MASK]) == params[P_SERVICE_NET]
