"""The control plane's side of Services: frontends, backends and Maglev rows for one node.

Every node serves every Service (as kube-proxy does on each node): the node where a connection
enters translates it. Frontends of one service port:
  - clusterIP:port, over all endpoints (internalTrafficPolicy Local: this node's only);
  - each externalIP / load-balancer address :port, and this node's address :nodePort, over all
    endpoints with SNAT to the gateway (externalTrafficPolicy Cluster), or over this node's
    endpoints keeping the client address (Local; no local endpoint -> dropped, as Kubernetes does).
External addresses inside cluster.nodeNetwork are announced on the outside network by one node
(it answers ARP for them, as MetalLB's layer-2 mode does): a stable choice among the nodes that
may serve them (all, or with policy Local those with a local endpoint).
A frontend whose service port has no endpoints at all rejects at once (TCP RST / ICMP port
unreachable). Identical backend sets share one Maglev row.
Host ports (a container port's hostPort, or a CNI runtime's portMappings) are frontends too:
this node's address:hostPort to its own pod, keeping the client's address (as the portmap
plugin's DNAT does); a Service frontend on the same address and port wins, the host port is
reported shadowed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from fastpath import hashtable
from fastpath.maglev import populate
from fastpath.groups import Services
from fastpath.stages.services import FE_AFFINITY, FE_COLS, FE_EMPTY, FE_ID, FE_ROW, FE_SNAT
from vrouter.model.config import Cluster
from vrouter.model.services import stable_hash, endpoints
from vrouter.node.tables import ip_to_int


HOST_PORT_PROTOCOLS = {"TCP": 6, "UDP": 17}   # translated as Services are (no SCTP)


@dataclass(frozen=True)
class _Backend:
    """One pod's port as a backend (the shape row_for reads, as an Endpoint has it)."""
    pod: object
    port: int


@dataclass
class Frontend:
    service: str
    port_name: str
    address: str
    protocol: str
    port: int
    backends: list[str]       # "ip:port"
    snat: bool
    scope: str                # "cluster" or "node-local"
    port_id: int = 0          # the Service port's stable id (FE_ID)
    slot: int = -1            # its row in fe_keys / fe_vals / fe_new


@dataclass
class ServiceTables:
    fe_keys: np.ndarray
    fe_vals: np.ndarray
    maglev: np.ndarray
    be_ip: np.ndarray
    be_port: np.ndarray
    fe_new: np.ndarray         # connections opened per frontend slot (the fast path counts)
    frontends: list[Frontend] = field(default_factory=list)
    backend_names: list[str] = field(default_factory=list)
    announced: list[str] = field(default_factory=list)   # addresses this node answers ARP for
    shadowed: list[str] = field(default_factory=list)    # host ports a Service frontend hides

    @property
    def group(self) -> Services:
        """The arrays as the fast path takes them."""
        return Services(self.fe_keys, self.fe_vals, self.maglev, self.be_ip, self.be_port,
                        self.fe_new)


def carry_counts(old: ServiceTables, new: ServiceTables) -> None:
    """A frontend that stays keeps its connection count across a reload (metrics are counters)."""
    def identity(f: Frontend):
        return f.service, f.port_name, f.address, f.protocol, f.port
    counts = {identity(f): int(old.fe_new[f.slot]) for f in old.frontends}
    for f in new.frontends:
        new.fe_new[f.slot] = counts.get(identity(f), 0)


def announcer(cluster: Cluster, service, address) -> str | None:
    """The node that announces `address` of `service` on the outside network, or None."""
    nodes = [n.name for n in cluster.nodes]
    if service.external_policy == "Local":
        serving = {e.pod.node for sp in service.ports for e in endpoints(service, sp, cluster.pods)}
        nodes = [n for n in nodes if n in serving]
    if not nodes:
        return None
    return nodes[stable_hash(f"{service.key}/{address}") % len(nodes)]


def port_id(service_key: str, port_name: str, protocol: str) -> int:
    """A Service port's id, the same on every node and across reloads whatever the file's order
    (session affinity and conntrack remember it): a 62-bit hash, never 0."""
    return stable_hash(f"{service_key}/{port_name}/{protocol}") >> 2 | 1


def backend_pairs(tables: "ServiceTables") -> set[tuple[int, int, int]]:
    """(Service port id, backend ip, backend port) of every frontend: what conntrack entries
    and affinity entries may point at."""
    pairs = set()
    for f in tables.frontends:
        for backend in f.backends:
            ip, _, port = backend.rpartition(":")
            pairs.add((f.port_id, ip_to_int(ip), int(port)))
    return pairs


def frontend_key(ip: int, proto: int, port: int) -> int:
    return (ip << 24) | (proto << 16) | port


def maglev_row(names: list[str], size: int) -> np.ndarray:
    """The Maglev table of backends named `names` (stable names: moves stay minimal)."""
    digests = [hashlib.sha256(n.encode()).digest() for n in names]
    offsets = np.array([int.from_bytes(d[:8], "big") % size for d in digests], dtype=np.int64)
    skips = np.array([int.from_bytes(d[8:16], "big") % (size - 1) + 1 for d in digests],
                     dtype=np.int64)
    row = np.empty(size, dtype=np.int32)
    populate(offsets, skips, row)
    return row


