"""A node's flow log: the fast path's ring of connection events (fastpath.flows) as flows with
names, the way Hubble keeps and serves them.

The data-path thread drains the ring between batches (`collect`: a copy of the new rows plus
what resolves them: the live model, the ports' pods, the Service and policy tables of that
moment) and hands the batch to trio, where `add` counts it (numpy, for status and metrics) and
keeps it in a bounded buffer (BUFFER events, oldest dropped). Names (pods, Services, policies)
are resolved only when someone looks: at a `query` (`vrouter observe --last`, the page) and,
while there are followers (`observe -f`, the page's live stream), as batches come. Naming costs
tens of microseconds an event in Python, which at thousands of new connections a second would
take a good part of a core from the node; unobserved, a connection costs its events' copy. A
follower that reads too slowly loses flows, counted and told to it (FOLLOW_QUEUE); nothing here
ever waits for a client, so no client slows the data path.

A flow is a dict shaped as `hubble observe -o json` prints a flow (time, verdict, IP, l4,
source, destination, destination_service, is_reply, traffic_direction, *_denied_by, Summary,
node_name), plus what vrouter adds: event (start, end, drop, reject), reason (the counter, or
why a connection ended), type (the TYPE column), traffic (packets and bytes each way) and the
fields the filters use (time_ns, protocol, ports).
"""
from __future__ import annotations

import collections
import datetime
import ipaddress
import threading
import time
from typing import NamedTuple

import numpy as np
import trio

from fastpath import flows as ring
from fastpath.conntrack import F_MASQUERADE, F_PLAIN, TCP_STATE_NAMES
from fastpath.reasons import COUNTER_HELP, COUNTER_NAMES
from vrouter.node.flowfilter import FlowFilter

BUFFER = 8192          # flows a node keeps for queries
FOLLOW_QUEUE = 1024    # flows waiting for one follower; beyond that it loses them (counted)
DEFAULT_LAST = 20      # `vrouter observe` without --last or --since, as `hubble observe`

TCP_FLAG_NAMES = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10),
                  ("URG", 0x20), ("ECE", 0x40), ("CWR", 0x80))
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}
# where a started connection's first packet went (its verdict), as Hubble's observation points
OBSERVATION = {"forwarded_l2": "to-endpoint", "forwarded_routed": "to-endpoint",
               "flooded": "to-endpoint", "to_overlay": "to-overlay", "to_outside": "to-network",
               "to_node": "to-stack"}


class Batch(NamedTuple):
    """Ring rows drained between two batches, and what names them as of then."""
    rows: np.ndarray
    cluster: object         # the live model (Cluster)
    ports: dict             # port -> Pod of this node
    frontends: list         # servicetables.Frontend
    policies: list          # policy.NetworkPolicy, by the fast path's policy index
    lost: int               # events the ring had overwritten by then (since the start)
    wall_offset_ns: int     # wall clock minus the monotonic clock


def collect(dp) -> Batch | None:
    """In the data-path thread, between batches: the ring's new events (None if none)."""
    fl = dp.tables.conntrack.flows
    if fl.state[ring.FS_HEAD] == fl.state[ring.FS_TAIL]:
        return None
    rows = ring.drain(fl.events, fl.state)
    return Batch(rows, dp.cluster, dict(dp.ports), dp.services.frontends, dp.policy.policies,
                 int(fl.state[ring.FS_LOST]), time.time_ns() - time.monotonic_ns())


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(int(value) & 0xFFFFFFFF))


