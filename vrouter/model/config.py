"""The only reader of cluster files: YAML in, validated frozen objects out.

The first YAML document describes the cluster (cluster, nodes, pods); later documents are
Kubernetes objects. Every problem is reported as a ConfigError naming the file, the field path
and what is wrong. Loading has no side effects, so a bad config creates nothing.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from fastpath.layout import OVERLAY_OVERHEAD
from vrouter.model.names import DNS_LABEL as _DNS_LABEL

NETNS_RUN_DIR = "/run/netns"
CNI = "cni"                  # pods[].netns: attached at runtime by the CNI plugin
DEFAULT_MAX_PODS = 110       # pods per node, as Kubernetes' default
DEFAULT_FDB_AGE = 300
DEFAULT_FDB_MAX_PER_PORT = 16   # MACs one pod port may have learned at once
DEFAULT_BUSY_POLL_US = 200   # see the README's latency notes
DEFAULT_NODE_NETWORK = "172.18.0.0/24"   # as a kind cluster's docker network
DEFAULT_DNS_DOMAIN = "cluster.local"
_NETNS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


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
    index: int
    underlay: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network
    vtep_mac: str
    address: ipaddress.IPv4Address   # the node's address on the outside network (NodePorts)
    kernel: bool = False             # served by the Linux kernel (`vrouter kernel-node`)
    labels: tuple[tuple[str, str], ...] = ()   # for nodeSelector (vrouter.model.scheduler)

    @property
    def mac(self) -> str:
        """The MAC of the node's outside interface."""
        return mac_from_ip("02:76", self.address)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address + 1

    @property
    def gateway_mac(self) -> str:
        return mac_from_ip("02:76", self.gateway)


@dataclass(frozen=True)
class ContainerPort:
    name: str
    container_port: int
    protocol: str


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
    # spec (vrouter.model.podspec): its DNS identity and its programs
    hostname: str = ""
    subdomain: str = ""
    containers: tuple = ()          # podspec.Container
    restart_policy: str = "Always"
    grace_seconds: int = 30
    source: str = ""                # the file of its manifest (errors of its programs name it)
    # made by a workload (vrouter.model.workloads): its controller and the workload's key
    owner: str = ""                 # "ReplicaSet/web-5d59d67564", "StatefulSet/db"
    workload: str = ""              # "Deployment/default/web"
    revision: str = ""              # the hash of the pod template it was made from
    # in the live model: False while a pod that has to be (a workload's, or one with a program
    # or a probe) is not ready yet: it is no Service endpoint then
    ready: bool = True

    @property
    def gated(self) -> bool:
        """Whether readiness decides if it is an endpoint (Kubernetes: a pod is an endpoint
        once Ready). Bare pods without programs are endpoints from the start, as before."""
        return bool(self.workload) or any(c.runs or c.readiness for c in self.containers)

    @property
    def awaiting_cni(self) -> bool:
        """Declared in the cluster file for a container runtime to attach (netns: cni), and not
        attached yet: it has its address and labels, but no interface, so it is no endpoint."""
        return self.netns == CNI

    @property
    def netns_path(self) -> str:
        return self.netns if self.netns.startswith("/") else os.path.join(NETNS_RUN_DIR, self.netns)


@dataclass(frozen=True)
class ClusterDNS:
    """Cluster DNS (vrouter.model.dns): the kube-dns Service address that every pod's
    resolv.conf names, served on every vrouter node by a DNS server pod of its own."""
    enabled: bool = True
    address: ipaddress.IPv4Address | None = None   # the kube-dns ClusterIP (serviceCIDR .10)
    domain: str = DEFAULT_DNS_DOMAIN

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


DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
DNS_LABELS = (("k8s-app", "kube-dns"),)


def dns_pod_name(cluster_name: str, node_name: str) -> str:
    """The DNS server pod of a node: it names a network namespace, so the cluster's name is in
    it (two clusters on one machine must not clash)."""
    return f"{cluster_name}-dns-{node_name}"


def dns_pod_ip(node: "Node") -> ipaddress.IPv4Address:
    """The last usable address of the node's podCIDR (pods are allocated from the bottom)."""
    return node.pod_cidr.broadcast_address - 1


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
    workloads: tuple = ()         # workloads.Workload (Deployments, StatefulSets, ...)

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


