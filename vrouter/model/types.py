"""The cluster as validated, frozen objects: what vrouter.model.config builds from a cluster
file (and the live model adds to: vrouter.model.live), and what everything else reads."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from vrouter.model import addressing
from vrouter.model.netnsnames import CNI, netns_path, outside_netns_name

DEFAULT_MAX_PODS = 110       # pods per node, as Kubernetes' default
DEFAULT_FDB_AGE = 300
DEFAULT_FDB_MAX_PER_PORT = 16   # MACs one pod port may have learned at once
DEFAULT_BUSY_POLL_US = 200   # see the README's latency notes
DEFAULT_NODE_NETWORK = "172.18.0.0/24"   # as a kind cluster's docker network
DEFAULT_DNS_DOMAIN = "cluster.local"
DEFAULT_LEASE_TTL = 30       # seconds (cluster.datastore.leaseTTL)
# outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 (RFC 7348): fastpath.layout has the same (a test
# says so); not imported from there, since fastpath loads numba (half a second), which commands
# that only read a cluster file (apply, get, vrouter-cni) do without
OVERLAY_OVERHEAD = 50


class ConfigError(Exception):
    """A config problem: which file, which field, what is wrong."""

    def __init__(self, path: str, field_path: str, problem: str):
        self.path = path
        self.field_path = field_path
        self.problem = problem
        where = f"{path}: {field_path}" if field_path else path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Overlay:
    vni: int = 1
    port: int = 4789
    mtu: int = 1500

    @property
    def pod_mtu(self) -> int:
        return self.mtu - OVERLAY_OVERHEAD


@dataclass(frozen=True)
class Node:
    name: str
    index: int = field(compare=False)   # its place in the model (metrics port), not what it is
    underlay: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network
    vtep_mac: str
    address: ipaddress.IPv4Address   # the node's address on the outside network (NodePorts)
    kernel: bool = False             # served by the Linux kernel (`vrouter kernel-node`)

    @property
    def mac(self) -> str:
        """The MAC of the node's outside interface."""
        return mac_from_ip("02:76", self.address)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return addressing.gateway(self.pod_cidr)

    @property
    def gateway_mac(self) -> str:
        return mac_from_ip("02:76", self.gateway)


@dataclass(frozen=True)
class ContainerPort:
    name: str
    container_port: int
    protocol: str
    host_port: int | None = None   # published on the pod's node address (hostPort / portMappings)


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    node: str
    ip: ipaddress.IPv4Address
    mac: str
    netns: str           # a name under /run/netns, an absolute path, or "cni" (not attached yet)
    owns_netns: bool     # True when vrouter creates (and later deletes) the namespace
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    ifname: str = "eth0"    # its interface inside the netns (a CNI runtime may choose another)
    dns_server: bool = False   # the node's cluster DNS server pod (kube-system/kube-dns)

    @property
    def awaiting_cni(self) -> bool:
        """Declared in the cluster file for a container runtime to attach (netns: cni), and not
        attached yet: it has its address and labels, but no interface, so it is no endpoint."""
        return self.netns == CNI

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)


@dataclass(frozen=True)
class ClusterDNS:
    """Cluster DNS (vrouter.model.dns): the kube-dns Service address that every pod's
    resolv.conf names, served on every vrouter node by a DNS server pod of its own."""
    enabled: bool = True
    address: ipaddress.IPv4Address | None = None   # the kube-dns ClusterIP (serviceCIDR .10)
    domain: str = DEFAULT_DNS_DOMAIN
    ttl: int = 30                  # as kubeadm's Corefile sets it (CoreDNS's own default: 5)
    pods: str = "insecure"         # A-B-C-D.NS.pod records: insecure | verified | disabled

    def settings(self, namespace: str) -> dict:
        """What a Kubernetes pod of `namespace` resolves with (dnsPolicy ClusterFirst), in the
        shape of a CNI result's dns."""
        d = self.domain
        return {"nameservers": [str(self.address)],
                "search": [f"{namespace}.svc.{d}", f"svc.{d}", d], "options": ["ndots:5"]}

    def resolv_conf(self, namespace: str) -> str:
        s = self.settings(namespace)
        return (f"nameserver {' '.join(s['nameservers'])}\nsearch {' '.join(s['search'])}\n"
                f"options {' '.join(s['options'])}\n")