def _bytes(n: int) -> str:
    for unit, size in (("MB", 1_000_000), ("kB", 1000)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def tcp_flags(value: int) -> dict:
    return {name: True for name, bit in TCP_FLAG_NAMES if value & bit}


class Names:
    """Addresses to pods, Services, nodes and the world, from one batch's model."""

    def __init__(self, batch: Batch, node_name: str):
        cluster = batch.cluster
        self.pods = {str(p.ip): p for p in cluster.pods}
        self.hosts: dict[str, tuple[str, str]] = {}   # ip -> (node, reserved label)
        for node in cluster.nodes:
            label = "reserved:host" if node.name == node_name else "reserved:remote-node"
            for address in (node.gateway, node.address, node.pod_cidr.network_address):
                self.hosts[str(address)] = (node.name, label)
        self.frontends_by_id: dict[int, list] = {}
        self.frontends_by_address: dict[tuple, object] = {}
        for f in batch.frontends:
            self.frontends_by_id.setdefault(f.port_id, []).append(f)
            self.frontends_by_address[(f.address, f.protocol.lower(), f.port)] = f
        self.policies = batch.policies

    def endpoint(self, ip: str) -> dict:
        pod = self.pods.get(ip)
        if pod is not None:
            return {"namespace": pod.namespace, "pod_name": pod.name, "node_name": pod.node,
                    "labels": [f"{k}={v}" for k, v in pod.labels]}
        if ip in self.hosts:
            node, label = self.hosts[ip]
            return {"node_name": node, "labels": [label]}
        return {"labels": ["reserved:world"]}

    def frontend(self, port_id: int, address: str, protocol: str, port: int):
        by_address = self.frontends_by_address.get((address, protocol, port))
        if by_address is not None:
            return by_address
        candidates = self.frontends_by_id.get(port_id) or []
        return candidates[0] if candidates else None

    def policy(self, index: int) -> dict:
        if 0 <= index < len(self.policies):
            p = self.policies[index]
            return {"name": p.name, "namespace": p.namespace, "kind": "NetworkPolicy"}
        return {"name": f"policy #{index}", "namespace": "", "kind": "NetworkPolicy"}


def endpoint_text(endpoint: dict, ip: str, port: int | None) -> str:
    """ns/pod:port, as Hubble prints a host; the address where there is no pod."""
    host = (f"{endpoint['namespace']}/{endpoint['pod_name']}" if endpoint.get("pod_name")
            else ip)
    return f"{host}:{port}" if port else host


def to_flow(row, names: Names, node_name: str, wall_offset_ns: int) -> dict:
    """One ring row as a flow (see the module docstring)."""
    E = ring
    kind = ring.KIND_NAMES.get(int(row[E.EV_KIND]), "unknown")
    proto = PROTOCOLS.get(int(row[E.EV_PROTO]), str(int(row[E.EV_PROTO])))
    src, dst = _ip(row[E.EV_SRC]), _ip(row[E.EV_DST])
    to_src, to_dst = _ip(row[E.EV_TO_SRC]), _ip(row[E.EV_TO_DST])
    sport, dport = int(row[E.EV_SPORT]), int(row[E.EV_DPORT])
    to_sport, to_dport = int(row[E.EV_TO_SPORT]), int(row[E.EV_TO_DPORT])
    ct_flags = int(row[E.EV_CT_FLAGS])
    reason_index = int(row[E.EV_REASON])
    reason = (ring.END_NAMES.get(reason_index, "ended") if kind == "end"
              else COUNTER_NAMES[reason_index] if 0 <= reason_index < len(COUNTER_NAMES)
              else str(reason_index))
    time_ns = int(row[E.EV_TIME_NS]) + wall_offset_ns
    service = names.frontend(int(row[E.EV_FRONTEND]), dst, proto, dport) \
        if proto in ("tcp", "udp") else None
    # a Service connection is shown as Hubble shows one: to the backend (after DNAT), with
    # the Service it was made to beside it
    shown_dst, shown_dport = (to_dst, to_dport) if service is not None else (dst, dport)
    flow: dict = {
        "time": datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.timezone.utc)
        .isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "time_ns": time_ns,
        "node_name": node_name,
        "event": kind,
        "reason": reason,
        "IP": {"source": src, "destination": shown_dst, "ipVersion": "IPv4"},
        "source": names.endpoint(src),
        "destination": names.endpoint(shown_dst),
        "protocol": proto,
        "Type": "L3_L4",
    }
    ports = [p for p in {sport, dport, to_sport, to_dport} if p]
    flow["ports"] = sorted(ports) if proto != "icmp" else []
    flags = int(row[E.EV_TCP_FLAGS])
    if proto == "tcp":
        flow["l4"] = {"TCP": {"source_port": sport, "destination_port": shown_dport,
                              **({"flags": tcp_flags(flags)} if flags >= 0 else {})}}
    elif proto == "udp":
        flow["l4"] = {"UDP": {"source_port": sport, "destination_port": shown_dport}}
    elif proto == "icmp":
        flow["l4"] = {"ICMPv4": {"type": 8, "id": sport}}
    if service is not None:
        namespace, _, name = service.service.partition("/")
        flow["destination_service"] = {"namespace": namespace, "name": name,
                                       "port_name": service.port_name,
                                       "address": f"{service.address}:{service.port}"}
    if kind in ("start", "end") and to_src != src:
        flow["translated"] = {"source": f"{to_src}:{to_sport}" if to_sport else to_src}
    reply = int(row[E.EV_REPLY])
    flow["is_reply"] = None if reply < 0 else bool(reply)

    translated = ct_flags >= 0 and (ct_flags & F_MASQUERADE or not ct_flags & F_PLAIN)
    summary = [_l4_summary(proto, flags, sport)]
    if service is not None:
        summary.append(f"Service {service.service}"
                       + (f" port {service.port_name}" if service.port_name else "")
                       + f" {service.address}:{service.port}")
    if "translated" in flow:
        summary.append(("masqueraded" if ct_flags >= 0 and ct_flags & F_MASQUERADE
                        else "source translated") + f" to {flow['translated']['source']}")
    if kind in ("start", "end"):
        flow["verdict"] = "TRANSLATED" if translated else "FORWARDED"
        flow["traffic"] = {"packets": [int(row[E.EV_PKTS_O]), int(row[E.EV_PKTS_R])],
                           "bytes": [int(row[E.EV_BYTES_O]), int(row[E.EV_BYTES_R])]}
    if kind == "start":
        flow["type"] = OBSERVATION.get(reason, "to-stack")
    elif kind == "end":
        flow["type"] = f"ct-{reason}"
        state = int(row[E.EV_STATE])
        if proto == "tcp" and 0 <= state < len(TCP_STATE_NAMES):
            flow["tcp_state"] = TCP_STATE_NAMES[state]
        t = flow["traffic"]
        summary.append(f"{reason}: {t['packets'][0]} packets {_bytes(t['bytes'][0])} ->, "
                       f"{t['packets'][1]} packets {_bytes(t['bytes'][1])} <-")
    else:
        flow["verdict"] = "DROPPED" if kind == "drop" else "REJECTED"
        flow["drop_reason_desc"] = reason
        flow["type"] = reason
        way = int(row[E.EV_POLICY_DIR])
        if way:
            direction = "INGRESS" if way == ring.DIR_INGRESS else "EGRESS"
            count = int(row[E.EV_POLICIES])
            policies = [names.policy(int(row[E.EV_POLICY + k]))
                        for k in range(min(count, ring.MAX_POLICIES))]
            flow["traffic_direction"] = direction
            flow[f"{direction.lower()}_denied_by"] = policies
            flow["type"] = f"policy-verdict:{direction}"
            more = f" and {count - len(policies)} more" if count > len(policies) else ""
            summary.append(f"{direction.lower()} denied: isolated by "
                           + ", ".join(f"{p['namespace']}/{p['name']}" for p in policies)
                           + more + " (NetworkPolicy), no rule allows it")
        else:
            summary.append(COUNTER_HELP.get(reason, reason))
    flow["Summary"] = "; ".join(s for s in summary if s)
    return flow