def outside_netns_name(cluster_name: str) -> str:
    """The namespace that plays the world outside the cluster (see vrouter/outside.py)."""
    return f"{cluster_name}-outside"


def outside_host_address(node_network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The outside namespace's own address on the node network: its first host address."""
    return node_network.network_address + 1


def mac_from_ip(prefix: str, ip: ipaddress.IPv4Address) -> str:
    """A stable MAC: two prefix octets then the four IPv4 octets (0a:58 is what kubenet uses)."""
    return prefix + "".join(f":{b:02x}" for b in ip.packed)


# --- small typed readers that know where they are -------------------------------------------

class _Reader:
    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, problem: str):
        raise ConfigError(self.path, where, problem)

    def mapping(self, value, where, allowed, required=()):
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.fail(_join(where, str(key)), f"unknown field (allowed here: {hint})")
        for key in required:
            if key not in value:
                self.fail(_join(where, key), "required field is missing")
        return value

    def integer(self, value, where, low, high):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            self.fail(where, f"{value} is out of range {low}..{high}")
        return value

    def string(self, value, where, pattern=None, what="a string"):
        if not isinstance(value, str) or not value:
            self.fail(where, f"must be {what}, got {value!r}")
        if pattern is not None and not pattern.match(value):
            self.fail(where, f"{value!r} is not {what}")
        return value

    def network(self, value, where, strict=True):
        """An IPv4 CIDR; with `strict` False host bits may be set (Kubernetes' ipBlock)."""
        if not isinstance(value, str):
            self.fail(where, f"must be an IPv4 CIDR such as 10.244.0.0/16, got {value!r}")
        try:
            return ipaddress.IPv4Network(value, strict=strict)
        except ValueError as exc:
            self.fail(where, f"{value!r} is not a valid IPv4 CIDR ({exc})")

    def address(self, value, where):
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(where, f"{value!r} is not a valid IPv4 address")

    def labels(self, raw, where) -> tuple[tuple[str, str], ...]:
        """Kubernetes labels (or matchLabels): a mapping of strings."""
        if not isinstance(raw, dict):
            self.fail(where, "must be a mapping of label names to values")
        for key, value in raw.items():
            if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
                self.fail(_join(where, str(key)), "label names and values must be strings")
        return tuple(sorted((k, str(v)) for k, v in raw.items()))

    def metadata(self, doc, where, namespaced=True):
        """A Kubernetes object's (metadata, name, namespace); the rest of metadata (uid,
        annotations...) is ignored. A cluster-scoped object's namespace is None."""
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or "name" not in meta:
            self.fail(f"{where}.metadata", "must be a mapping with a name")
        name = self.string(meta["name"], f"{where}.metadata.name", _DNS_LABEL, "a DNS label")
        namespace = None
        if namespaced:
            namespace = self.string(meta.get("namespace", "default"),
                                    f"{where}.metadata.namespace", _DNS_LABEL, "a DNS label")
        return meta, name, namespace

    def mac(self, value, where):
        value = self.string(value, where, _MAC, "a MAC address such as 0e:76:0a:f4:01:00")
        if int(value[:2], 16) & 1:
            self.fail(where, f"{value} is a multicast MAC address")
        return value.lower()


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --- loading ------------------------------------------------------------------------------------

def load(path: str | os.PathLike, check_host: bool = True,
         manifests: str | os.PathLike | None = None) -> Cluster:
    """Read and validate a cluster file (and the Service manifests of a directory).
    `check_host` also checks that named netns exist."""
    path = str(path)
    text = _read(path)
    extra = []
    if manifests is not None:
        directory = Path(manifests)
        if not directory.is_dir():
            raise ConfigError(str(manifests), "", "--manifests must name a directory")
        for file in sorted(directory.iterdir()):
            if file.suffix in (".yaml", ".yml", ".json"):
                extra.append((str(file), _read(str(file))))
    return parse(text, path, check_host=check_host, manifests=extra,
                 manifests_dir=str(manifests) if manifests is not None else None)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file: {exc.strerror}") from None


def _documents(text: str, path: str) -> list:
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, where, f"invalid YAML: {reason}") from None


