"""The only reader of cluster files: YAML in, validated frozen objects out.

The first YAML document describes the cluster (cluster, nodes, pods); later documents are
Kubernetes objects. Every problem is reported as a ConfigError naming the file, the field path
and what is wrong. Loading has no side effects, so a bad config creates nothing.

The objects themselves are vrouter.model.types; the podCIDR layout is vrouter.model.addressing,
cluster DNS's pods vrouter.model.dnspods, namespace names vrouter.model.netnsnames. Their names
are importable from here too.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vrouter.model import addressing
from vrouter.model.dnspods import (  # noqa: F401 (re-exported)
    DNS_LABELS, DNS_NAMESPACE, DNS_SERVICE, build_dns, dns_pod_ip, dns_pods,
)
from vrouter.model.names import DNS_LABEL
from vrouter.model.names import DNS_LABEL as _DNS_LABEL  # noqa: F401 (re-exported)
from vrouter.model.netnsnames import (  # noqa: F401 (re-exported)
    CNI, NETNS_NAME as _NETNS_NAME, NETNS_RUN_DIR, build_netns, dns_pod_name, outside_netns_name,
)
from vrouter.model.reader import Reader, documents, join, read_text
from vrouter.model.reader import Reader as _Reader  # noqa: F401 (re-exported)
from vrouter.model.types import (  # noqa: F401 (re-exported)
    DEFAULT_BUSY_POLL_US, DEFAULT_DNS_DOMAIN, DEFAULT_LEASE_TTL, DEFAULT_FDB_AGE, DEFAULT_FDB_MAX_PER_PORT,
    DEFAULT_MAX_PODS, DEFAULT_NODE_NETWORK, OVERLAY_OVERHEAD, Cluster, ClusterDNS, ConfigError, ConntrackOptions,
    ContainerPort, Datastore, Node, Overlay, Pod, ServiceOptions, mac_from_ip, outside_host_address,
)


# --- loading ------------------------------------------------------------------------------------

def load(path: str | os.PathLike, check_host: bool = True,
         manifests: str | os.PathLike | None = None) -> Cluster:
    """Read and validate a cluster file (and the Service manifests of a directory).
    `check_host` also checks that named netns exist."""
    return read(path, check_host, manifests).cluster()


def read(path: str | os.PathLike, check_host: bool = True,
         manifests: str | os.PathLike | None = None) -> "Spec":
    """A cluster file (and its --manifests), each document checked: the Spec to build the
    cluster from."""
    path = str(path)
    text = read_text(path)
    extra = []
    if manifests is not None:
        directory = Path(manifests)
        if not directory.is_dir():
            raise ConfigError(str(manifests), "", "--manifests must name a directory")
        for file in sorted(directory.iterdir()):
            if file.suffix in (".yaml", ".yml", ".json"):
                extra.append((str(file), read_text(str(file))))
    return spec_of(text, path, check_host=check_host, manifests=extra,
                   manifests_dir=str(manifests) if manifests is not None else None)


def parse(text: str, path: str = "<string>", check_host: bool = True,
          manifests: list[tuple[str, str]] = (), manifests_dir: str | None = None) -> Cluster:
    """`manifests`: (file name, text) pairs of further Kubernetes manifests."""
    return spec_of(text, path, check_host, manifests, manifests_dir).cluster()


@dataclass(frozen=True)
class Spec:
    """What a cluster file says, document by document checked. `cluster()` validates it as a
    whole; the live model (vrouter.model.live) builds it again with the objects and nodes of
    the store, so that they are validated exactly as the file's own."""
    path: str
    document: dict              # the cluster document (cluster, nodes, pods)
    objects: tuple              # (kind, parsed object) of its Kubernetes documents
    check_host: bool = True
    manifests_dir: str | None = None

    def cluster(self, objects=(), nodes=()) -> Cluster:
        """`objects`: more (kind, parsed object) pairs (check_object); `nodes`: more nodes,
        as (Reader, where, node document) triples (nodes that registered themselves)."""
        return _build_cluster(Reader(self.path), self.document, [*self.objects, *objects],
                              self.check_host, self.manifests_dir, tuple(nodes), self)


