"""vrouter trace: where one packet would go, stage by stage, without sending it.

The node runs a made-up packet through the same compiled stages as its traffic, on copies of
the tables the fast path changes (counters, MAC table, neighbours, peer liveness, conntrack,
per-frontend and per-policy counts, the flow log): nothing is learned, no connection opened,
nothing logged, nothing sent. A connection
with the same 5-tuple that already exists is in the copied conntrack table, so the trace shows
the backend that connection really uses. A packet that leaves for another node comes back as
its VXLAN datagram, which that node's trace takes up (`vrouter trace` follows the hops).
"""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from fastpath.dispatch import WRITES as DISPATCH_WRITES, forward
from fastpath.groups import Tables, copy_group
from fastpath.layout import (
    ACT_DROP, ACT_FLOOD, ACT_OVERLAY, ACT_PORT, ACT_SLOW, F_ROWS, F_TRACE, HEADROOM, O_DONE,
    O_KIND, O_LEN, O_ROW, O_SEGMENT, O_SOCKET, O_SRC, O_START, O_TARGET, OUT_OVERLAY, SLOT,
    SRC_DATA, T_ACTION, T_DPORT, T_DST, T_NEXT, T_OUT, T_PROTO, T_REASON, T_SPORT, T_SRC,
    T_STAGE, VXLAN_HEADER_LEN,
)
from fastpath.reasons import COUNTER_HELP, COUNTER_NAMES, COUNTERS, R_SVC_NEW_FLOWS
from fastpath.stages import DONE, STAGE_NAMES, S_SERVICES, writes
from vrouter.node.dataplane import (
    NO_VNET, Dataplane, load_datagrams, load_into, new_frames, new_output,
)

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
ACTIONS = {ACT_DROP: "drop", ACT_PORT: "port", ACT_FLOOD: "flood", ACT_SLOW: "slow",
           ACT_OVERLAY: "overlay"}
MAX_STEPS = 32
MAX_DATAGRAM = SLOT - HEADROOM + VXLAN_HEADER_LEN   # what one recvmmsg message holds
PROBE_PAYLOAD = b"vrouter trace"


class TraceError(ValueError):
    """A trace request that names nothing this node has."""


def probe(src_mac: str, dst_mac: str, src: str, dst: str, proto: str, sport: int,
          dport: int) -> bytes:
    """The packet a connection would start with: a TCP SYN, a UDP datagram, an echo request."""
    l3 = IP(src=src, dst=dst)
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags="S", seq=1)
    elif proto == "udp":
        l4 = UDP(sport=sport, dport=dport) / PROBE_PAYLOAD
    else:
        l4 = ICMP(type=8, id=sport, seq=1) / PROBE_PAYLOAD
    return bytes(Ether(src=src_mac, dst=dst_mac) / l3 / l4)


def scratch_tables(t: Tables) -> Tables:
    """The tables, with copies of everything the fast path may write to: what the stages
    declare (fastpath.stages.STAGES) and what the dispatch loop changes itself."""
    paths = set(writes() + DISPATCH_WRITES)
    for path in sorted(paths):
        group, _, field = path.partition(".")
        if field and group in paths:
            continue   # the whole group is copied
        value = getattr(t, group)
        if field:
            value = value._replace(**{field: copy_group(getattr(value, field))})
        else:
            value = copy_group(value)
        t = t._replace(**{group: value})
    return t


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(int(value)))


def describe_packet(row) -> str:
    if not row[T_PROTO]:
        return "not IPv4"
    proto = PROTOCOL_NAMES.get(int(row[T_PROTO]), f"proto {int(row[T_PROTO])}")
    src, dst = _ip(row[T_SRC]), _ip(row[T_DST])
    if row[T_PROTO] in (6, 17):
        return f"{proto} {src}:{int(row[T_SPORT])} > {dst}:{int(row[T_DPORT])}"
    return f"{proto} {src} > {dst}"