def parse(text: str, path: str = "<string>", check_host: bool = True,
          manifests: list[tuple[str, str]] = (), manifests_dir: str | None = None) -> Cluster:
    """`manifests`: (file name, text) pairs of further Kubernetes manifests."""
    reader = _Reader(path)
    documents = _documents(text, path)
    if not documents:
        reader.fail("", "the file is empty: expected a cluster document with cluster, nodes, pods")
    cluster_doc = reader.mapping(documents[0], "", {"cluster", "nodes", "pods"},
                                 required=("cluster", "nodes"))
    objects = []
    for n, doc in enumerate(documents[1:], start=1):
        objects += _check_object(reader, doc, f"document {n + 1}", path)
    for file, file_text in manifests:
        for n, doc in enumerate(_documents(file_text, file)):
            objects += _check_object(_Reader(file), doc, f"document {n + 1}", file)
    return _build_cluster(reader, cluster_doc, objects, check_host, manifests_dir)


KINDS = ("Service", "Pod", "Namespace", "NetworkPolicy", "Deployment", "ReplicaSet",
         "StatefulSet", "DaemonSet")


def _check_object(reader: _Reader, doc, where: str, source: str) -> list[tuple[str, object]]:
    """One Kubernetes object (or a List of them) -> (kind, parsed object) pairs."""
    from vrouter.model import policy, services, workloads
    if not isinstance(doc, dict) or "kind" not in doc:
        reader.fail(where, "expected a Kubernetes object with apiVersion and kind")
    kind = doc["kind"]
    if kind == "List":
        items = doc.get("items") or []
        out = []
        for k, item in enumerate(items):
            out += _check_object(reader, item, f"{where}.items[{k}]", source)
        return out
    if kind == "Service":
        return [(kind, services.parse(reader, doc, where, source))]
    if kind == "Namespace":
        return [(kind, policy.parse_namespace(reader, doc, where))]
    if kind == "NetworkPolicy":
        return [(kind, policy.parse_policy(reader, doc, where, source))]
    if kind == "Pod":
        return [(kind, _pod_manifest(reader, doc, where))]
    if kind in workloads.KINDS:
        return [("Workload", workloads.parse(reader, doc, where, source))]
    reader.fail(_join(where, "kind"), f"unsupported Kubernetes kind {kind!r} (vrouter reads "
                f"{', '.join(KINDS)} and List)")


# where a pods[] field lives in a v1 Pod manifest (for error messages)
_POD_MANIFEST_FIELDS = {"name": "metadata.name", "namespace": "metadata.namespace",
                        "labels": "metadata.labels", "node": "spec.nodeName",
                        "ports": "spec.containers[].ports", "hostname": "spec.hostname",
                        "subdomain": "spec.subdomain"}


@dataclass(frozen=True)
class _PodEntry:
    """One pod to build: an item of the cluster document's pods list, or a Pod manifest (its
    fields in the pods-list shape, `paths` naming where each came from)."""
    reader: _Reader
    where: str
    fields: dict
    paths: dict | None = None
    extra: dict | None = None   # a manifest's spec beyond the pods-list fields (Pod fields)

    def at(self, key: str) -> str:
        return _join(self.where, self.paths.get(key, key) if self.paths else key)

    def fail(self, key: str, problem: str):
        self.reader.fail(self.at(key) if key else self.where, problem)


def _pod_manifest(reader: _Reader, doc: dict, where: str) -> _PodEntry:
    """A v1 Pod: vrouter reads its name, namespace, labels, node and container ports (the pod
    gets its own network namespace, made by vrouter, and an address from the node's podCIDR)."""
    reader.mapping(doc, where, {"apiVersion", "kind", "metadata", "spec", "status"},
                   required=("metadata", "spec"))
    if doc.get("apiVersion", "v1") != "v1":
        reader.fail(f"{where}.apiVersion", f"{doc['apiVersion']!r}: Pods are apiVersion v1")
    from vrouter.model import podspec
    meta, name, namespace = reader.metadata(doc, where)
    spec = podspec.parse(reader, doc["spec"], f"{where}.spec", source=reader.path,
                         containers_required=False)
    if spec.node_name is None:
        reader.fail(f"{where}.spec.nodeName", "required field is missing (a Pod manifest "
                    "names its node; workloads are placed by vrouter's scheduler)")
    fields = {"name": name, "namespace": namespace, "node": spec.node_name,
              "ports": spec.ports, "labels": meta.get("labels") or {}}
    extra = {"hostname": spec.hostname, "subdomain": spec.subdomain,
             "containers": spec.containers, "restart_policy": spec.restart_policy,
             "grace_seconds": spec.grace_seconds, "source": reader.path}
    return _PodEntry(reader, where, fields, _POD_MANIFEST_FIELDS, extra)


