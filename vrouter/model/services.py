"""Kubernetes `v1` Service manifests -> validated Service objects, and their endpoints.

What vrouter implements is accepted exactly as Kubernetes spells it; a field it does not implement
is an error naming the field (never silently different behaviour). Endpoints are computed as the
endpoints controller does: pods in the Service's namespace whose labels match its selector, with
named target ports resolved through each pod's `ports`.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from vrouter.model.dnspods import DNS_LABELS, DNS_NAMESPACE, DNS_SERVICE
from vrouter.model.types import ConfigError

NODE_PORT_RANGE = (30000, 32767)
IGNORED_BY_PROXY = ("service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless")
DEFAULT_AFFINITY_TIMEOUT = 10800
PROTOCOLS = {"TCP": 6, "UDP": 17}

_SPEC_FIELDS = {
    "type", "clusterIP", "clusterIPs", "ports", "selector", "sessionAffinity",
    "sessionAffinityConfig", "externalTrafficPolicy", "internalTrafficPolicy", "externalIPs",
    "loadBalancerIP", "ipFamilies", "ipFamilyPolicy", "publishNotReadyAddresses",
    "allocateLoadBalancerNodePorts", "externalName", "healthCheckNodePort",
}
_EXTERNAL_NAME = re.compile(
    r"^(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*\.?\Z")
# fields Kubernetes has and vrouter does not implement: refused with the reason
_UNSUPPORTED = {
    "loadBalancerSourceRanges": "source ranges are not enforced by vrouter",
    "loadBalancerClass": "vrouter is the only load-balancer implementation here",
    "trafficDistribution": "topology-aware routing is not implemented",
}


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target_port: int | str
    node_port: int | None

    @property
    def proto_number(self) -> int:
        return PROTOCOLS[self.protocol]


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    type: str
    cluster_ip: ipaddress.IPv4Address | None          # None: headless
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...]
    external_ips: tuple[ipaddress.IPv4Address, ...]   # externalIPs + load-balancer addresses
    affinity_timeout: int                            # 0: no session affinity
    external_policy: str                             # Cluster | Local
    internal_policy: str                             # Cluster | Local
    source: str = ""                                 # file it came from
    external_name: str | None = None                 # type ExternalName: a DNS CNAME only
    publish_not_ready: bool = False                  # publishNotReadyAddresses (DNS)
    proxied: bool = True                             # False: a label asks kube-proxy to ignore it
    health_check_node_port: int | None = None        # LoadBalancer, externalTrafficPolicy Local

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Endpoint:
    pod: object        # config.Pod
    port: int


def endpoints(service: Service, port: ServicePort, pods, include_not_ready: bool = False
              ) -> list[Endpoint]:
    """Ready endpoints of one service port, in a stable order (namespace/name of the pod);
    with `include_not_ready`, those of pods not ready yet too (a pod a container runtime has
    not attached: it has its address, not its interface), as publishNotReadyAddresses asks."""
    if not service.selector:
        return []   # a Service without selector has manually managed endpoints: none here
    found = []
    for pod in pods:
        if pod.awaiting_cni and not include_not_ready:
            continue   # declared, not attached yet: nothing to reach
        labels = dict(pod.labels)
        if pod.namespace != service.namespace:
            continue
        if any(labels.get(k) != v for k, v in service.selector):
            continue
        if isinstance(port.target_port, int):
            found.append(Endpoint(pod, port.target_port))
            continue
        for cp in pod.ports:   # a named port: only pods that declare it, with that protocol
            if cp.name == port.target_port and cp.protocol == port.protocol:
                found.append(Endpoint(pod, cp.container_port))
                break
    return sorted(found, key=lambda e: (e.pod.namespace, e.pod.name))


# --- parsing ------------------------------------------------------------------------------------

def parse(reader, doc: dict, where: str, source: str) -> dict:
    """Validate one Service document; returns the fields for `allocate` (IPs/ports may be open)."""
    reader.mapping(doc, where, {"apiVersion", "kind", "metadata", "spec", "status"},
                   required=("metadata", "spec"))
    if doc.get("apiVersion", "v1") != "v1":
        reader.fail(f"{where}.apiVersion", f"{doc['apiVersion']!r}: Services are apiVersion v1")
    meta, name, namespace = reader.metadata(doc, where)
    labels = dict(reader.labels(meta.get("labels") or {}, f"{where}.metadata.labels"))
    # kube-proxy leaves a Service alone when either label is set (DNS still serves it)
    ignored = [k for k in IGNORED_BY_PROXY if k in labels]
    w = f"{where}.spec"
    spec = doc["spec"]
    if not isinstance(spec, dict):
        reader.fail(w, "must be a mapping")
    for key in spec:
        if key in _UNSUPPORTED:
            reader.fail(f"{w}.{key}", f"not supported: {_UNSUPPORTED[key]}")
    reader.mapping(spec, w, _SPEC_FIELDS)

    kind = spec.get("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        reader.fail(f"{w}.type", f"{kind!r} is not a Service type (ClusterIP, NodePort, "
                    "LoadBalancer, ExternalName)")
    if kind == "ExternalName":
        return _external_name(reader, spec, w, name, namespace, where, source)
    if "externalName" in spec:
        reader.fail(f"{w}.externalName", "only valid for type ExternalName")
    for key in ("ipFamilies",):
        if key in spec and spec[key] != ["IPv4"]:
            reader.fail(f"{w}.{key}", "vrouter is IPv4-only: use [IPv4]")
    if spec.get("ipFamilyPolicy", "SingleStack") != "SingleStack":
        reader.fail(f"{w}.ipFamilyPolicy", "vrouter is IPv4-only: use SingleStack")

    cluster_ip = spec.get("clusterIP")
    if "clusterIPs" in spec:
        ips = spec["clusterIPs"]
        if not isinstance(ips, list) or len(ips) != 1 or (cluster_ip and ips[0] != cluster_ip):
            reader.fail(f"{w}.clusterIPs", "must be one address, equal to clusterIP (IPv4 only)")
        cluster_ip = cluster_ip or ips[0]
    headless = cluster_ip == "None"
    if headless and kind != "ClusterIP":
        reader.fail(f"{w}.clusterIP", "None (headless) is only valid for type ClusterIP")
    if cluster_ip not in (None, "", "None"):
        cluster_ip = reader.address(cluster_ip, f"{w}.clusterIP")
    else:
        cluster_ip = None

    selector = spec.get("selector", {}) or {}
    if not isinstance(selector, dict) or not all(isinstance(v, (str, int)) for v in selector.values()):
        reader.fail(f"{w}.selector", "must be a mapping of label names to values")

    ports = _ports(reader, spec.get("ports"), f"{w}.ports", kind, headless,
                   spec.get("allocateLoadBalancerNodePorts", True))

    affinity = spec.get("sessionAffinity", "None")
    if affinity not in ("None", "ClientIP"):
        reader.fail(f"{w}.sessionAffinity", f"{affinity!r} is not None or ClientIP")
    timeout = 0
    if affinity == "ClientIP":
        cfg = reader.mapping(spec.get("sessionAffinityConfig", {}) or {},
                             f"{w}.sessionAffinityConfig", {"clientIP"})
        client = reader.mapping(cfg.get("clientIP", {}) or {}, f"{w}.sessionAffinityConfig.clientIP",
                                {"timeoutSeconds"})
        timeout = reader.integer(client.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT),
                                 f"{w}.sessionAffinityConfig.clientIP.timeoutSeconds", 1, 86400)
    elif "sessionAffinityConfig" in spec:
        reader.fail(f"{w}.sessionAffinityConfig", "only meaningful with sessionAffinity: ClientIP")

    policies = {}
    for key in ("externalTrafficPolicy", "internalTrafficPolicy"):
        value = spec.get(key, "Cluster")
        if value not in ("Cluster", "Local"):
            reader.fail(f"{w}.{key}", f"{value!r} is not Cluster or Local")
        policies[key] = value
    if policies["externalTrafficPolicy"] == "Local" and kind == "ClusterIP" \
            and not spec.get("externalIPs"):
        reader.fail(f"{w}.externalTrafficPolicy", "only meaningful for NodePort, LoadBalancer "
                    "or externalIPs")

    external = {}   # address -> the field that first gives it
    for n, ip in enumerate(spec.get("externalIPs", []) or []):
        address = _non_special(reader, ip, f"{w}.externalIPs[{n}]")
        external.setdefault(address, f"{w}.externalIPs[{n}]")
    if "loadBalancerIP" in spec:
        if kind != "LoadBalancer":
            reader.fail(f"{w}.loadBalancerIP", "only valid for type LoadBalancer")
        address = _non_special(reader, spec["loadBalancerIP"], f"{w}.loadBalancerIP")
        external.setdefault(address, f"{w}.loadBalancerIP")
    if kind == "LoadBalancer":
        status = reader.mapping(doc.get("status", {}) or {}, f"{where}.status", {"loadBalancer"})
        lb = reader.mapping(status.get("loadBalancer", {}) or {}, f"{where}.status.loadBalancer",
                            {"ingress"})
        for n, item in enumerate(lb.get("ingress", []) or []):
            entry = reader.mapping(item, f"{where}.status.loadBalancer.ingress[{n}]",
                                   {"ip", "hostname", "ipMode", "ports"})
            if "ip" not in entry:
                reader.fail(f"{where}.status.loadBalancer.ingress[{n}]", "needs an ip "
                            "(hostname ingress is not supported)")
            field = f"{where}.status.loadBalancer.ingress[{n}].ip"
            external.setdefault(reader.address(entry["ip"], field), field)
    if headless and external:
        reader.fail(f"{w}.externalIPs", "a headless Service has no addresses to expose")

    publish = spec.get("publishNotReadyAddresses", False)
    if not isinstance(publish, bool):
        reader.fail(f"{w}.publishNotReadyAddresses", f"{publish!r} is not true or false")
    health = None
    if "healthCheckNodePort" in spec:
        if kind != "LoadBalancer" or policies["externalTrafficPolicy"] != "Local":
            reader.fail(f"{w}.healthCheckNodePort", "only valid for type LoadBalancer with "
                        "externalTrafficPolicy: Local (as Kubernetes validates it)")
        low, high = NODE_PORT_RANGE
        health = reader.integer(spec["healthCheckNodePort"], f"{w}.healthCheckNodePort", low, high)
    elif kind == "LoadBalancer" and policies["externalTrafficPolicy"] == "Local":
        health = 0   # allocated, as Kubernetes does for this combination
    return dict(name=name, namespace=namespace, type=kind, cluster_ip=cluster_ip, headless=headless,
                ports=ports, selector=tuple(sorted((k, str(v)) for k, v in selector.items())),
                external_ips=tuple(external), external_fields=external, affinity_timeout=timeout,
                external_policy=policies["externalTrafficPolicy"],
                internal_policy=policies["internalTrafficPolicy"], where=where, source=source,
                publish_not_ready=publish, proxied=not ignored, health_check_node_port=health)


def _external_name(reader, spec, w, name, namespace, where, source) -> dict:
    """type ExternalName: only a name for cluster DNS to answer with a CNAME; nothing proxied."""
    target = spec.get("externalName")
    if not isinstance(target, str) or not _EXTERNAL_NAME.match(target.lower()):
        reader.fail(f"{w}.externalName", f"{target!r} is not a DNS name (type ExternalName "
                    "needs one)")
    for key in ("clusterIP", "clusterIPs", "selector", "externalIPs", "loadBalancerIP",
                "sessionAffinity", "externalTrafficPolicy", "internalTrafficPolicy"):
        if key in spec and not (key == "clusterIP" and spec[key] in ("", "None")):
            reader.fail(f"{w}.{key}", "not valid for type ExternalName (it is only a DNS name)")
    ports = _ports(reader, spec.get("ports") or [], f"{w}.ports", "ExternalName", True, False) \
        if spec.get("ports") else ()
    return dict(name=name, namespace=namespace, type="ExternalName", cluster_ip=None,
                headless=True, ports=ports, selector=(), external_ips=(), external_fields={},
                affinity_timeout=0,
                external_policy="Cluster", internal_policy="Cluster", where=where,
                source=source, external_name=target.lower().rstrip("."))


def _non_special(reader, value, where) -> ipaddress.IPv4Address:
    """An external address as Kubernetes validates one: not unspecified, loopback, link-local
    or link-local multicast (those are every node's own)."""
    address = reader.address(value, where)
    for network, what in _SPECIAL:
        if address in network:
            reader.fail(where, f"{address} may not be in the {what} range ({network})")
    return address


_SPECIAL = [(ipaddress.IPv4Network("0.0.0.0/32"), "unspecified"),
            (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
            (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
            (ipaddress.IPv4Network("224.0.0.0/24"), "link-local multicast")]


def _ports(reader, raw, where, kind, headless, allocate_node_ports):
    if not isinstance(raw, list) or (not raw and not headless):
        reader.fail(where, "must be a non-empty list of ports")
    ports, names, seen = [], set(), set()
    for n, item in enumerate(raw):
        w = f"{where}[{n}]"
        d = reader.mapping(item, w, {"name", "protocol", "port", "targetPort", "nodePort",
                                     "appProtocol"}, required=("port",))
        if len(raw) > 1 and "name" not in d:
            reader.fail(f"{w}.name", "required when a Service has several ports")
        name = reader.string(d.get("name", ""), f"{w}.name") if "name" in d else ""
        if name in names:
            reader.fail(f"{w}.name", f"duplicate port name {name!r}")
        names.add(name)
        protocol = d.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            reader.fail(f"{w}.protocol", f"{protocol!r} is not supported (TCP or UDP)")
        port = reader.integer(d["port"], f"{w}.port", 1, 65535)
        if (protocol, port) in seen:
            reader.fail(f"{w}.port", f"{protocol} port {port} appears twice")
        seen.add((protocol, port))
        target = d.get("targetPort")
        if target is None:       # absent or null: the API server defaults it to port
            target = port
        if isinstance(target, str) and not target.isdigit():
            target = reader.string(target, f"{w}.targetPort")
        else:
            target = reader.integer(int(target) if isinstance(target, str) else target,
                                    f"{w}.targetPort", 1, 65535)
        node_port = None
        if "nodePort" in d:
            if kind in ("ClusterIP", "ExternalName"):
                reader.fail(f"{w}.nodePort", "only valid for type NodePort or LoadBalancer")
            node_port = reader.integer(d["nodePort"], f"{w}.nodePort", *NODE_PORT_RANGE)
        elif kind == "NodePort" or (kind == "LoadBalancer" and allocate_node_ports):
            node_port = 0   # allocate
        ports.append(ServicePort(name, protocol, port, target, node_port))
    return tuple(ports)


def allocate(parsed: list[dict], service_cidr: ipaddress.IPv4Network,
             reserved: dict | None = None, reserved_cluster_ips: dict | None = None,
             networks: tuple = ()) -> list[Service]:
    """Give open clusterIPs and nodePorts deterministic values (hash of the name, then probing),
    after every explicitly given one is known. Conflicts are errors that name both sides (the
    file and field of each): a clusterIP outside serviceCIDR or given twice, or one that is
    `reserved_cluster_ips` (cluster DNS's); a nodePort given twice, or none left; an external
    address that is `reserved` ({address: whose}, e.g. node addresses) or inside one of
    `networks` ((network, "cluster.podCIDR"), ...: an external address there would capture
    traffic for pods or Services, CVE-2020-8554); one external address:port/protocol served by
    two Services."""
    reserved = reserved or {}
    used_ips: dict = dict(reserved_cluster_ips or {})   # address -> whose (a description)
    used_ports: dict = {}      # nodePort -> (key, protocols, where): one Service per nodePort
    frontends: dict = {}       # (external address, protocol, port) -> whose
    keys: set = set()
    for p in parsed:
        key = f"{p['namespace']}/{p['name']}"
        if key in keys:
            raise ConfigError(p["source"], f"{p['where']}.metadata.name",
                              f"duplicate Service {key}")
        keys.add(key)
        for address, field in p["external_fields"].items():
            if address in reserved:
                raise ConfigError(p["source"], field,
                                  f"Service {key}: external address {address} is "
                                  f"{reserved[address]}")
            for network, name in networks:
                if address in network:
                    raise ConfigError(p["source"], field,
                                      f"Service {key}: external address {address} is inside "
                                      f"{name} {network}; it would take that traffic over "
                                      "(CVE-2020-8554)")
            for n, sp in enumerate(p["ports"]):
                slot = (address, sp.protocol, sp.port)
                whose = f"Service {key} ({p['source']}: {field}, {p['where']}.spec.ports[{n}])"
                if slot in frontends:
                    raise ConfigError(p["source"], field,
                                      f"{address}:{sp.port}/{sp.protocol} of {whose} is "
                                      f"already served by {frontends[slot]}")
                frontends[slot] = whose
        ip = p["cluster_ip"]
        if ip is not None:
            if ip not in service_cidr:
                raise ConfigError(p["source"], f"{p['where']}.spec.clusterIP",
                                  f"Service {key}: {ip} is outside cluster.serviceCIDR "
                                  f"{service_cidr}")
            if ip in used_ips:
                raise ConfigError(p["source"], f"{p['where']}.spec.clusterIP",
                                  f"Service {key}: {ip} is already taken by {used_ips[ip]}")
            used_ips[ip] = f"Service {key} ({p['source']}: {p['where']}.spec.clusterIP)"
        for n, sp in enumerate(p["ports"]):
            if sp.node_port:
                field = f"{p['where']}.spec.ports[{n}].nodePort"
                owner = used_ports.get(sp.node_port)
                # Kubernetes: a nodePort belongs to one Service, which may use it for TCP and UDP
                if owner and (owner[0] != key or sp.protocol in owner[1]):
                    raise ConfigError(p["source"], field,
                                      f"Service {key}: nodePort {sp.node_port}/{sp.protocol} is "
                                      f"already Service {owner[0]}'s ({owner[2]})")
                if owner:
                    owner[1].add(sp.protocol)
                else:
                    used_ports[sp.node_port] = (key, {sp.protocol}, f"{p['source']}: {field}")
        health = p.get("health_check_node_port")
        if health:
            field = f"{p['where']}.spec.healthCheckNodePort"
            if health in used_ports:
                owner = used_ports[health]
                raise ConfigError(p["source"], field,
                                  f"Service {key}: healthCheckNodePort {health} is already "
                                  f"Service {owner[0]}'s nodePort ({owner[2]})")
            used_ports[health] = (key, {"TCP", "UDP"}, f"{p['source']}: {field}")
    first = int(service_cidr.network_address) + 1
    size = service_cidr.num_addresses - 2
    low, high = NODE_PORT_RANGE
    services = []
    for p in parsed:
        key = f"{p['namespace']}/{p['name']}"
        ip = p["cluster_ip"]
        if ip is None and not p["headless"]:
            start = stable_hash(key) % size
            for k in range(size):
                candidate = ipaddress.IPv4Address(first + (start + k) % size)
                if candidate not in used_ips:
                    ip = candidate
                    break
            else:
                raise ConfigError(p["source"], f"{p['where']}.spec.clusterIP",
                                  f"Service {key}: serviceCIDR {service_cidr} is full")
            used_ips[ip] = f"Service {key}"
        ports = []
        for n, sp in enumerate(p["ports"]):
            if sp.node_port == 0:
                start = stable_hash(f"{key}/{sp.name}/{sp.protocol}") % (high - low + 1)
                for k in range(high - low + 1):
                    candidate = low + (start + k) % (high - low + 1)
                    if candidate not in used_ports:
                        break
                else:
                    raise ConfigError(p["source"], f"{p['where']}.spec.ports[{n}].nodePort",
                                      f"Service {key}: no nodePort is left in {low}-{high} "
                                      f"(all {high - low + 1} are taken)")
                used_ports[candidate] = (key, {sp.protocol}, "allocated")
                sp = ServicePort(sp.name, sp.protocol, sp.port, sp.target_port, candidate)
            ports.append(sp)
        health = p.get("health_check_node_port")
        if health == 0:   # allocated like a nodePort, from the same range
            start = stable_hash(f"{key}/healthz") % (high - low + 1)
            for k in range(high - low + 1):
                health = low + (start + k) % (high - low + 1)
                if health not in used_ports:
                    break
            else:
                raise ConfigError(p["source"], f"{p['where']}.spec.healthCheckNodePort",
                                  f"Service {key}: no port is left in {low}-{high}")
            used_ports[health] = (key, {"TCP", "UDP"}, "allocated")
        services.append(Service(
            name=p["name"], namespace=p["namespace"], type=p["type"], cluster_ip=ip,
            ports=tuple(ports), selector=p["selector"], external_ips=p["external_ips"],
            affinity_timeout=p["affinity_timeout"], external_policy=p["external_policy"],
            internal_policy=p["internal_policy"], source=p["source"],
            external_name=p.get("external_name"),
            publish_not_ready=p.get("publish_not_ready", False), proxied=p.get("proxied", True),
            health_check_node_port=health))
    return services


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def kube_dns(address: ipaddress.IPv4Address) -> Service:
    """The cluster DNS Service, as Kubernetes names it: kube-system/kube-dns at the DNS address,
    whose endpoints are the nodes' DNS server pods. internalTrafficPolicy Local: each node's pods
    ask their own node's server (as NodeLocal DNSCache does), so no query crosses the overlay."""
    return Service(
        name=DNS_SERVICE, namespace=DNS_NAMESPACE, type="ClusterIP", cluster_ip=address,
        ports=(ServicePort("dns", "UDP", 53, 53, None), ServicePort("dns-tcp", "TCP", 53, 53, None)),
        selector=DNS_LABELS, external_ips=(), affinity_timeout=0, external_policy="Cluster",
        internal_policy="Local", source="cluster.dns")
