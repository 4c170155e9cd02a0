"""NetworkPolicy, differentially: random pods, namespaces and policies (every selector form,
ipBlock with excepts, numbered, ranged and named ports, TCP, UDP and SCTP, policyTypes given or
defaulted, empty rule lists), and for every pair of pods and a set of probes, the reference
decision (vrouter.model.policy.allows, egress at the source and ingress at the destination)
against (1) the compiled tables (vrouter.node.policytables, read by the fast path's own `allowed`)
and (2) real frames through both nodes' data planes. Tens of thousands of cases, seeded."""
from __future__ import annotations

import ipaddress
import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit
from scapy.layers.vxlan import VXLAN

from fastpath.stages.policy import D_ISOLATED, PR_EGRESS, PR_INGRESS, allowed
from tests.harness import OVERLAY_TARGET, process, process_datagrams
from vrouter.model import config
from vrouter.model.policy import EGRESS, INGRESS, PROTOCOL_NUMBERS, allows
from vrouter.node import policytables
from vrouter.node.dataplane import Dataplane
from vrouter.node.tables import ip_to_int

NAMESPACES = ("x", "y", "z")
LABELS = {"app": ("a", "b", "c"), "role": ("front", "back")}
PROBES = (("TCP", 80), ("TCP", 81), ("TCP", 83), ("UDP", 53), ("UDP", 80), ("SCTP", 9000))
CONTAINER_PORTS = (("http", 80, "TCP"), ("web", 81, "TCP"), ("dns", 53, "UDP"),
                   ("assoc", 9000, "SCTP"), ("http", 83, "TCP"))


class Scenario:
    """A random cluster: two nodes, pods in three namespaces, a few policies."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.namespaces = {ns: self.labels(extra={"ns": ns}) for ns in NAMESPACES}
        self.pods = []
        for k in range(rng.randint(4, 8)):
            ports = rng.sample(CONTAINER_PORTS, rng.randint(0, 3))
            names = {}
            for name, number, proto in ports:   # one container port per name
                names.setdefault(name, (number, proto))
            self.pods.append({"name": f"p{k}", "namespace": rng.choice(NAMESPACES),
                              "node": rng.choice(("node-a", "node-b")),
                              "labels": self.labels(),
                              "ports": [{"name": n, "containerPort": num, "protocol": proto}
                                        for n, (num, proto) in names.items()]})
        self.policies = [self.policy(k) for k in range(rng.randint(1, 4))]

    def labels(self, extra=None):
        labels = dict(extra or {})
        for key, values in LABELS.items():
            if self.rng.random() < 0.7:
                labels[key] = self.rng.choice(values)
        return labels

    def selector(self, empty_ok=True):
        rng = self.rng
        kind = rng.randrange(4 if empty_ok else 3)
        if kind == 0:
            key = rng.choice(list(LABELS))
            return {"matchLabels": {key: rng.choice(LABELS[key])}}
        if kind == 1:
            key = rng.choice(list(LABELS))
            op = rng.choice(("In", "NotIn", "Exists", "DoesNotExist"))
            expr = {"key": key, "operator": op}
            if op in ("In", "NotIn"):
                expr["values"] = rng.sample(LABELS[key], rng.randint(1, len(LABELS[key])))
            return {"matchExpressions": [expr]}
        if kind == 2:
            key = rng.choice(list(LABELS))
            return {"matchLabels": {key: rng.choice(LABELS[key])},
                    "matchExpressions": [{"key": "role" if key == "app" else "app",
                                          "operator": "Exists"}]}
        return {}

    def namespace_selector(self):
        if self.rng.random() < 0.5:
            return {"matchLabels": {"kubernetes.io/metadata.name": self.rng.choice(NAMESPACES)}}
        return self.selector()

    def peer(self):
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:
            return {"podSelector": self.selector()}
        if kind == 1:
            return {"namespaceSelector": self.namespace_selector()}
        if kind == 2:
            return {"podSelector": self.selector(), "namespaceSelector": self.namespace_selector()}
        block = rng.choice(("10.244.0.0/16", "10.244.1.0/24", "10.244.2.0/24", "10.244.1.0/28"))
        peer = {"ipBlock": {"cidr": block}}
        if rng.random() < 0.5:
            net = ipaddress.IPv4Network(block)
            sub = rng.choice(list(net.subnets(new_prefix=min(30, net.prefixlen + 2))))
            peer["ipBlock"]["except"] = [str(sub)]
        return peer

    def port(self):
        rng = self.rng
        entry = {}
        kind = rng.randrange(4)
        if kind == 0:
            entry["port"] = rng.choice((80, 81, 53, 9000, 83))
        elif kind == 1:
            entry["port"], entry["endPort"] = 80, rng.choice((80, 81, 85))
        elif kind == 2:
            entry["port"] = rng.choice(("http", "web", "dns", "assoc"))
        if rng.random() < 0.8:
            entry["protocol"] = rng.choice(("TCP", "UDP", "SCTP"))
        return entry

    def rules(self, peers_key):
        rng = self.rng
        rules = []
        for _ in range(rng.randint(0, 3)):
            rule = {}
            if rng.random() < 0.7:
                rule[peers_key] = [self.peer() for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.6:
                rule["ports"] = [self.port() for _ in range(rng.randint(1, 3))]
            rules.append(rule)
        return rules

    def policy(self, k):
        rng = self.rng
        spec = {"podSelector": self.selector()}
        if rng.random() < 0.7:
            spec["ingress"] = self.rules("from")
        if rng.random() < 0.5:
            spec["egress"] = self.rules("to")
        if rng.random() < 0.5:
            spec["policyTypes"] = rng.choice((["Ingress"], ["Egress"], ["Ingress", "Egress"]))
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": f"np{k}", "namespace": rng.choice(NAMESPACES)},
                "spec": spec}

    def cluster(self):
        import yaml
        doc = {"cluster": {"name": "diff", "podCIDR": "10.244.0.0/16", "dns": {"enabled": False}},
               "nodes": [{"name": "node-a", "underlay": "127.0.0.11", "podCIDR": "10.244.1.0/24"},
                         {"name": "node-b", "underlay": "127.0.0.12", "podCIDR": "10.244.2.0/24"}],
               "pods": self.pods}
        objects = [{"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": labels}}
                   for ns, labels in self.namespaces.items()] + self.policies
        text = yaml.safe_dump(doc) + "".join("---\n" + yaml.safe_dump(o) for o in objects)
        return config.parse(text, "diff.yaml", check_host=False)


def reference(cluster, src, dst, proto, port) -> bool:
    return allows(cluster, src, EGRESS, dst.ip, proto, port) and \
        allows(cluster, dst, INGRESS, src.ip, proto, port)


def compiled(tables, cluster, src, dst, proto, port) -> bool:
    """The decision the compiled tables give, as the policy stage takes it: the source's egress
    on its node, the destination's ingress on its node."""
    number = PROTOCOL_NUMBERS[proto]
    for pod, peer, direction, base in ((src, dst, EGRESS, PR_EGRESS), (dst, src, INGRESS, PR_INGRESS)):
        group, ports = tables[pod.node]
        slot = ports[pod.name]
        if group.port_rules[slot, base + D_ISOLATED] and \
                not allowed(group, slot, base, ip_to_int(peer.ip), number, port):
            return False
    return True


