"""The control plane's side of the fast path: build the table groups a node's data plane reads
(fastpath.groups), from a validated Cluster."""
from __future__ import annotations

import ipaddress

import numpy as np

from fastpath import hashtable, learning
from fastpath.conntrack import connection_arrays, new_state_table
from fastpath.flows import new_ring
from fastpath.stages.link import new_code
from fastpath.groups import (
    Bridge, Budgets, Conntrack, Flows, Outside, Peers, Ports, Routes, Tables,
)
from fastpath.layout import (
    KEEPALIVE_LEN, PARAM_COUNT, P_CLUSTER_MASK, P_CLUSTER_NET, P_FDB_AGE, P_FDB_PORT_LIMIT,
    P_GW_IP, P_GW_MAC, P_LOCAL_MASK, P_LOCAL_NET, P_MASQUERADE, P_NEIGHBOUR_AGE, P_NODE_IP,
    P_NODE_MAC, P_OUTSIDE_GW, P_OUTSIDE_MASK, P_OUTSIDE_NET, P_PEER_DEAD_AFTER, P_POD_MTU,
    P_PORT_COUNT, P_SERVICE_MASK, P_SERVICE_NET, P_SOCKETS, P_UPLINK_PORT, P_VNI, P_VTEP_MAC,
)
from vrouter.model.config import Cluster

FDB_MIN_ENTRIES = 4096
NEIGHBOUR_MIN_ENTRIES = 1024
BUDGET_DESTINATIONS = 1024   # ICMP error destinations with a budget of their own at once
NEIGHBOUR_AGE = 300   # seconds a gleaned outside neighbour stays valid
PEER_DEAD_AFTER = 3   # seconds without any datagram from a peer
SEND_SOCKETS = 8      # overlay send sockets: outer UDP source ports that flows are spread over


def mac_to_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def int_to_mac(value: int) -> str:
    raw = f"{value:012x}"
    return ":".join(raw[k:k + 2] for k in range(0, 12, 2))


def ip_to_int(ip) -> int:
    return int(ipaddress.IPv4Address(ip))


def build(cluster: Cluster, node_name: str, counters: np.ndarray, ports: dict,
          services=None, policy=None) -> Tables:
    """`ports`: port number -> attached local Pod. `services`, `policy`: prebuilt
    servicetables.ServiceTables and policytables.PolicyTables (built here when None)."""
    from vrouter.node import policytables, servicetables   # they import this module
    node = cluster.node(node_name)
    peers = [n for n in cluster.nodes if n.name != node_name]
    ct = cluster.conntrack
    services = services or servicetables.build(cluster, node_name)
    return Tables(
        params=_params(cluster, node),
        counters=counters,
        **pod_groups(ports, cluster.max_pods, peers),
        peers=_peers(peers),
        outside=_outside(cluster, peers),
        services=services.group,
        conntrack=Conntrack(*connection_arrays(ct.max_entries),
                            *new_state_table(ct.affinity_entries, 3),
                            *new_state_table(ct.fragment_entries, 3),
                            Flows(*new_ring(cluster.flow_log_events))),
        policy=(policy or policytables.build(cluster, ports, cluster.max_pods)).group,
        budgets=Budgets(np.zeros((cluster.max_pods + 2, 2), dtype=np.int64),
                        *new_state_table(BUDGET_DESTINATIONS, 2), np.zeros(2, dtype=np.int64)),
        code=new_code(),   # linked by the data plane (fastpath.stages.link)
    )


def pod_groups(ports: dict, capacity: int, peers, old: Bridge | None = None) -> dict:
    """The groups that follow the node's attached pods: Ports, Bridge, Routes. With `old`, the
    MAC table keeps what it has learned, but never an attached pod's MAC on another port."""
    port_mac = np.zeros(capacity, dtype=np.int64)
    port_ip = np.zeros(capacity, dtype=np.int64)
    port_live = np.zeros(capacity, dtype=np.int64)
    for port, pod in ports.items():
        port_mac[port], port_ip[port], port_live[port] = mac_to_int(pod.mac), ip_to_int(pod.ip), 1
    return {"ports": Ports(port_mac, port_ip, port_live),
            "bridge": _bridge(ports, capacity, old),
            "routes": _routes(ports, peers)}