def spec_of(text: str, path: str = "<string>", check_host: bool = True,
            manifests: list[tuple[str, str]] = (), manifests_dir: str | None = None) -> Spec:
    reader = Reader(path)
    docs = documents(text, path)
    if not docs:
        reader.fail("", "the file is empty: expected a cluster document with cluster, nodes, pods")
    cluster_doc = reader.mapping(docs[0], "", {"cluster", "nodes", "pods"},
                                 required=("cluster",))
    objects = []
    for n, doc in enumerate(docs[1:], start=1):
        objects += check_object(reader, doc, f"document {n + 1}", path)
    for file, file_text in manifests:
        for n, doc in enumerate(documents(file_text, file)):
            objects += check_object(Reader(file), doc, f"document {n + 1}", file)
    return Spec(path, cluster_doc, tuple(objects), check_host, manifests_dir)


KINDS = ("Service", "Pod", "Namespace", "NetworkPolicy")


def check_object(reader: Reader, doc, where: str, source: str, stored: bool = False
                 ) -> list[tuple[str, object]]:
    """One Kubernetes object (or a List of them) -> (kind, parsed object) pairs. `stored`: it
    comes from the store, where a Pod's status.podIP is the address its node gave it."""
    from vrouter.model import policy, services
    if not isinstance(doc, dict) or "kind" not in doc:
        reader.fail(where, "expected a Kubernetes object with apiVersion and kind")
    kind = doc["kind"]
    if kind == "List":
        items = doc.get("items") or []
        out = []
        for k, item in enumerate(items):
            out += check_object(reader, item, f"{where}.items[{k}]", source, stored)
        return out
    if kind == "Service":
        return [(kind, services.parse(reader, doc, where, source))]
    if kind == "Namespace":
        return [(kind, policy.parse_namespace(reader, doc, where))]
    if kind == "NetworkPolicy":
        return [(kind, policy.parse_policy(reader, doc, where, source))]
    if kind == "Pod":
        return [(kind, _pod_manifest(reader, doc, where, stored))]
    reader.fail(join(where, "kind"), f"unsupported Kubernetes kind {kind!r} (vrouter reads "
                f"{', '.join(KINDS)} and List)")


NETNS_ANNOTATION = "vrouter.io/netns"   # `cni`: a container runtime attaches the pod
# where a pods[] field lives in a v1 Pod manifest (for error messages)
_POD_MANIFEST_FIELDS = {"name": "metadata.name", "namespace": "metadata.namespace",
                        "labels": "metadata.labels", "node": "spec.nodeName",
                        "ports": "spec.containers[].ports", "ip": "status.podIP",
                        "netns": f"metadata.annotations.{NETNS_ANNOTATION}"}


@dataclass(frozen=True)
class _PodEntry:
    """One pod to build: an item of the cluster document's pods list, or a Pod manifest (its
    fields in the pods-list shape, `paths` naming where each came from)."""
    reader: Reader
    where: str
    fields: dict
    paths: dict | None = None

    def at(self, key: str) -> str:
        return join(self.where, self.paths.get(key, key) if self.paths else key)

    def fail(self, key: str, problem: str):
        self.reader.fail(self.at(key) if key else self.where, problem)


def _pod_manifest(reader: Reader, doc: dict, where: str, stored: bool = False) -> _PodEntry:
    """A v1 Pod: vrouter reads its name, namespace, labels, node and container ports (the pod
    gets its own network namespace, made by vrouter, and an address from the node's podCIDR;
    with the annotation vrouter.io/netns: cni a container runtime attaches it instead). From
    the store, status.podIP is the address its node gave it (kubelet's status)."""
    reader.mapping(doc, where, {"apiVersion", "kind", "metadata", "spec", "status"},
                   required=("metadata", "spec"))
    if doc.get("apiVersion", "v1") != "v1":
        reader.fail(f"{where}.apiVersion", f"{doc['apiVersion']!r}: Pods are apiVersion v1")
    meta, name, namespace = reader.metadata(doc, where)
    spec = reader.mapping(doc["spec"], f"{where}.spec",
                          {"nodeName", "containers", "restartPolicy",
                           "terminationGracePeriodSeconds"}, required=("nodeName",))
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        reader.fail(f"{where}.spec.containers", "must be a list of containers")
    ports = []
    for n, container in enumerate(containers):
        w = f"{where}.spec.containers[{n}]"
        c = reader.mapping(container, w, {"name", "image", "command", "args", "ports"})
        raw_ports = c.get("ports") or []
        if not isinstance(raw_ports, list):
            reader.fail(f"{w}.ports", "must be a list of {name, containerPort, protocol}")
        ports += _build_ports(reader, raw_ports, f"{w}.ports")
    fields = {"name": name, "namespace": namespace, "node": spec["nodeName"],
              "ports": tuple(ports), "labels": meta.get("labels") or {}}
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        reader.fail(f"{where}.metadata.annotations", "must be a mapping of strings")
    if NETNS_ANNOTATION in annotations:
        if annotations[NETNS_ANNOTATION] != CNI:
            reader.fail(f"{where}.metadata.annotations.{NETNS_ANNOTATION}",
                        f"{annotations[NETNS_ANNOTATION]!r}: the only value is {CNI!r}")
        fields["netns"] = CNI
    status = doc.get("status") or {}
    if stored and isinstance(status, dict) and status.get("podIP"):
        fields["ip"] = status["podIP"]
    return _PodEntry(reader, where, fields, _POD_MANIFEST_FIELDS)