def build_tables(cluster):
    tables = {}
    for node in ("node-a", "node-b"):
        local = dict(enumerate(cluster.local_pods(node)))
        group = policytables.build(cluster, local, cluster.max_pods).group
        tables[node] = (group, {pod.name: port for port, pod in local.items()})
    return tables


@pytest.mark.parametrize("seed", range(4))
def test_the_compiled_tables_decide_as_the_reference_does(seed):
    rng = random.Random(1000 + seed)
    cases = 0
    for _ in range(100):
        cluster = Scenario(rng).cluster()
        tables = build_tables(cluster)
        pods = [p for p in cluster.pods if not p.dns_server]
        for src in pods:
            for dst in pods:
                if src is dst:
                    continue
                for proto, port in PROBES:
                    want = reference(cluster, src, dst, proto, port)
                    got = compiled(tables, cluster, src, dst, proto, port)
                    assert got == want, (src.name, dst.name, proto, port, cluster.policies)
                    cases += 1
    assert cases >= 2500   # 4 seeds: over 10,000 in all


# --- the same decisions with real frames through both nodes' data planes -------------------------

GW = {"node-a": "02:76:0a:f4:01:01", "node-b": "02:76:0a:f4:02:01"}
UNDERLAY = {"node-a": "127.0.0.11", "node-b": "127.0.0.12"}


def frame(src, dst, proto, sport, dport):
    l4 = {"TCP": TCP(sport=sport, dport=dport, flags="S"), "UDP": UDP(sport=sport, dport=dport),
          "SCTP": SCTP(sport=sport, dport=dport) / SCTPChunkInit()}[proto]
    return bytes(Ether(src=src.mac, dst=GW[src.node]) / IP(src=str(src.ip), dst=str(dst.ip)) / l4)


def delivered(dps, src, dst, data: bytes) -> bool:
    """Send from src's port on its node; follow it over the overlay; did dst's port get it?"""
    node = dps[src.node]
    out = process(node, [(node.port_of(src.name), data)])
    if src.node != dst.node:
        datagrams = [d for t, d in out if t >= OVERLAY_TARGET]
        if not datagrams:
            return False
        other = dps[dst.node]
        out = process_datagrams(other, [(ip_to_int(UNDERLAY[src.node]), d) for d in datagrams])
        node = other
    port = node.port_of(dst.name)
    return any(t == port and Ether(f)[IP].dst == str(dst.ip) for t, f in out)


def test_real_frames_through_both_nodes_decide_as_the_reference_does():
    rng = random.Random(77)
    cases = 0
    sport = 20000
    for _ in range(40):
        cluster = Scenario(rng).cluster()
        clock = lambda: 1000.0   # noqa: E731 (peers stay up however long the test takes)
        dps = {n: Dataplane(cluster, n, clock=clock) for n in ("node-a", "node-b")}
        pods = [p for p in cluster.pods if not p.dns_server]
        for src in pods:
            for dst in pods:
                if src is dst:
                    continue
                for proto, port in rng.sample(PROBES, 2):
                    sport += 1   # a fresh connection every time
                    want = reference(cluster, src, dst, proto, port)
                    got = delivered(dps, src, dst, frame(src, dst, proto, sport, port))
                    assert got == want, (src.name, dst.name, proto, port, cluster.policies)
                    cases += 1
    assert cases >= 1000