def _params(cluster: Cluster, node) -> np.ndarray:
    params = np.zeros(PARAM_COUNT, dtype=np.int64)
    params[P_GW_MAC] = mac_to_int(node.gateway_mac)
    params[P_GW_IP] = ip_to_int(node.gateway)
    params[P_LOCAL_NET] = ip_to_int(node.pod_cidr.network_address)
    params[P_LOCAL_MASK] = ip_to_int(node.pod_cidr.netmask)
    params[P_CLUSTER_NET] = ip_to_int(cluster.pod_cidr.network_address)
    params[P_CLUSTER_MASK] = ip_to_int(cluster.pod_cidr.netmask)
    params[P_PORT_COUNT] = cluster.max_pods
    params[P_FDB_AGE] = cluster.fdb_age
    params[P_POD_MTU] = cluster.overlay.pod_mtu
    params[P_VNI] = cluster.overlay.vni
    params[P_VTEP_MAC] = mac_to_int(node.vtep_mac)
    params[P_SOCKETS] = SEND_SOCKETS
    params[P_PEER_DEAD_AFTER] = PEER_DEAD_AFTER
    params[P_UPLINK_PORT] = cluster.max_pods   # pods have ports 0..max_pods-1
    params[P_NODE_IP] = ip_to_int(node.address)
    params[P_NODE_MAC] = mac_to_int(node.mac)
    params[P_OUTSIDE_NET] = ip_to_int(cluster.node_network.network_address)
    params[P_OUTSIDE_MASK] = ip_to_int(cluster.node_network.netmask)
    params[P_MASQUERADE] = int(cluster.masquerade)
    params[P_FDB_PORT_LIMIT] = cluster.fdb_max_per_port
    params[P_SERVICE_NET] = ip_to_int(cluster.service_cidr.network_address)
    params[P_SERVICE_MASK] = ip_to_int(cluster.service_cidr.netmask)
    params[P_OUTSIDE_GW] = ip_to_int(cluster.outside_gateway) if cluster.outside_gateway else 0
    params[P_NEIGHBOUR_AGE] = NEIGHBOUR_AGE
    return params


def _bridge(ports: dict, capacity: int, old: Bridge | None) -> Bridge:
    """The pods' own MACs are static entries: nobody else may claim them (anti-spoofing). With
    `old`, learned MACs of ports still attached are kept."""
    fdb_keys, fdb_vals = learning.new_table(max(FDB_MIN_ENTRIES, 8 * len(ports)))
    for port, pod in ports.items():
        if not learning.place_static(fdb_keys, fdb_vals, mac_to_int(pod.mac), port):
            raise ValueError(f"no room for pod {pod.name}'s MAC in the MAC table")
    owned = np.zeros(capacity, dtype=np.int64)
    if old is not None:
        learned = (old.fdb_keys != 0) & (old.fdb_vals[:, learning.L_STATIC] == 0)
        for j in np.nonzero(learned)[0].tolist():
            port = int(old.fdb_vals[j, learning.L_VALUE])
            if port in ports:
                learning.learn(fdb_keys, fdb_vals, int(old.fdb_keys[j]), port,
                               int(old.fdb_vals[j, learning.L_SEEN]), 1 << 40, owned, port,
                               1 << 40)
    return Bridge(fdb_keys, fdb_vals, owned)


def _routes(ports: dict, peers) -> Routes:
    """Local pods by address, and the peers' podCIDRs (one hash per prefix length)."""
    pod_keys = hashtable.new_keys(len(ports))
    pod_port = np.full(pod_keys.shape[0], -1, dtype=np.int64)
    for port, pod in ports.items():
        pod_port[hashtable.find_or_claim(pod_keys, ip_to_int(pod.ip))] = port
    masks = sorted({ip_to_int(p.pod_cidr.netmask) for p in peers}, reverse=True)  # longest first
    route_keys = hashtable.new_keys(len(peers))
    route_peer = np.full(route_keys.shape[0], -1, dtype=np.int64)
    for k, peer in enumerate(peers):
        route_peer[hashtable.find_or_claim(route_keys, ip_to_int(peer.pod_cidr.network_address))] = k
    return Routes(pod_keys, pod_port, np.array(masks, dtype=np.int64), route_keys, route_peer)


def _peers(peers) -> Peers:
    peer_keys = hashtable.new_keys(len(peers))
    peer_index = np.full(peer_keys.shape[0], -1, dtype=np.int64)
    for k, peer in enumerate(peers):
        peer_index[hashtable.find_or_claim(peer_keys, ip_to_int(peer.underlay))] = k
    return Peers(peer_keys, peer_index,
                 peer_ip=np.array([ip_to_int(p.underlay) for p in peers], dtype=np.int64),
                 peer_vtep_mac=np.array([mac_to_int(p.vtep_mac) for p in peers], dtype=np.int64),
                 peer_seen=np.zeros(len(peers), dtype=np.int64),
                 peer_net=np.array([ip_to_int(p.pod_cidr.network_address) for p in peers],
                                   dtype=np.int64),
                 peer_mask=np.array([ip_to_int(p.pod_cidr.netmask) for p in peers], dtype=np.int64),
                 peer_address=np.array([ip_to_int(p.address) for p in peers], dtype=np.int64),
                 peer_kernel=np.array([int(p.kernel) for p in peers], dtype=np.int64),
                 peer_keepalive=np.zeros((len(peers), KEEPALIVE_LEN), dtype=np.uint8),
                 peer_up=np.full(len(peers), -1, dtype=np.int64))


def _outside(cluster: Cluster, peers) -> Outside:
    """Outside neighbours: the other nodes and the outside host are known; the rest is gleaned."""
    nb_keys, nb_vals = learning.new_table(max(NEIGHBOUR_MIN_ENTRIES, 4 * len(cluster.nodes)))
    known = [(n.address, n.mac) for n in peers] + [(cluster.outside_host, cluster.outside_host_mac)]
    for address, mac in known:
        if not learning.place_static(nb_keys, nb_vals, ip_to_int(address), mac_to_int(mac)):
            raise ValueError(f"no room for outside neighbour {address} in the neighbour table")
    return Outside(nb_keys, nb_vals, np.zeros(1, dtype=np.int64))
