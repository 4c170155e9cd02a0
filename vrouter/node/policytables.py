"""The control plane's side of NetworkPolicy: compile the policies that select this node's pods
into the Policy group the fast path reads (fastpath.stages.policy).

Selectors are resolved here, against the live model (every pod of the cluster, attached at
start or at runtime, on any node; the namespaces' labels): a selector peer becomes the set of
its pods' addresses, an ipBlock a network with its excepts. A rule becomes one row per (peer,
port) pair. A named port is resolved on the pod it names: for ingress the selected pod itself,
for egress each destination pod (a set of (address, port) pairs). The tables are rebuilt when the
file is reloaded and when pods come and go; the drop counts carry over by policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastpath import hashtable
from fastpath.groups import Policy
from fastpath.stages.policy import (
    D_FIRST_POLICY, D_FIRST_RULE, D_ISOLATED, D_POLICIES, D_RULES, PR_COLS, PR_EGRESS,
    PR_INGRESS, PR_SELECTED, PS_COLS, RU_COLS, SET_BLOCK, SET_PODS, member_key, named_key,
)
from vrouter.model.config import Cluster
from vrouter.model.policy import (
    EGRESS, INGRESS, PROTOCOL_NUMBERS, NetworkPolicy, Peer, Rule, peer_pods, resolve_port,
)
from vrouter.node.tables import ip_to_int

DIRECTIONS = ((INGRESS, PR_INGRESS), (EGRESS, PR_EGRESS))


@dataclass
class PolicyTables:
    group: Policy
    policies: list[NetworkPolicy]                        # policy id -> policy
    selected: dict = field(default_factory=dict)         # policy key -> {direction: [pod names]}

    def summary(self) -> list[dict]:
        """Each policy with the local pods it isolates and the first packets of new connections
        it refused here (a retransmitted SYN counts again)."""
        drops = self.group.drops
        return [{"policy": p.key, "types": list(p.types),
                 "isolates": self.selected.get(p.key, {}), "dropped": int(drops[k])}
                for k, p in enumerate(self.policies)]


class _Compiler:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.rules: list[tuple] = []
        self.policy_ids: list[int] = []
        self.peer_sets: list[tuple] = []
        self.set_index: dict = {}
        self.excepts: list[tuple] = []
        self.members: list[int] = []
        self.named_index: dict = {}
        self.named: list[int] = []

    def peer_set(self, policy: NetworkPolicy, peer: Peer) -> int:
        key = peer if peer.cidr is not None else (policy.namespace, peer)
        if key in self.set_index:
            return self.set_index[key]
        s = len(self.peer_sets)
        self.set_index[key] = s
        if peer.cidr is not None:
            self.peer_sets.append((SET_BLOCK, ip_to_int(peer.cidr.network_address),
                                   ip_to_int(peer.cidr.netmask)))
            self.excepts += [(s, ip_to_int(e.network_address), ip_to_int(e.netmask))
                             for e in peer.excepts]
        else:
            self.peer_sets.append((SET_PODS, 0, 0))
            pods = peer_pods(policy, peer, self.cluster.pods, self.cluster.namespaces)
            self.members += [int(member_key(s, ip_to_int(p.ip))) for p in pods]
        return s

    def named_set(self, name: str, protocol: str) -> int:
        """Every pod's (address, port) for a port name: an egress rule's named port."""
        if (name, protocol) not in self.named_index:
            n = len(self.named_index)
            self.named_index[(name, protocol)] = n
            for pod in self.cluster.pods:
                for cp in pod.ports:
                    if cp.name == name and cp.protocol == protocol:
                        self.named.append(int(named_key(n, ip_to_int(pod.ip), cp.container_port)))
        return self.named_index[(name, protocol)]

    def port_rows(self, rule: Rule, direction: str, pod) -> list[tuple]:
        """(protocol, low, high, named set) of each port of a rule (a rule without: any)."""
        if not rule.ports:
            return [(0, 0, 65535, -1)]
        rows = []
        for port in rule.ports:
            proto = PROTOCOL_NUMBERS[port.protocol]
            if isinstance(port.port, str) and direction == EGRESS:
                rows.append((proto, 0, 0, self.named_set(port.port, port.protocol)))
                continue
            span = resolve_port(port, pod)
            if span is not None:   # a named port the pod does not have allows nothing
                rows.append((proto, span[0], span[1], -1))
        return rows

    def compile_rules(self, policy: NetworkPolicy, direction: str, pod) -> None:
        for rule in policy.rules(direction):
            sets = [self.peer_set(policy, peer) for peer in rule.peers] or [-1]
            for proto, low, high, named in self.port_rows(rule, direction, pod):
                self.rules += [(s, proto, low, high, named) for s in sets]


def _hash(keys: list[int]) -> np.ndarray:
    table = hashtable.new_keys(len(keys))
    for key in keys:
        hashtable.find_or_claim(table, key)
    return table


def build(cluster: Cluster, ports: dict, capacity: int) -> PolicyTables:
    """`ports`: port number -> attached local Pod."""
    policies = list(cluster.policies)
    c = _Compiler(cluster)
    port_rules = np.zeros((capacity, PR_COLS), dtype=np.int64)
    selected: dict = {}
    for port, pod in sorted(ports.items()):
        for direction, base in DIRECTIONS:
            isolating = [k for k, p in enumerate(policies)
                         if direction in p.types and p.selects(pod)]
            if not isolating:
                continue
            port_rules[port, PR_SELECTED] = 1
            port_rules[port, base + D_ISOLATED] = 1
            port_rules[port, base + D_FIRST_POLICY] = len(c.policy_ids)
            port_rules[port, base + D_POLICIES] = len(isolating)
            c.policy_ids += isolating
            port_rules[port, base + D_FIRST_RULE] = len(c.rules)
            for k in isolating:
                c.compile_rules(policies[k], direction, pod)
                selected.setdefault(policies[k].key, {}).setdefault(direction, []).append(pod.name)
            port_rules[port, base + D_RULES] = len(c.rules) - port_rules[port, base + D_FIRST_RULE]
    group = Policy(
        active=np.array([int(port_rules[:, PR_SELECTED].any())], dtype=np.int64),
        port_rules=port_rules,
        rules=np.array(c.rules, dtype=np.int64).reshape(-1, RU_COLS),
        peer_sets=np.array(c.peer_sets, dtype=np.int64).reshape(-1, PS_COLS),
        excepts=np.array(c.excepts, dtype=np.int64).reshape(-1, 3),
        members=_hash(c.members),
        named=_hash(c.named),
        policy_ids=np.array(c.policy_ids, dtype=np.int64),
        drops=np.zeros(len(policies), dtype=np.int64),
    )
    return PolicyTables(group, policies, selected)


def carry_drops(old: PolicyTables, new: PolicyTables) -> None:
    """A policy that stays keeps its drop count (metrics are counters)."""
    counts = {p.key: int(old.group.drops[k]) for k, p in enumerate(old.policies)}
    for k, p in enumerate(new.policies):
        new.group.drops[k] = counts.get(p.key, 0)