def _build_cluster(reader: Reader, doc: dict, objects, check_host: bool,
                   manifests_dir, extra_nodes=(), spec=None) -> Cluster:
    from vrouter.model import services
    parsed_services = [o for kind, o in objects if kind == "Service"]
    c = reader.mapping(doc["cluster"], "cluster",
                       {"name", "podCIDR", "serviceCIDR", "nodeNetwork", "overlay", "fdbAgeSeconds",
                        "fdbMaxPerPort",
                        "services", "conntrack", "busyPollMicroseconds", "maxPodsPerNode",
                        "metricsPort", "dns", "masquerade", "outsideGateway", "datastore",
                        "nodeCIDRMaskSize"},
                       required=("podCIDR",))
    default_name = Path(reader.path).stem if reader.path != "<string>" else "vrouter"
    name = reader.string(c.get("name", default_name), "cluster.name", DNS_LABEL,
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

    datastore = _build_datastore(reader, c.get("datastore", {"type": "file"}), check_host)
    node_mask = reader.integer(c.get("nodeCIDRMaskSize", max(addressing.DEFAULT_NODE_MASK,
                                                             pod_cidr.prefixlen)),
                               "cluster.nodeCIDRMaskSize", pod_cidr.prefixlen, 30)
    raw_nodes = doc.get("nodes")
    if datastore.type == "etcd" and raw_nodes in (None, []):
        raw_nodes = []   # every node registers itself
    elif not isinstance(raw_nodes, list) or not raw_nodes:
        if raw_nodes is None:
            reader.fail("nodes", "required field is missing (with cluster.datastore type etcd "
                        "nodes may register themselves instead)")
        reader.fail("nodes", "must be a non-empty list of nodes")
    if len(raw_nodes) > node_network.num_addresses - 3:
        reader.fail("cluster.nodeNetwork", f"{node_network} has no room for {len(raw_nodes)} nodes "
                    "and the outside host")
    nodes = []
    for n, raw in enumerate(raw_nodes):
        nodes.append(_build_node(reader, raw, f"nodes[{n}]", n, pod_cidr, node_network, nodes))
    for node_reader, where, raw in extra_nodes:   # registered themselves (vrouter.model.live)
        nodes.append(_build_node(node_reader, raw, where, len(nodes), pod_cidr, node_network,
                                 nodes))

    dns = build_dns(reader, c.get("dns", {}), service_cidr)
    dns_ips = {dns_pod_ip(nd): f"node {nd.name!r}'s cluster DNS server (cluster.dns)"
               for nd in nodes} if dns.enabled else {}
    raw_pods = doc.get("pods", []) or []
    if not isinstance(raw_pods, list):
        reader.fail("pods", "must be a list of pods")
    entries = [_PodEntry(reader, f"pods[{n}]", raw) for n, raw in enumerate(raw_pods)]
    entries += [o for kind, o in objects if kind == "Pod"]
    pods = _build_pods(entries, {nd.name: nd for nd in nodes}, check_host, dns_ips)
    if dns.enabled:
        pods += dns_pods(reader, name, nodes, pods)
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
                   outside_gateway=outside_gateway, datastore=datastore, node_mask=node_mask,
                   spec=spec)


def _unique(reader: Reader, items: list, key, kind: str) -> list:
    seen = {}
    for item in items:
        if key(item) in seen:
            reader.fail("", f"{kind} {key(item)!r} is defined twice ({seen[key(item)]} and "
                        f"{getattr(item, 'source', '') or reader.path})")
        seen[key(item)] = getattr(item, "source", "") or reader.path
    return items