def _build_cluster(reader: _Reader, doc: dict, objects, check_host: bool,
                   manifests_dir) -> Cluster:
    from vrouter.model import services
    parsed_services = [o for kind, o in objects if kind == "Service"]
    c = reader.mapping(doc["cluster"], "cluster",
                       {"name", "podCIDR", "serviceCIDR", "nodeNetwork", "overlay", "fdbAgeSeconds",
                        "fdbMaxPerPort",
                        "services", "conntrack", "busyPollMicroseconds", "maxPodsPerNode",
                        "metricsPort", "dns", "masquerade", "outsideGateway"},
                       required=("podCIDR",))
    default_name = Path(reader.path).stem if reader.path != "<string>" else "vrouter"
    name = reader.string(c.get("name", default_name), "cluster.name", _DNS_LABEL,
                         "a DNS label (lowercase letters, digits, '-')")
    pod_cidr = reader.network(c["podCIDR"], "cluster.podCIDR")
    service_cidr = reader.network(c.get("serviceCIDR", "10.96.0.0/16"), "cluster.serviceCIDR")
    if pod_cidr.overlaps(service_cidr):
        reader.fail("cluster.serviceCIDR", f"{service_cidr} overlaps cluster.podCIDR {pod_cidr}")
    node_network = reader.network(c.get("nodeNetwork", DEFAULT_NODE_NETWORK), "cluster.nodeNetwork")
    for other, field in ((pod_cidr, "cluster.podCIDR"), (service_cidr, "cluster.serviceCIDR")):
        if node_network.overlaps(other):
            reader.fail("cluster.nodeNetwork", f"{node_network} overlaps {field} {other}")
    overlay = _build_overlay(reader, c.get("overlay", {}))
    fdb_age = reader.integer(c.get("fdbAgeSeconds", DEFAULT_FDB_AGE), "cluster.fdbAgeSeconds",
                             1, 86400)
    fdb_max_per_port = reader.integer(c.get("fdbMaxPerPort", DEFAULT_FDB_MAX_PER_PORT),
                                      "cluster.fdbMaxPerPort", 1, 4096)
    busy_poll = reader.integer(c.get("busyPollMicroseconds", DEFAULT_BUSY_POLL_US),
                               "cluster.busyPollMicroseconds", 0, 1_000_000)
    max_pods = reader.integer(c.get("maxPodsPerNode", DEFAULT_MAX_PODS), "cluster.maxPodsPerNode",
                              1, 4096)
    metrics_port = reader.integer(c.get("metricsPort", 0), "cluster.metricsPort", 0, 65535)

    raw_nodes = doc["nodes"]
    if not isinstance(raw_nodes, list) or not raw_nodes:
        reader.fail("nodes", "must be a non-empty list of nodes")
    if len(raw_nodes) > node_network.num_addresses - 3:
        reader.fail("cluster.nodeNetwork", f"{node_network} has no room for {len(raw_nodes)} nodes "
                    "and the outside host")
    nodes = []
    for n, raw in enumerate(raw_nodes):
        nodes.append(_build_node(reader, raw, f"nodes[{n}]", n, pod_cidr, node_network, nodes))

    dns = _build_dns(reader, c.get("dns", {}), service_cidr)
    dns_ips = {dns_pod_ip(nd): f"node {nd.name!r}'s cluster DNS server (cluster.dns)"
               for nd in nodes} if dns.enabled else {}
    raw_pods = doc.get("pods", []) or []
    if not isinstance(raw_pods, list):
        reader.fail("pods", "must be a list of pods")
    entries = [_PodEntry(reader, f"pods[{n}]", raw) for n, raw in enumerate(raw_pods)]
    entries += [o for kind, o in objects if kind == "Pod"]
    pods = _build_pods(entries, {nd.name: nd for nd in nodes}, check_host, dns_ips)
    if dns.enabled:
        pods += _dns_pods(reader, name, nodes, pods)
    parsed_workloads = _unique(reader, [o for kind, o in objects if kind == "Workload"],
                               lambda w: w.key, "workload")
    if parsed_workloads:
        from vrouter.model import workloads
        pods += workloads.expand(parsed_workloads, {}, nodes, pods)
    if metrics_port and (metrics_port < 1024 or metrics_port + len(nodes) - 1 > 65535):
        reader.fail("cluster.metricsPort", f"{metrics_port}: node k serves metrics on port "
                    f"metricsPort+k, so it must lie in 1024..{65536 - len(nodes)} (0: off)")
    for node in nodes:
        count = sum(1 for p in pods if p.node == node.name)
        if count > max_pods:
            reader.fail("pods", f"node {node.name!r} has {count} pods, more than "
                        f"cluster.maxPodsPerNode {max_pods}")
    for pod in pods:
        if pod.netns == outside_netns_name(name):
            reader.fail("pods", f"pod {pod.name!r} would take the name of the cluster's outside "
                        "namespace")
    options = _build_service_options(reader, c.get("services", {}))
    conntrack = _build_conntrack_options(reader, c.get("conntrack", {}))
    reserved = {n.address: f"the address of node {n.name!r} on cluster.nodeNetwork "
                           f"(nodes[{n.index}].address)" for n in nodes}
    reserved[outside_host_address(node_network)] = ("the outside host's address (the first of "
                                                    "cluster.nodeNetwork)")
    dns_service = {dns.address: "cluster DNS (cluster.dns.address; "
                                  "give cluster.dns another address, or this Service another)"} if dns.enabled else {}
    allocated = services.allocate(parsed_services, service_cidr, reserved, dns_service,
                                  networks=((pod_cidr, "cluster.podCIDR"),
                                            (service_cidr, "cluster.serviceCIDR")))
    if dns.enabled:
        allocated.append(services.kube_dns(dns.address))
    masquerade = c.get("masquerade", True)
    if not isinstance(masquerade, bool):
        reader.fail("cluster.masquerade", f"{masquerade!r} is not true or false")
    outside_gateway = _build_outside_gateway(reader, c, node_network, nodes)
    namespaces = _unique(reader, [o for kind, o in objects if kind == "Namespace"],
                         lambda ns: ns.name, "Namespace")
    policies = _unique(reader, [o for kind, o in objects if kind == "NetworkPolicy"],
                       lambda p: p.key, "NetworkPolicy")
    return Cluster(source=reader.path, name=name, pod_cidr=pod_cidr, service_cidr=service_cidr,
                   overlay=overlay, nodes=tuple(nodes), pods=tuple(pods), fdb_age=fdb_age,
                   fdb_max_per_port=fdb_max_per_port,
                   services=tuple(allocated), service_options=options, conntrack=conntrack,
                   manifests=manifests_dir,
                   node_network=node_network, busy_poll_us=busy_poll, max_pods=max_pods,
                   metrics_port=metrics_port, dns=dns, namespaces=tuple(namespaces),
                   policies=tuple(policies), masquerade=masquerade,
                   outside_gateway=outside_gateway, workloads=tuple(parsed_workloads))


