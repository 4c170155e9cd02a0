"""Kubernetes `networking.k8s.io/v1` NetworkPolicy and `v1` Namespace manifests, and what they
mean for a pod.

Semantics as Kubernetes defines them:
  - a policy selects pods of its own namespace (spec.podSelector; {} selects all of them);
  - a pod is isolated for ingress (egress) when some policy with that policy type selects it;
    traffic of an isolated direction is allowed when any rule of any selecting policy allows it;
  - policyTypes defaults to [Ingress], plus Egress when the policy has an egress section;
  - a rule's peers are ORed; within one peer, podSelector AND namespaceSelector; a rule with no
    peers allows every peer, a rule with no ports every port and protocol;
  - `ingress: []` (or no ingress section with Ingress in policyTypes) allows nothing.
The fast path enforces the compiled form (vrouter.node.policytables, fastpath.stages.policy);
`allows` here is the same decision in Python, for tests and `vrouter status`.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vrouter.model.names import DNS_LABEL as _DNS_LABEL

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
INGRESS, EGRESS = "Ingress", "Egress"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"   # every namespace has it (Kubernetes sets it)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Selector:
    """A metav1.LabelSelector. The empty selector matches everything."""
    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()   # key, operator, values

    def matches(self, labels: dict) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, op, values in self.expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for key, op, values in self.expressions:
            parts.append({"In": f"{key} in ({','.join(values)})",
                          "NotIn": f"{key} notin ({','.join(values)})",
                          "Exists": key, "DoesNotExist": f"!{key}"}[op])
        return ",".join(parts) or "all"


@dataclass(frozen=True)
class Peer:
    """One entry of from/to: selectors (pods), or an ipBlock."""
    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    cidr: ipaddress.IPv4Network | None = None
    excepts: tuple[ipaddress.IPv4Network, ...] = ()

    def matches_address(self, ip: ipaddress.IPv4Address) -> bool:
        return self.cidr is not None and ip in self.cidr and not any(ip in e for e in self.excepts)


@dataclass(frozen=True)
class PolicyPort:
    protocol: str                 # TCP or UDP
    port: int | str | None        # None: every port of the protocol; a str: a named port
    end_port: int | None = None   # with a numbered port: the range port..end_port


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()        # (): every peer
    ports: tuple[PolicyPort, ...] = ()  # (): every port and protocol


@dataclass(frozen=True)
class NetworkPolicy:
    name: str
    namespace: str
    pod_selector: Selector
    types: tuple[str, ...]           # Ingress and/or Egress
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selects(self, pod) -> bool:
        return pod.namespace == self.namespace and self.pod_selector.matches(dict(pod.labels))

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress


# --- what a policy means (the reference decision) -----------------------------------------------

def namespace_labels(namespaces, name: str) -> dict:
    """A namespace's labels: as declared (if it is), plus the name label Kubernetes sets."""
    declared = next((ns for ns in namespaces if ns.name == name), None)
    labels = dict(declared.labels) if declared else {}
    labels[NAMESPACE_NAME_LABEL] = name
    return labels


def peer_pods(policy: NetworkPolicy, peer: Peer, pods, namespaces) -> list:
    """The pods a selector peer names (an ipBlock names addresses, not pods: [])."""
    if peer.cidr is not None:
        return []
    found = []
    for pod in pods:
        if peer.namespace_selector is None:
            if pod.namespace != policy.namespace:
                continue
        elif not peer.namespace_selector.matches(namespace_labels(namespaces, pod.namespace)):
            continue
        if peer.pod_selector is not None and not peer.pod_selector.matches(dict(pod.labels)):
            continue
        found.append(pod)
    return found


def resolve_port(port: PolicyPort, pod) -> tuple[int, int] | None:
    """(first, last) port number of `port` on `pod` (which resolves a named port), or None."""
    if port.port is None:
        return 0, 65535
    if isinstance(port.port, int):
        return port.port, port.end_port or port.port
    for cp in (pod.ports if pod is not None else ()):
        if cp.name == port.port and cp.protocol == port.protocol:
            return cp.container_port, cp.container_port
    return None