def _build_outside_gateway(reader: Reader, c: dict, node_network, nodes):
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


_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")


def _build_datastore(reader: Reader, raw, check_host: bool) -> Datastore:
    """cluster.datastore: {type: file} (the records under /run/vrouter of one machine) or
    {type: etcd, endpoints, prefix, leaseTTL, tls: {caFile, certFile, keyFile}}."""
    where = "cluster.datastore"
    d = reader.mapping(raw, where, {"type", "endpoints", "prefix", "leaseTTL", "tls"},
                       required=("type",))
    kind = d["type"]
    if kind == "file":
        for key in d:
            if key != "type":
                reader.fail(f"{where}.{key}", "only a datastore of type etcd takes it")
        return Datastore()
    if kind != "etcd":
        reader.fail(f"{where}.type", f"{kind!r}: file or etcd")
    endpoints = d.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        reader.fail(f"{where}.endpoints", "must be a non-empty list of URLs such as "
                    "http://127.0.0.1:2379")
    for n, url in enumerate(endpoints):
        if not isinstance(url, str) or not _URL.match(url):
            reader.fail(f"{where}.endpoints[{n}]", f"{url!r} is not an http:// or https:// URL "
                        "with a host (and a port), such as http://127.0.0.1:2379")
    prefix = d.get("prefix", "/vrouter")
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        reader.fail(f"{where}.prefix", f"{prefix!r} is not a key prefix such as /vrouter "
                    "(a '/' then letters, digits, '_', '.', '-'; no '/' at the end)")
    ttl = reader.integer(d.get("leaseTTL", DEFAULT_LEASE_TTL), f"{where}.leaseTTL", 2, 3600)
    tls = reader.mapping(d.get("tls", {}), f"{where}.tls", {"caFile", "certFile", "keyFile"})
    files = {}
    for key in ("caFile", "certFile", "keyFile"):
        if key in tls:
            files[key] = reader.string(tls[key], f"{where}.tls.{key}", what="a file name")
            if check_host and not os.path.isfile(files[key]):
                reader.fail(f"{where}.tls.{key}", f"{files[key]}: no such file")
    if ("certFile" in files) != ("keyFile" in files):
        reader.fail(f"{where}.tls", "certFile and keyFile go together")
    if files and not all(u.startswith("https://") for u in endpoints):
        reader.fail(f"{where}.endpoints", "with tls every endpoint is an https:// URL")
    return Datastore(type="etcd", endpoints=tuple(u.rstrip("/") for u in endpoints),
                     prefix=prefix, lease_ttl=ttl, ca_file=files.get("caFile"),
                     cert_file=files.get("certFile"), key_file=files.get("keyFile"))


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % k for k in range(2, int(n ** 0.5) + 1))


def _build_service_options(reader: Reader, raw) -> ServiceOptions:
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


def _build_conntrack_options(reader: Reader, raw) -> ConntrackOptions:
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


def _build_overlay(reader: Reader, raw) -> Overlay:
    o = reader.mapping(raw, "cluster.overlay", {"vni", "port", "mtu"})
    return Overlay(
        vni=reader.integer(o.get("vni", 1), "cluster.overlay.vni", 1, (1 << 24) - 1),
        port=reader.integer(o.get("port", 4789), "cluster.overlay.port", 1, 65535),
        # pod MTU = mtu - 50 must still carry a minimal IPv4 packet (576, RFC 791)
        mtu=reader.integer(o.get("mtu", 1500), "cluster.overlay.mtu", 576 + OVERLAY_OVERHEAD, 65535),
    )


def _build_node(reader: Reader, raw, where, index, cluster_cidr, node_network, earlier) -> Node:
    d = reader.mapping(raw, where, {"name", "underlay", "podCIDR", "vtepMAC", "address", "kernel"},
                       required=("name", "underlay", "podCIDR"))
    kernel = d.get("kernel", False)
    if not isinstance(kernel, bool):
        reader.fail(f"{where}.kernel", f"{kernel!r} is not true or false")
    name = reader.string(d["name"], f"{where}.name", DNS_LABEL,
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
                else mac_from_ip("0e:76", addressing.vtep_address(cidr)))
    address = _node_address(reader, d, where, index, node_network, earlier)
    return Node(name=name, index=index, underlay=underlay, pod_cidr=cidr, vtep_mac=vtep_mac,
                address=address, kernel=kernel)