def build(cluster: Cluster, node_name: str) -> ServiceTables:
    size = cluster.service_options.maglev_size
    backends: dict[tuple[int, int], int] = {}
    backend_names: list[str] = []
    rows: dict[tuple, int] = {}
    row_arrays: list[np.ndarray] = []
    entries: list[tuple[int, list[int]]] = []
    frontends: list[Frontend] = []

    def row_for(eps) -> int:
        if not eps:
            return -1
        members = tuple(sorted((e.pod.namespace, e.pod.name, e.port) for e in eps))
        if members not in rows:
            indices = []
            for e in eps:
                key = (ip_to_int(e.pod.ip), e.port)
                if key not in backends:
                    backends[key] = len(backend_names)
                    backend_names.append(f"{e.pod.ip}:{e.port}")
                indices.append(backends[key])
            names = [f"{e.pod.namespace}/{e.pod.name}:{e.port}" for e in eps]
            local = maglev_row(names, size)
            row_arrays.append(np.array(indices, dtype=np.int32)[local])
            rows[members] = len(row_arrays) - 1
        return rows[members]

    node_address = cluster.node(node_name).address
    dns_pod = cluster.dns_pod(node_name)
    announced = []
    for service in cluster.services:
        if service.cluster_ip is None or not service.proxied:
            continue   # headless, or labelled for another proxy: DNS only, nothing to proxy
        announced += [str(ip) for ip in service.external_ips if ip in cluster.node_network
                      and announcer(cluster, service, ip) == node_name]
        for sp in service.ports:
            every = endpoints(service, sp, cluster.pods)
            local = [e for e in every if e.pod.node == node_name]
            fe_id = port_id(service.key, sp.name, sp.protocol)
            internal_local = service.internal_policy == "Local"
            external_local = service.external_policy == "Local"
            internal = local if internal_local else every
            external = local if external_local else every
            addresses = [(service.cluster_ip, internal, False, internal_local)]
            addresses += [(ip, external, not external_local, external_local)
                          for ip in service.external_ips]
            ports = [sp.port] * len(addresses)
            if sp.node_port:
                addresses.append((node_address, external, not external_local, external_local))
                ports.append(sp.node_port)
            for (address, eps, snat, node_local), port in zip(addresses, ports):
                row = row_for(eps)
                values = [0] * FE_COLS
                values[FE_ROW] = row
                values[FE_AFFINITY] = service.affinity_timeout
                values[FE_SNAT] = int(snat)
                values[FE_ID] = fe_id
                values[FE_EMPTY] = int(bool(every) and not eps)   # policy Local, none here: drop
                entries.append((frontend_key(ip_to_int(address), sp.proto_number, port), values))
                scope = "node-local" if node_local else "cluster"
                frontends.append(Frontend(service.key, sp.name, str(address), sp.protocol, port,
                                          [f"{e.pod.ip}:{e.port}" for e in eps], snat, scope,
                                          fe_id))

    # healthCheckNodePort (LoadBalancer, externalTrafficPolicy Local): node address:port leads to
    # the node's health server, a real socket in its DNS server pod (vrouter.node.healthcheck)
    for service in cluster.services:
        port = service.health_check_node_port
        if not port or not service.proxied or dns_pod is None:
            continue
        row = row_for([_Backend(dns_pod, port)])
        values = [0] * FE_COLS
        values[FE_ROW] = row
        values[FE_ID] = port_id(service.key, "healthz", "TCP")
        entries.append((frontend_key(ip_to_int(node_address), 6, port), values))
        frontends.append(Frontend(service.key, "healthz", str(node_address), "TCP", port,
                                  [f"{dns_pod.ip}:{port}"], False, "node-local", values[FE_ID]))

    # host ports: this node's address:hostPort to its pod's containerPort, client kept
    claimed = {key for key, _ in entries}
    shadowed = []
    for pod in cluster.pods:
        if pod.node != node_name or pod.awaiting_cni:
            continue
        for cp in pod.ports:
            if not cp.host_port or cp.protocol not in HOST_PORT_PROTOCOLS:
                continue
            key = frontend_key(ip_to_int(node_address), HOST_PORT_PROTOCOLS[cp.protocol],
                               cp.host_port)
            owner = f"{pod.namespace}/{pod.name}"
            if key in claimed:
                shadowed.append(f"{node_address}:{cp.host_port}/{cp.protocol} of pod {owner}")
                continue
            claimed.add(key)
            values = [0] * FE_COLS
            values[FE_ROW] = row_for([_Backend(pod, cp.container_port)])
            values[FE_ID] = port_id(owner, f"hostPort-{cp.host_port}", cp.protocol)
            entries.append((key, values))
            frontends.append(Frontend(owner, "hostPort", str(node_address), cp.protocol,
                                      cp.host_port, [f"{pod.ip}:{cp.container_port}"], False,
                                      "node-local", values[FE_ID]))

    fe_keys = hashtable.new_keys(max(1, len(entries)))
    fe_vals = np.zeros((fe_keys.shape[0], FE_COLS), dtype=np.int64)
    for frontend, (key, values) in zip(frontends, entries):
        frontend.slot = hashtable.find_or_claim(fe_keys, key)
        fe_vals[frontend.slot] = values
    fe_new = np.zeros(fe_keys.shape[0], dtype=np.int64)
    maglev = (np.stack(row_arrays) if row_arrays else np.full((1, size), -1, dtype=np.int32))
    be_ip = np.array([ip for ip, _ in backends] or [0], dtype=np.int64)
    be_port = np.array([port for _, port in backends] or [0], dtype=np.int64)
    return ServiceTables(fe_keys, fe_vals, maglev, be_ip, be_port, fe_new, frontends,
                         backend_names, sorted(set(announced)), shadowed)