def _unique(reader: _Reader, items: list, key, kind: str) -> list:
    seen = {}
    for item in items:
        if key(item) in seen:
            reader.fail("", f"{kind} {key(item)!r} is defined twice ({seen[key(item)]} and "
                        f"{getattr(item, 'source', '') or reader.path})")
        seen[key(item)] = getattr(item, "source", "") or reader.path
    return items


def _build_outside_gateway(reader: _Reader, c: dict, node_network, nodes):
    """The nodes' default gateway, as a VPC router is: by default the outside host; `none`
    (or null) leaves the nodes without a default route (net unreachable beyond nodeNetwork)."""
    raw = c.get("outsideGateway", "default")
    if raw == "default":
        return outside_host_address(node_network)
    if raw in (None, "none"):
        return None
    gateway = reader.address(raw, "cluster.outsideGateway")
    if gateway not in node_network or gateway in (node_network.network_address,
                                                  node_network.broadcast_address):
        reader.fail("cluster.outsideGateway", f"{gateway} is not a host address of "
                    f"cluster.nodeNetwork {node_network}: a gateway is on the network")
    for node in nodes:
        if node.address == gateway:
            reader.fail("cluster.outsideGateway", f"{gateway} is node {node.name!r}'s address")
    return gateway


def _build_dns(reader: _Reader, raw, service_cidr) -> ClusterDNS:
    d = reader.mapping(raw, "cluster.dns", {"enabled", "address", "domain"})
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        reader.fail("cluster.dns.enabled", f"{enabled!r} is not true or false")
    address = (reader.address(d["address"], "cluster.dns.address") if "address" in d
               else service_cidr.network_address + 10)
    if address not in service_cidr or address in (service_cidr.network_address,
                                                   service_cidr.broadcast_address):
        reader.fail("cluster.dns.address", f"{address} is not a usable address of "
                    f"cluster.serviceCIDR {service_cidr}")
    domain = reader.string(d.get("domain", DEFAULT_DNS_DOMAIN), "cluster.dns.domain")
    labels = domain.rstrip(".").split(".")
    if not all(_DNS_LABEL.match(label) for label in labels) or len(domain) > 200:
        reader.fail("cluster.dns.domain", f"{domain!r} is not a DNS domain (e.g. cluster.local)")
    return ClusterDNS(enabled=enabled, address=address, domain=".".join(labels))


