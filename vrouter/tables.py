"""The control plane's side of the fast path: build the numpy tables a node's data plane reads."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields

import numpy as np

from fastpath import hashtable
from fastpath.forward import FDB_PORT, FDB_STATIC
from fastpath.nat import CT_COLS, new_state_table
from fastpath.layout import (
    PARAM_COUNT, P_CLUSTER_MASK, P_CLUSTER_NET, P_FDB_AGE, P_GW_IP, P_GW_MAC, P_LOCAL_MASK,
    P_LOCAL_NET, P_NODE_IP, P_NODE_MAC, P_OUTSIDE_MASK, P_OUTSIDE_NET, P_OVERLAY_PORT,
    P_PEER_DEAD_AFTER, P_POD_MTU, P_PORT_COUNT, P_UNDERLAY_IP, P_UPLINK_PORT, P_VNI, P_VTEP_MAC,
)
from vrouter.config import Cluster

FDB_MIN_ENTRIES = 4096
NEIGHBOUR_MIN_ENTRIES = 1024
PEER_DEAD_AFTER = 3   # seconds without any datagram from a peer


def mac_to_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def int_to_mac(value: int) -> str:
    raw = f"{value:012x}"
    return ":".join(raw[k:k + 2] for k in range(0, 12, 2))


def ip_to_int(ip) -> int:
    return int(ipaddress.IPv4Address(ip))


@dataclass
class Tables:
    """Arrays in the order forward_batch takes them after (buf, meta, n, now)."""
    params: np.ndarray
    counters: np.ndarray
    port_mac: np.ndarray
    port_ip: np.ndarray
    fdb_keys: np.ndarray
    fdb_vals: np.ndarray
    pod_keys: np.ndarray
    pod_port: np.ndarray
    route_masks: np.ndarray
    route_keys: np.ndarray
    route_peer: np.ndarray
    peer_keys: np.ndarray
    peer_index: np.ndarray
    peer_ip: np.ndarray
    peer_vtep_mac: np.ndarray
    peer_seen: np.ndarray
    nb_keys: np.ndarray
    nb_mac: np.ndarray
    # services (rebuilt on reload) and their state (kept across reloads)
    fe_keys: np.ndarray
    fe_vals: np.ndarray
    maglev: np.ndarray
    be_ip: np.ndarray
    be_port: np.ndarray
    ct_keys: np.ndarray
    ct_vals: np.ndarray
    aff_keys: np.ndarray
    aff_vals: np.ndarray
    frag_keys: np.ndarray
    frag_vals: np.ndarray

    def as_args(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))


def build(cluster: Cluster, node_name: str, counters: np.ndarray, services=None) -> Tables:
    """`services`: a prebuilt servicetables.ServiceTables (built here when None)."""
    from vrouter import servicetables   # it imports this module
    node = cluster.node(node_name)
    pods = cluster.pods_of(node_name)
    peers = [n for n in cluster.nodes if n.name != node_name]

    params = np.zeros(PARAM_COUNT, dtype=np.int64)
    params[P_GW_MAC] = mac_to_int(node.gateway_mac)
    params[P_GW_IP] = ip_to_int(node.gateway)
    params[P_LOCAL_NET] = ip_to_int(node.pod_cidr.network_address)
    params[P_LOCAL_MASK] = ip_to_int(node.pod_cidr.netmask)
    params[P_CLUSTER_NET] = ip_to_int(cluster.pod_cidr.network_address)
    params[P_CLUSTER_MASK] = ip_to_int(cluster.pod_cidr.netmask)
    params[P_PORT_COUNT] = len(pods)
    params[P_FDB_AGE] = cluster.fdb_age
    params[P_POD_MTU] = cluster.overlay.pod_mtu
    params[P_VNI] = cluster.overlay.vni
    params[P_VTEP_MAC] = mac_to_int(node.vtep_mac)
    params[P_UNDERLAY_IP] = ip_to_int(node.underlay)
    params[P_OVERLAY_PORT] = cluster.overlay.port
    params[P_PEER_DEAD_AFTER] = PEER_DEAD_AFTER
    params[P_UPLINK_PORT] = len(pods)
    params[P_NODE_IP] = ip_to_int(node.address)
    params[P_NODE_MAC] = mac_to_int(node.mac)
    params[P_OUTSIDE_NET] = ip_to_int(cluster.node_network.network_address)
    params[P_OUTSIDE_MASK] = ip_to_int(cluster.node_network.netmask)

    port_mac = np.array([mac_to_int(p.mac) for p in pods], dtype=np.int64)
    port_ip = np.array([ip_to_int(p.ip) for p in pods], dtype=np.int64)

    # the pods' own MACs are static entries: nobody else may claim them (anti-spoofing)
    fdb_keys = hashtable.new_keys(max(FDB_MIN_ENTRIES, 4 * len(pods)))
    fdb_vals = np.zeros((fdb_keys.shape[0], 3), dtype=np.int64)
    pod_keys = hashtable.new_keys(len(pods))
    pod_port = np.full(pod_keys.shape[0], -1, dtype=np.int64)
    for port, pod in enumerate(pods):
        j = hashtable.find_or_claim(fdb_keys, mac_to_int(pod.mac))
        fdb_vals[j, FDB_PORT] = port
        fdb_vals[j, FDB_STATIC] = 1
        pod_port[hashtable.find_or_claim(pod_keys, ip_to_int(pod.ip))] = port

    flows = cluster.service_options.max_flows
    services = services or servicetables.build(cluster, node_name)
    masks = sorted({ip_to_int(p.pod_cidr.netmask) for p in peers}, reverse=True)  # longest first
    route_keys = hashtable.new_keys(len(peers))
    route_peer = np.full(route_keys.shape[0], -1, dtype=np.int64)
    peer_keys = hashtable.new_keys(len(peers))
    peer_index = np.full(peer_keys.shape[0], -1, dtype=np.int64)
    for k, peer in enumerate(peers):
        route_peer[hashtable.find_or_claim(route_keys, ip_to_int(peer.pod_cidr.network_address))] = k
        peer_index[hashtable.find_or_claim(peer_keys, ip_to_int(peer.underlay))] = k

    # outside neighbours: the other nodes and the outside host are known; the rest is gleaned
    nb_keys = hashtable.new_keys(max(NEIGHBOUR_MIN_ENTRIES, 2 * len(cluster.nodes)))
    nb_mac = np.zeros(nb_keys.shape[0], dtype=np.int64)
    known = [(n.address, n.mac) for n in peers] + [(cluster.outside_host, cluster.outside_host_mac)]
    for address, mac in known:
        nb_mac[hashtable.find_or_claim(nb_keys, ip_to_int(address))] = mac_to_int(mac)

    return Tables(
        params=params,
        counters=counters,
        port_mac=port_mac,
        port_ip=port_ip,
        fdb_keys=fdb_keys,
        fdb_vals=fdb_vals,
        pod_keys=pod_keys,
        pod_port=pod_port,
        route_masks=np.array(masks, dtype=np.int64),
        route_keys=route_keys,
        route_peer=route_peer,
        peer_keys=peer_keys,
        peer_index=peer_index,
        peer_ip=np.array([ip_to_int(p.underlay) for p in peers], dtype=np.int64),
        peer_vtep_mac=np.array([mac_to_int(p.vtep_mac) for p in peers], dtype=np.int64),
        peer_seen=np.zeros(len(peers), dtype=np.int64),
        nb_keys=nb_keys,
        nb_mac=nb_mac,
        **service_arrays(services),
        **dict(zip(("ct_keys", "ct_vals"), new_state_table(2 * flows, CT_COLS))),
        **dict(zip(("aff_keys", "aff_vals"), new_state_table(flows // 4, 3))),
        **dict(zip(("frag_keys", "frag_vals"), new_state_table(1024, 3))),
    )


def service_arrays(st) -> dict:
    """The arrays of a servicetables.ServiceTables, by Tables field name."""
    return {name: getattr(st, name) for name in SERVICE_FIELDS}


SERVICE_FIELDS = ("fe_keys", "fe_vals", "maglev", "be_ip", "be_port")