def isolated(policies, pod, direction: str) -> list[NetworkPolicy]:
    """The policies that isolate `pod` for `direction` (none: everything is allowed)."""
    return [p for p in policies if direction in p.types and p.selects(pod)]


def allows(cluster, pod, direction: str, peer_ip, protocol: str, port: int) -> bool:
    """Whether traffic of a new connection is allowed for `pod` in `direction`, with the peer
    at `peer_ip` and the destination port `port` (on the pod for ingress, the peer for egress)."""
    selecting = isolated(cluster.policies, pod, direction)
    if not selecting:
        return True
    peer_ip = ipaddress.IPv4Address(peer_ip)
    peer_pod = next((p for p in cluster.pods if p.ip == peer_ip), None)
    port_owner = pod if direction == INGRESS else peer_pod
    for policy in selecting:
        for rule in policy.rules(direction):
            if rule.peers and not any(
                    peer.matches_address(peer_ip) if peer.cidr is not None
                    else peer_pod is not None and peer_pod in peer_pods(policy, peer, [peer_pod],
                                                                         cluster.namespaces)
                    for peer in rule.peers):
                continue
            if not rule.ports:
                return True
            for p in rule.ports:
                span = resolve_port(p, port_owner)
                if p.protocol == protocol and span and span[0] <= port <= span[1]:
                    return True
    return False


# --- parsing ------------------------------------------------------------------------------------

def parse_namespace(reader, doc: dict, where: str) -> Namespace:
    reader.mapping(doc, where, {"apiVersion", "kind", "metadata", "spec", "status"},
                   required=("metadata",))
    if doc.get("apiVersion", "v1") != "v1":
        reader.fail(f"{where}.apiVersion", f"{doc['apiVersion']!r}: Namespaces are apiVersion v1")
    meta, name, _ = reader.metadata(doc, where, namespaced=False)
    return Namespace(name, reader.labels(meta.get("labels") or {}, f"{where}.metadata.labels"))