def _dns_pods(reader: _Reader, cluster_name: str, nodes, pods) -> list[Pod]:
    """One DNS server pod per node, in kube-system with the kube-dns labels, at the last
    usable address of the node's podCIDR."""
    made = []
    for node in nodes:
        name = dns_pod_name(cluster_name, node.name)
        if any(p.name == name for p in pods):
            reader.fail("pods", f"pod name {name!r} is the name of node {node.name!r}'s cluster "
                        "DNS server pod")
        if len(name) > 63 or not _NETNS_NAME.match(name):
            reader.fail("cluster.name", f"{name!r} (node {node.name!r}'s DNS server pod) is too "
                        "long a pod name: shorten the cluster or node name")
        ip = dns_pod_ip(node)
        made.append(Pod(name=name, namespace=DNS_NAMESPACE, node=node.name, ip=ip,
                        mac=mac_from_ip("0a:58", ip), netns=name, owns_netns=True,
                        labels=DNS_LABELS, dns_server=True))
    return made


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % k for k in range(2, int(n ** 0.5) + 1))


def _build_service_options(reader: _Reader, raw) -> ServiceOptions:
    o = reader.mapping(raw, "cluster.services", {"maglevTableSize", "maxFlows"})
    if "maxFlows" in o:
        reader.fail("cluster.services.maxFlows", "moved: the connection table is sized by "
                    "cluster.conntrack.maxEntries")
    size = reader.integer(o.get("maglevTableSize", 16381), "cluster.services.maglevTableSize",
                          7, 1_000_003)
    if not _is_prime(size):
        reader.fail("cluster.services.maglevTableSize", f"{size} is not a prime (Maglev needs one,"
                    " e.g. 251, 1021, 4093, 16381, 65521)")
    return ServiceOptions(maglev_size=size)


def _build_conntrack_options(reader: _Reader, raw) -> ConntrackOptions:
    o = reader.mapping(raw, "cluster.conntrack", {"maxEntries", "affinityEntries",
                                                  "fragmentEntries"})
    d = ConntrackOptions()
    return ConntrackOptions(
        max_entries=reader.integer(o.get("maxEntries", d.max_entries),
                                   "cluster.conntrack.maxEntries", 64, 1 << 22),
        affinity_entries=reader.integer(o.get("affinityEntries", d.affinity_entries),
                                        "cluster.conntrack.affinityEntries", 64, 1 << 22),
        fragment_entries=reader.integer(o.get("fragmentEntries", d.fragment_entries),
                                        "cluster.conntrack.fragmentEntries", 64, 1 << 20))


def _build_overlay(reader: _Reader, raw) -> Overlay:
    o = reader.mapping(raw, "cluster.overlay", {"vni", "port", "mtu"})
    return Overlay(
        vni=reader.integer(o.get("vni", 1), "cluster.overlay.vni", 1, (1 << 24) - 1),
        port=reader.integer(o.get("port", 4789), "cluster.overlay.port", 1, 65535),
        # pod MTU = mtu - 50 must still carry a minimal IPv4 packet (576, RFC 791)
        mtu=reader.integer(o.get("mtu", 1500), "cluster.overlay.mtu", 576 + OVERLAY_OVERHEAD, 65535),
    )