@dataclass(frozen=True)
class ServiceOptions:
    maglev_size: int = 16381        # prime; Maglev's M


@dataclass(frozen=True)
class ConntrackOptions:
    """The node's state tables (cluster.conntrack): each is bounded, and what happens at the
    bound is counted (see fastpath.conntrack)."""
    max_entries: int = 65536        # tracked connections (one record, two keys each)
    affinity_entries: int = 16384   # ClientIP session affinity (client, Service port) entries
    fragment_entries: int = 1024    # first fragments whose later fragments are still to come


@dataclass(frozen=True)
class Datastore:
    """Where the cluster's state lives besides the file (cluster.datastore): `file`, the
    records under /run/vrouter of one machine, or `etcd` (vrouter.store)."""
    type: str = "file"
    endpoints: tuple[str, ...] = ()
    prefix: str = "/vrouter"
    lease_ttl: int = DEFAULT_LEASE_TTL
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class Cluster:
    source: str
    name: str
    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    overlay: Overlay
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    fdb_age: int = DEFAULT_FDB_AGE
    fdb_max_per_port: int = DEFAULT_FDB_MAX_PER_PORT
    services: tuple = ()          # services.Service, from the cluster file and --manifests
    service_options: ServiceOptions = ServiceOptions()
    conntrack: ConntrackOptions = ConntrackOptions()
    manifests: str | None = None  # the --manifests directory, if any
    node_network: ipaddress.IPv4Network = ipaddress.IPv4Network(DEFAULT_NODE_NETWORK)
    busy_poll_us: int = DEFAULT_BUSY_POLL_US   # keep polling this long after traffic (0: never)
    max_pods: int = DEFAULT_MAX_PODS           # pod ports per node (the uplink is port max_pods)
    metrics_port: int = 0                      # node k serves Prometheus on 127.0.0.1:port+k (0: off)
    dns: ClusterDNS = ClusterDNS()
    namespaces: tuple = ()        # policy.Namespace objects declared (others exist implicitly)
    policies: tuple = ()          # policy.NetworkPolicy
    masquerade: bool = True       # pods' traffic to the outside network leaves as the node's
    outside_gateway: ipaddress.IPv4Address | None = None   # the nodes' default route (None: none)
    datastore: Datastore = Datastore()
    node_mask: int = addressing.DEFAULT_NODE_MASK   # cluster.nodeCIDRMaskSize
    # what the cluster file said, to build the live model from (vrouter.model.config.Spec)
    spec: object = field(default=None, compare=False, repr=False)

    def dns_pod(self, node_name: str) -> "Pod | None":
        return next((p for p in self.pods if p.dns_server and p.node == node_name), None)

    def metrics_address(self, node_name: str) -> tuple[str, int] | None:
        """Where a node serves its Prometheus metrics, if it does."""
        if not self.metrics_port:
            return None
        return "127.0.0.1", self.metrics_port + self.node(node_name).index

    @property
    def outside_netns(self) -> str:
        return outside_netns_name(self.name)

    @property
    def outside_host(self) -> ipaddress.IPv4Address:
        return outside_host_address(self.node_network)

    @property
    def outside_host_mac(self) -> str:
        return mac_from_ip("02:76", self.outside_host)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def service_by_key(self, key: str):
        for service in self.services:
            if service.key == key:
                return service
        raise KeyError(key)

    def pods_of(self, node_name: str) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.node == node_name)

    def local_pods(self, node_name: str) -> tuple[Pod, ...]:
        """The node's pods that have (or get, at its start) an interface: not those a container
        runtime has yet to attach."""
        return tuple(p for p in self.pods_of(node_name) if not p.awaiting_cni)

    def pod(self, name: str) -> Pod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(name)


def outside_host_address(node_network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The outside namespace's own address on the node network: its first host address."""
    return node_network.network_address + 1


def mac_from_ip(prefix: str, ip: ipaddress.IPv4Address) -> str:
    """A stable MAC: two prefix octets then the four IPv4 octets (0a:58 is what kubenet uses)."""
    return prefix + "".join(f":{b:02x}" for b in ip.packed)