def _l4_summary(proto: str, flags: int, ident: int) -> str:
    if proto == "tcp":
        return "TCP Flags: " + ", ".join(tcp_flags(flags)) if flags > 0 else "TCP"
    if proto == "udp":
        return "UDP"
    if proto == "icmp":
        return f"ICMPv4 EchoRequest id {ident}"
    return f"IP protocol {proto}"


def name_batch(batch: Batch, node_name: str) -> list[dict]:
    """A drained batch's events as flows, named from the model of their moment."""
    names = Names(batch, node_name)
    return [to_flow(row, names, node_name, batch.wall_offset_ns) for row in batch.rows]


class Follower:
    """One `observe -f` client or page: its own bounded queue."""

    def __init__(self, flow_filter: FlowFilter):
        self.filter = flow_filter
        self.send, self.receive = trio.open_memory_channel(FOLLOW_QUEUE)
        self.dropped = 0          # flows it lost: it read too slowly
        self.ring_lost = 0        # ring losses it has been told of

    def offer(self, flow: dict) -> None:
        if not self.filter.matches(flow):
            return
        try:
            self.send.send_nowait(flow)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


class FlowLog:
    """The node's flows (see the module docstring); every method but `collect` runs in trio
    (or, in tests, in one thread)."""

    def __init__(self, node_name: str, capacity: int = BUFFER):
        self.node_name = node_name
        self.flows: collections.deque = collections.deque(maxlen=capacity)   # named
        self.pending: collections.deque = collections.deque()   # Batches not named yet (newer)
        self.pending_rows = 0
        self.followers: set[Follower] = set()
        self.events = 0            # flows logged since the node started
        self.ring_lost = 0         # events the fast path's ring overwrote before a drain
        self.follower_drops = 0    # flows lost by followers that have gone
        self.by_verdict: collections.Counter = collections.Counter()
        self.policy_drops: collections.Counter = collections.Counter()   # (policy, direction)
        self.ring_size = 0
        self.lock = threading.Lock()   # the snapshot reads the counts from the data-path thread

    def add(self, batch: Batch) -> None:
        """Count a drained batch and keep it; name it now only if someone follows."""
        with self.lock:
            self._count(batch)
            self.pending.append(batch)
            self.pending_rows += len(batch.rows)
            while self.pending and self.pending_rows - len(self.pending[0].rows) >= \
                    self.flows.maxlen:   # older than the newest `capacity` events: never named
                self.pending_rows -= len(self.pending.popleft().rows)
        if self.followers:
            for flow in self._name_pending():
                for follower in tuple(self.followers):
                    follower.offer(flow)

    def _count(self, batch: Batch) -> None:
        """Flows by verdict and event, and policy drops, straight from the rows."""
        rows = batch.rows
        self.ring_lost = max(self.ring_lost, batch.lost)
        self.events += len(rows)
        kinds = rows[:, ring.EV_KIND]
        ct = rows[:, ring.EV_CT_FLAGS]
        translated = (ct >= 0) & (((ct & F_MASQUERADE) != 0) | ((ct & F_PLAIN) == 0))
        for kind, event in ((ring.K_START, "start"), (ring.K_END, "end")):
            mine = kinds == kind
            n_translated = int(np.count_nonzero(mine & translated))
            for verdict, n in (("TRANSLATED", n_translated),
                               ("FORWARDED", int(np.count_nonzero(mine)) - n_translated)):
                if n:
                    self.by_verdict[(verdict, event)] += n
        for kind, event, verdict in ((ring.K_DROP, "drop", "DROPPED"),
                                     (ring.K_REJECT, "reject", "REJECTED")):
            n = int(np.count_nonzero(kinds == kind))
            if n:
                self.by_verdict[(verdict, event)] += n
        for row in rows[rows[:, ring.EV_POLICY_DIR] != 0]:   # refusals: few
            direction = "ingress" if row[ring.EV_POLICY_DIR] == ring.DIR_INGRESS else "egress"
            for k in range(min(int(row[ring.EV_POLICIES]), ring.MAX_POLICIES)):
                index = int(row[ring.EV_POLICY + k])
                p = batch.policies[index] if 0 <= index < len(batch.policies) else None
                name = f"{p.namespace}/{p.name}" if p is not None else f"/policy #{index}"
                self.policy_drops[(name, direction)] += 1

    def _name_pending(self) -> list[dict]:
        """Name the batches kept unnamed, oldest first, into the buffer; the new flows."""
        with self.lock:
            batches, self.pending, self.pending_rows = self.pending, collections.deque(), 0
        new = [flow for batch in batches for flow in name_batch(batch, self.node_name)]
        with self.lock:
            self.flows.extend(new)
        return new

    def query(self, flow_filter: FlowFilter, last: int | None) -> list[dict]:
        """The newest `last` matching flows (all with None), oldest first."""
        self._name_pending()
        matching = [f for f in self.flows if flow_filter.matches(f)]
        return matching[-last:] if last else matching if last is None else []

    def follow(self, flow_filter: FlowFilter) -> Follower:
        follower = Follower(flow_filter)
        follower.ring_lost = self.ring_lost
        with self.lock:
            self.followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        with self.lock:
            if follower in self.followers:
                self.followers.discard(follower)
                self.follower_drops += follower.dropped
        follower.send.close()

    def stats(self) -> dict:
        """For the snapshot (status, metrics, the page)."""
        with self.lock:
            return self._stats()

    def _stats(self) -> dict:
        kept = min(len(self.flows) + self.pending_rows, self.flows.maxlen)
        return {"ring": self.ring_size, "kept": kept, "capacity": self.flows.maxlen,
                "events": self.events, "lost_ring_full": self.ring_lost,
                "lost_slow_clients": self.follower_drops
                + sum(f.dropped for f in self.followers),
                "followers": len(self.followers),
                "by_verdict": [{"verdict": v, "event": e, "flows": n}
                               for (v, e), n in sorted(self.by_verdict.items())],
                "policy_drops": [{"policy": p, "direction": d, "flows": n}
                                 for (p, d), n in sorted(self.policy_drops.items())]}