def _build_node(reader: _Reader, raw, where, index, cluster_cidr, node_network, earlier) -> Node:
    d = reader.mapping(raw, where, {"name", "underlay", "podCIDR", "vtepMAC", "address", "kernel",
                                    "labels"},
                       required=("name", "underlay", "podCIDR"))
    kernel = d.get("kernel", False)
    if not isinstance(kernel, bool):
        reader.fail(f"{where}.kernel", f"{kernel!r} is not true or false")
    name = reader.string(d["name"], f"{where}.name", _DNS_LABEL,
                         "a DNS label (lowercase letters, digits, '-')")
    underlay = reader.address(d["underlay"], f"{where}.underlay")
    cidr = reader.network(d["podCIDR"], f"{where}.podCIDR")
    if not cidr.subnet_of(cluster_cidr):
        reader.fail(f"{where}.podCIDR", f"{cidr} is outside cluster.podCIDR {cluster_cidr}")
    if cidr.prefixlen > 30:
        reader.fail(f"{where}.podCIDR", f"{cidr} is too small: it needs room for a gateway and pods")
    for other in earlier:
        if other.name == name:
            reader.fail(f"{where}.name", f"duplicate node name {name!r}")
        if other.underlay == underlay:
            reader.fail(f"{where}.underlay", f"{underlay} is already node {other.name!r}'s underlay")
        if other.pod_cidr.overlaps(cidr):
            reader.fail(f"{where}.podCIDR",
                        f"{cidr} overlaps node {other.name!r}'s podCIDR {other.pod_cidr}")
    vtep_mac = (reader.mac(d["vtepMAC"], f"{where}.vtepMAC") if "vtepMAC" in d
                else mac_from_ip("0e:76", cidr.network_address))
    address = _node_address(reader, d, where, index, node_network, earlier)
    return Node(name=name, index=index, underlay=underlay, pod_cidr=cidr, vtep_mac=vtep_mac,
                address=address, kernel=kernel,
                labels=reader.labels(d.get("labels") or {}, f"{where}.labels"))


def _node_address(reader, d, where, index, node_network, earlier):
    """Given, or the node's place in config order: .2, .3, ... (.1 is the outside host)."""
    if "address" not in d:
        candidate = node_network.network_address + 2 + index
        if any(n.address == candidate for n in earlier):
            reader.fail(f"{where}.address", f"the default address {candidate} is taken by an "
                        "earlier node's explicit address; give this node one too")
        return candidate
    address = reader.address(d["address"], f"{where}.address")
    if address not in node_network:
        reader.fail(f"{where}.address", f"{address} is outside cluster.nodeNetwork {node_network}")
    reserved = (node_network.network_address, outside_host_address(node_network),
                node_network.broadcast_address)
    if address in reserved:
        reader.fail(f"{where}.address", f"{address} is the network, broadcast or outside host "
                    f"address of {node_network}")
    for other in earlier:
        if other.address == address:
            reader.fail(f"{where}.address", f"{address} is already node {other.name!r}'s address")
    return address


_POD_FIELDS = {"name", "namespace", "node", "ip", "mac", "labels", "netns", "ports"}