class Tracer:
    """Traces on one node's data plane; called in its data-path thread, between batches."""

    def __init__(self, dp: Dataplane, peer_names: list[str], source_ports: list[int]):
        self.dp = dp
        self.peer_names = peer_names       # by peer index
        self.source_ports = source_ports   # outer UDP source port, by overlay send socket
        self.frames = new_frames()
        self.out = new_output(MAX_STEPS)

    # --- what goes in -------------------------------------------------------------------------

    def answer(self, request: dict) -> dict:
        """A control-socket request: {"from": "pod", "pod", "dst", "proto", "sport", "dport"},
        {"from": "outside", "dst", ...} or {"from": "overlay", "source", "datagram" (hex)}."""
        source = request.get("from")
        if source == "overlay":
            try:
                datagram = bytes.fromhex(request["datagram"])
                ipaddress.IPv4Address(request["source"])
            except (KeyError, TypeError, ValueError) as exc:
                raise TraceError(f"an overlay trace needs source (IPv4) and datagram (hex): {exc}")
            if len(datagram) > MAX_DATAGRAM:
                raise TraceError(f"a datagram of {len(datagram)} bytes: a receive buffer holds "
                                 f"{MAX_DATAGRAM}")
            return self.from_overlay(request["source"], datagram)
        if source not in ("pod", "outside"):
            raise TraceError(f"from {source!r}: pod, outside or overlay")
        try:
            dst = str(ipaddress.IPv4Address(request.get("dst")))
        except ValueError:
            raise TraceError(f"dst {request.get('dst')!r} is not an IPv4 address") from None
        proto = request.get("proto", "tcp")
        if not isinstance(proto, str) or proto not in PROTOCOLS:
            raise TraceError(f"proto {proto!r}: tcp, udp or icmp")
        ports = []
        for name, default in (("sport", 40000), ("dport", 80)):
            value = request.get(name, default)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise TraceError(f"{name} {value!r} is not a port number")
            ports.append(value)
        if source == "pod":
            return self.from_pod(str(request.get("pod")), dst, proto, *ports)
        return self.from_outside(dst, proto, *ports)

    def from_pod(self, pod_name: str, dst: str, proto: str, sport: int, dport: int) -> dict:
        dp = self.dp
        port = dp.port_of(pod_name)
        if port is None:
            raise TraceError(f"no pod {pod_name!r} is attached to node {dp.node.name}")
        pod = dp.ports[port]
        dst_mac = dp.node.gateway_mac
        if ipaddress.IPv4Address(dst) in dp.node.pod_cidr:   # on-link: the pod ARPs for it
            local = next((p for p in dp.ports.values() if str(p.ip) == dst), None)
            if local is not None:
                dst_mac = local.mac
            elif ipaddress.IPv4Address(dst) != dp.node.gateway:
                raise TraceError(f"{dst} is in {dp.node.pod_cidr}, on-link for {pod_name}, but no "
                                 f"pod there has it: its ARP request would go unanswered")
        frame = probe(pod.mac, dst_mac, str(pod.ip), dst, proto, sport, dport)
        load_into(self.frames, [(port, frame, NO_VNET)])
        return self._run(f"{pod_name} (port {port}) sends")

    def from_outside(self, dst: str, proto: str, sport: int, dport: int) -> dict:
        c, dp = self.dp.cluster, self.dp
        frame = probe(c.outside_host_mac, dp.node.mac, str(c.outside_host), dst, proto, sport,
                      dport)
        load_into(self.frames, [(dp.uplink, frame, NO_VNET)])
        return self._run(f"the outside host {c.outside_host} sends")

    def from_overlay(self, source: str, datagram: bytes) -> dict:
        load_datagrams(self.frames, [(int(ipaddress.IPv4Address(source)), [datagram])])
        return self._run(f"a VXLAN datagram from {source} arrives")

    # --- running it ---------------------------------------------------------------------------

    def _run(self, what: str) -> dict:
        dp, out = self.dp, self.out
        tables = scratch_tables(dp.tables)
        out.fill[:] = 0
        forward(self.frames, 0, 1, dp.now, tables, out)
        rows = out.trace[:int(out.fill[F_TRACE])].copy()
        new_connection = int(tables.counters[R_SVC_NEW_FLOWS]) > int(dp.counters[R_SVC_NEW_FLOWS])
        steps, before, before_row = [], None, None
        for row in rows:
            step = {"stage": STAGE_NAMES[int(row[T_STAGE])],
                    "next": None if row[T_NEXT] == DONE else STAGE_NAMES[int(row[T_NEXT])],
                    "packet": describe_packet(row)}
            if before is not None and step["packet"] != before:
                step["rewritten_from"] = before
                if row[T_STAGE] == S_SERVICES:
                    step["service"] = self._service(before_row, row, new_connection)
            before, before_row = step["packet"], row
            steps.append(step)
        result = {"node": dp.node.name, "input": what, "steps": steps}
        if len(rows):
            result.update(self._verdict(rows[-1], out))
        return result

    def _verdict(self, last, out) -> dict:
        reason = int(last[T_REASON])
        action = int(last[T_ACTION])
        verdict = {"verdict": COUNTER_NAMES[reason], "kind": COUNTERS[reason].kind,
                   "explanation": COUNTER_HELP[COUNTER_NAMES[reason]],
                   "action": ACTIONS.get(action, str(action))}
        if action == ACT_PORT:
            port = int(last[T_OUT])
            pod = self.dp.ports.get(port)
            verdict["to"] = ({"pod": pod.name, "port": port} if pod is not None
                             else {"outside": True, "port": port})
        elif action == ACT_FLOOD:
            verdict["to"] = {"pods": sorted(p.name for p in self.dp.ports.values())}
        elif action == ACT_OVERLAY:
            peer = int(last[T_OUT])
            sent = self._first_datagram(out, peer)
            verdict["to"] = {"node": self.peer_names[peer],
                             "underlay": str(self.dp.peers[peer].underlay),
                             "source": str(self.dp.node.underlay),
                             "datagram": sent[0].hex() if sent else None}
            if sent:
                verdict["outer"] = self._outer(peer, *sent)
        return verdict

    def _first_datagram(self, out, peer: int) -> tuple[bytes, int] | None:
        """The first VXLAN datagram the output batch sends to `peer` (the first segment of a
        GSO train), with its send socket."""
        for row in out.rows[:int(out.fill[F_ROWS])].tolist():
            if row[O_KIND] != OUT_OVERLAY or row[O_DONE] or row[O_TARGET] != peer:
                continue
            source = out.data[0] if row[O_SRC] == SRC_DATA else self.frames.buf[row[O_ROW]]
            size = row[O_SEGMENT] or row[O_LEN]
            return source[row[O_START]:row[O_START] + size].tobytes(), row[O_SOCKET]
        return None

    def _outer(self, peer: int, datagram: bytes, socket: int) -> dict:
        """The outer headers the kernel puts around the VXLAN datagram (RFC 7348)."""
        vni = int.from_bytes(datagram[4:7], "big")
        return {"src": str(self.dp.node.underlay), "dst": str(self.dp.peers[peer].underlay),
                "sport": self.source_ports[socket] if socket < len(self.source_ports) else None,
                "dport": self.dp.cluster.overlay.port, "vni": vni,
                "inner_length": len(datagram) - 8}

    def _service(self, before, after, new_connection: bool) -> dict:
        """Which frontend a rewrite at the services stage belongs to, and the backend chosen."""
        dst, dport, proto = _ip(before[T_DST]), int(before[T_DPORT]), int(before[T_PROTO])
        frontend = next((f for f in self.dp.services.frontends
                         if f.address == dst and f.port == dport
                         and PROTOCOLS.get(f.protocol.lower()) == proto), None)
        backend_ip = _ip(after[T_DST])
        pod = next((p for p in self.dp.cluster.pods if str(p.ip) == backend_ip), None)
        info = {"connection": "new" if new_connection else "established (conntrack)"}
        if frontend is None:   # the reply direction of a translated connection
            info["reply_of_translated_connection"] = True
            return info
        info.update({"service": frontend.service, "port_name": frontend.port_name,
                     "frontend": f"{frontend.address}:{frontend.port}/{frontend.protocol}",
                     "backend": f"{backend_ip}:{int(after[T_DPORT])}",
                     "backend_pod": pod.name if pod is not None else None,
                     "backend_node": pod.node if pod is not None else None,
                     "snat": _ip(after[T_SRC]) != _ip(before[T_SRC])})
        return info