def check_node(cluster: Cluster, reader: Reader, where: str, fields: dict, earlier) -> Node:
    """A node that registered itself (`fields` as a nodes[] item), checked as the file's nodes
    are, against `earlier` nodes (ConfigError)."""
    return _build_node(reader, fields, where, len(earlier), cluster.pod_cidr,
                       cluster.node_network, earlier)


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
        name = reader.string(d["name"], e.at("name"), DNS_LABEL,
                             "a DNS label (lowercase letters, digits, '-')")
        if name in names:
            e.fail("name", f"duplicate pod name {name!r} (also {names[name]}); "
                   "pod names must be unique because they name network namespaces")
        names[name] = f"{reader.path}: {where}" if e.paths else where
        namespace = reader.string(d.get("namespace", "default"), e.at("namespace"), DNS_LABEL,
                                  "a DNS label (lowercase letters, digits, '-')")
        node_name = reader.string(d["node"], e.at("node"))
        if node_name not in nodes:
            e.fail("node", f"unknown node {node_name!r} (nodes: {', '.join(nodes)})")
        node = nodes[node_name]
        ip = None
        if "ip" in d:
            ip = reader.address(d["ip"], e.at("ip"))
            problem = addressing.pod_address_problem(ip, node.pod_cidr, node.name)
            if problem:
                reader.fail(e.at("ip"), problem)
            if ip in taken:
                reader.fail(e.at("ip"), f"duplicate pod IP {ip} (also {taken[ip]})")
            taken[ip] = where
        labels = reader.labels(d.get("labels", {}), e.at("labels"))
        ports = d["ports"] if e.paths else _build_ports(reader, d.get("ports", []),
                                                        f"{where}.ports")
        netns, owns = build_netns(reader, d, where, name, check_host, e.at("name"))
        mac = reader.mac(d["mac"], f"{where}.mac") if "mac" in d else None
        checked.append((e, name, namespace, node, ip, mac, netns, owns, labels, ports))

    # second pass: deterministic allocation (config order, lowest free address from .2 up)
    pods = []
    macs: dict[str, str] = {}
    host_ports: dict[tuple, str] = {}   # (node, protocol, hostPort) -> whose
    allocator = addressing.Allocator(taken)
    for e, name, namespace, node, ip, mac, netns, owns, labels, ports in checked:
        reader, where = e.reader, e.where
        if ip is None:
            ip = allocator.next(node.name, node.pod_cidr, where)
            if ip is None:
                reader.fail(where, f"node {node.name!r}'s podCIDR {node.pod_cidr} has no free "
                            "address left")
        mac = mac or mac_from_ip("0a:58", ip)
        if mac in macs:
            reader.fail(f"{where}.mac", f"duplicate MAC {mac} (also {macs[mac]})")
        macs[mac] = where
        for cp in ports:
            if cp.host_port:
                slot = (node.name, cp.protocol, cp.host_port)
                if slot in host_ports:
                    reader.fail(f"{where}.ports", f"hostPort {cp.host_port}/{cp.protocol} is "
                                f"taken on node {node.name!r} by {host_ports[slot]} (one pod "
                                "per host port and node, as the scheduler places them)")
                host_ports[slot] = f"pod {name!r} ({where})"
        pods.append(Pod(name=name, namespace=namespace, node=node.name, ip=ip, mac=mac,
                        netns=netns, owns_netns=owns, labels=labels, ports=ports))
    return pods


def _build_ports(reader, raw, where):
    if not isinstance(raw, list):
        reader.fail(where, "must be a list of {name, containerPort, protocol}")
    ports = []
    for n, item in enumerate(raw):
        w = f"{where}[{n}]"
        d = reader.mapping(item, w, {"name", "containerPort", "protocol", "hostPort"},
                           required=("containerPort",))
        name = reader.string(d.get("name", f"port-{n}"), f"{w}.name")
        number = reader.integer(d["containerPort"], f"{w}.containerPort", 1, 65535)
        protocol = d.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            reader.fail(f"{w}.protocol", f"{protocol!r} is not a protocol (TCP, UDP or SCTP)")
        host_port = None
        if "hostPort" in d:
            host_port = reader.integer(d["hostPort"], f"{w}.hostPort", 1, 65535)
            if protocol == "SCTP":
                reader.fail(f"{w}.hostPort", "vrouter publishes TCP and UDP host ports, not "
                            "SCTP (it translates no SCTP, as for Services)")
        ports.append(ContainerPort(name, number, protocol, host_port))
    return tuple(ports)