def _build_pods(entries: list[_PodEntry], nodes: dict, check_host: bool,
                reserved: dict) -> list[Pod]:
    """The pods list's items, then the Pod manifests, in that order."""
    # first pass: validate every field and collect the explicitly given IPs
    checked = []
    names: dict[str, str] = {}
    taken: dict[ipaddress.IPv4Address, str] = dict(reserved)   # address -> whose
    for e in entries:
        reader, where = e.reader, e.where
        d = reader.mapping(e.fields, where, _POD_FIELDS, required=("name", "node"))
        name = reader.string(d["name"], e.at("name"), _DNS_LABEL,
                             "a DNS label (lowercase letters, digits, '-')")
        if name in names:
            e.fail("name", f"duplicate pod name {name!r} (also {names[name]}); "
                   "pod names must be unique because they name network namespaces")
        names[name] = f"{reader.path}: {where}" if e.paths else where
        namespace = reader.string(d.get("namespace", "default"), e.at("namespace"), _DNS_LABEL,
                                  "a DNS label (lowercase letters, digits, '-')")
        node_name = reader.string(d["node"], e.at("node"))
        if node_name not in nodes:
            e.fail("node", f"unknown node {node_name!r} (nodes: {', '.join(nodes)})")
        node = nodes[node_name]
        ip = None
        if "ip" in d:
            ip = reader.address(d["ip"], f"{where}.ip")
            _check_pod_ip(reader, f"{where}.ip", ip, node)
            if ip in taken:
                reader.fail(f"{where}.ip", f"duplicate pod IP {ip} (also {taken[ip]})")
            taken[ip] = where
        labels = reader.labels(d.get("labels", {}), e.at("labels"))
        ports = d["ports"] if e.paths else _build_ports(reader, d.get("ports", []),
                                                        f"{where}.ports")
        netns, owns = _build_netns(reader, d, where, name, check_host, e.at("name"))
        mac = reader.mac(d["mac"], f"{where}.mac") if "mac" in d else None
        checked.append((e, name, namespace, node, ip, mac, netns, owns, labels, ports))

    # second pass: deterministic allocation (config order, lowest free address from .2 up)
    pods = []
    macs: dict[str, str] = {}
    cursor = {name: 2 for name in nodes}
    for e, name, namespace, node, ip, mac, netns, owns, labels, ports in checked:
        reader, where = e.reader, e.where
        if ip is None:
            ip = _allocate(reader, where, node, cursor, taken)
            taken[ip] = where
        mac = mac or mac_from_ip("0a:58", ip)
        if mac in macs:
            reader.fail(f"{where}.mac", f"duplicate MAC {mac} (also {macs[mac]})")
        macs[mac] = where
        pods.append(Pod(name=name, namespace=namespace, node=node.name, ip=ip, mac=mac,
                        netns=netns, owns_netns=owns, labels=labels, ports=ports,
                        **(e.extra or {})))
    return pods


def _check_pod_ip(reader, where, ip, node: Node):
    cidr = node.pod_cidr
    if ip not in cidr:
        reader.fail(where, f"{ip} is outside node {node.name!r}'s podCIDR {cidr}")
    if ip == node.gateway:
        reader.fail(where, f"{ip} is node {node.name!r}'s gateway address")
    if ip in (cidr.network_address, cidr.broadcast_address):
        reader.fail(where, f"{ip} is the network or broadcast address of {cidr}")


def _allocate(reader, where, node: Node, cursor, taken):
    cidr = node.pod_cidr
    first = int(cidr.network_address)
    while cursor[node.name] < cidr.num_addresses - 1:
        ip = ipaddress.IPv4Address(first + cursor[node.name])
        cursor[node.name] += 1
        if ip not in taken:
            return ip
    reader.fail(where, f"node {node.name!r}'s podCIDR {cidr} has no free address left")


def _build_ports(reader, raw, where):
    if not isinstance(raw, list):
        reader.fail(where, "must be a list of {name, containerPort, protocol}")
    ports = []
    for n, item in enumerate(raw):
        w = f"{where}[{n}]"
        d = reader.mapping(item, w, {"name", "containerPort", "protocol"}, required=("containerPort",))
        name = reader.string(d.get("name", f"port-{n}"), f"{w}.name")
        number = reader.integer(d["containerPort"], f"{w}.containerPort", 1, 65535)
        protocol = d.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP"):
            reader.fail(f"{w}.protocol", f"{protocol!r} is not supported (TCP or UDP)")
        ports.append(ContainerPort(name, number, protocol))
    return tuple(ports)


def _build_netns(reader, d, where, pod_name, check_host, name_at):
    """(netns, owned): the pod's own namespace, created by vrouter, unless `netns` names one."""
    if "netns" not in d:
        if not _NETNS_NAME.match(pod_name):
            reader.fail(name_at, f"{pod_name!r} cannot name a network namespace")
        return pod_name, True
    netns = reader.string(d["netns"], f"{where}.netns", what="a netns name or a path")
    if netns == CNI:
        return netns, False   # a container runtime attaches it later, through vrouter-cni
    if not netns.startswith("/") and not _NETNS_NAME.match(netns):
        reader.fail(f"{where}.netns", f"{netns!r} is neither a netns name nor an absolute path")
    if check_host:
        path = netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)
        if not os.path.exists(path):
            reader.fail(f"{where}.netns", f"network namespace {netns!r} does not exist ({path})")
    return netns, False