def parse_selector(reader, raw, where) -> Selector:
    if raw is None:
        raw = {}
    d = reader.mapping(raw, where, {"matchLabels", "matchExpressions"})
    labels = reader.labels(d.get("matchLabels") or {}, f"{where}.matchLabels")
    expressions = []
    raw_exprs = d.get("matchExpressions") or []
    if not isinstance(raw_exprs, list):
        reader.fail(f"{where}.matchExpressions", "must be a list of {key, operator, values}")
    for n, item in enumerate(raw_exprs):
        w = f"{where}.matchExpressions[{n}]"
        e = reader.mapping(item, w, {"key", "operator", "values"}, required=("key", "operator"))
        key = reader.string(e["key"], f"{w}.key")
        op = e["operator"]
        if op not in OPERATORS:
            reader.fail(f"{w}.operator", f"{op!r} is not a selector operator "
                        f"({', '.join(OPERATORS)})")
        values = e.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, (str, int)) for v in values):
            reader.fail(f"{w}.values", "must be a list of strings")
        if op in ("In", "NotIn") and not values:
            reader.fail(f"{w}.values", f"must not be empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            reader.fail(f"{w}.values", f"must be empty for operator {op}")
        expressions.append((key, op, tuple(str(v) for v in values)))
    return Selector(labels, tuple(expressions))


def _peer(reader, raw, where) -> Peer:
    d = reader.mapping(raw, where, {"podSelector", "namespaceSelector", "ipBlock"})
    if not d:
        reader.fail(where, "a peer needs podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in d:
        if len(d) > 1:
            reader.fail(f"{where}.ipBlock", "cannot be combined with podSelector or "
                        "namespaceSelector in one peer")
        block = reader.mapping(d["ipBlock"], f"{where}.ipBlock", {"cidr", "except"},
                               required=("cidr",))
        cidr = reader.network(block["cidr"], f"{where}.ipBlock.cidr", strict=False)
        excepts = []
        raw_except = block.get("except") or []
        if not isinstance(raw_except, list):
            reader.fail(f"{where}.ipBlock.except", "must be a list of CIDRs")
        for n, item in enumerate(raw_except):
            w = f"{where}.ipBlock.except[{n}]"
            e = reader.network(item, w, strict=False)
            if not e.subnet_of(cidr) or e == cidr:
                reader.fail(w, f"{e} is not strictly inside the block's cidr {cidr}")
            excepts.append(e)
        return Peer(cidr=cidr, excepts=tuple(excepts))
    return Peer(pod_selector=parse_selector(reader, d["podSelector"], f"{where}.podSelector")
                if "podSelector" in d else None,
                namespace_selector=parse_selector(reader, d["namespaceSelector"],
                                                  f"{where}.namespaceSelector")
                if "namespaceSelector" in d else None)


def _port(reader, raw, where) -> PolicyPort:
    d = reader.mapping(raw, where, {"protocol", "port", "endPort"})
    protocol = d.get("protocol", "TCP")
    if protocol not in PROTOCOL_NUMBERS:
        reader.fail(f"{where}.protocol", f"{protocol!r} is not a protocol (TCP, UDP or SCTP)")
    port = d.get("port")
    if isinstance(port, str) and not port.isdigit():
        port = reader.string(port, f"{where}.port", _DNS_LABEL, "a port name")
        if "endPort" in d:
            reader.fail(f"{where}.endPort", "not allowed with a named port")
    elif port is not None:
        port = reader.integer(int(port), f"{where}.port", 1, 65535)
    end = None
    if "endPort" in d:
        if port is None:
            reader.fail(f"{where}.endPort", "needs a port to start the range")
        end = reader.integer(d["endPort"], f"{where}.endPort", 1, 65535)
        if end < port:
            reader.fail(f"{where}.endPort", f"{end} is below port {port}")
    return PolicyPort(protocol, port, end)


def _rules(reader, raw, where, peers_key) -> tuple[Rule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        reader.fail(where, "must be a list of rules")
    rules = []
    for n, item in enumerate(raw):
        w = f"{where}[{n}]"
        d = reader.mapping(item if item is not None else {}, w, {peers_key, "ports"})
        peers = d.get(peers_key) or []
        ports = d.get("ports") or []
        if not isinstance(peers, list):
            reader.fail(f"{w}.{peers_key}", "must be a list of peers")
        if not isinstance(ports, list):
            reader.fail(f"{w}.ports", "must be a list of ports")
        rules.append(Rule(tuple(_peer(reader, p, f"{w}.{peers_key}[{k}]") for k, p in enumerate(peers)),
                          tuple(_port(reader, p, f"{w}.ports[{k}]") for k, p in enumerate(ports))))
    return tuple(rules)


def parse_policy(reader, doc: dict, where: str, source: str) -> NetworkPolicy:
    reader.mapping(doc, where, {"apiVersion", "kind", "metadata", "spec", "status"},
                   required=("metadata", "spec"))
    if doc.get("apiVersion") != "networking.k8s.io/v1":
        reader.fail(f"{where}.apiVersion", f"{doc.get('apiVersion')!r}: NetworkPolicies are "
                    "apiVersion networking.k8s.io/v1")
    _, name, namespace = reader.metadata(doc, where)
    w = f"{where}.spec"
    spec = reader.mapping(doc["spec"], w, {"podSelector", "policyTypes", "ingress", "egress"},
                          required=("podSelector",))
    selector = parse_selector(reader, spec["podSelector"], f"{w}.podSelector")
    types = spec.get("policyTypes")
    if types is None:
        types = [INGRESS] + ([EGRESS] if "egress" in spec else [])
    if not isinstance(types, list) or not types or \
            any(t not in (INGRESS, EGRESS) for t in types) or len(set(types)) != len(types):
        reader.fail(f"{w}.policyTypes", f"{types!r}: a list of Ingress and/or Egress")
    # rules of a type policyTypes leaves out are valid and mean nothing (as the API server
    # accepts them and cyclonus's reference model ignores them)
    return NetworkPolicy(name=name, namespace=namespace, pod_selector=selector,
                         types=tuple(t for t in (INGRESS, EGRESS) if t in types),
                         ingress=_rules(reader, spec.get("ingress"), f"{w}.ingress", "from"),
                         egress=_rules(reader, spec.get("egress"), f"{w}.egress", "to"),
                         source=source)
