"""Every counter of the data plane, declared once.

Each entry generates a constant R_<NAME> (its index in the counters array, importable from this
module), the name `vrouter status` prints, and its help text. A *verdict* says what became of a
frame: every frame the fast path receives ends with exactly one, counted in one place (the
dispatch loop) from the reason its last stage gave. An *event* is counted where it happens and
says nothing about the frame's fate (a conntrack entry evicted, a checksum completed).
"""
from __future__ import annotations

from typing import NamedTuple

FORWARD, SLOW, DROP, EVENT = "forward", "slow", "drop", "event"


class Counter(NamedTuple):
    name: str
    kind: str     # FORWARD / SLOW / DROP: a verdict; EVENT: anything else worth counting
    help: str


COUNTERS = (
    Counter("rx_frames", EVENT, "frames and VXLAN datagrams received (a GRO train counts each)"),
    # --- verdicts: delivered -------------------------------------------------------------------
    Counter("forwarded_l2", FORWARD, "bridged from one pod to another by MAC"),
    Counter("forwarded_routed", FORWARD, "routed by the gateway to a pod of this node"),
    Counter("flooded", FORWARD, "broadcast, multicast or unknown unicast, sent to every pod port"),
    Counter("to_overlay", FORWARD, "routed to another node over VXLAN"),
    Counter("to_outside", FORWARD, "routed out of the node's port on the outside network"),
    Counter("to_node", FORWARD, "for the node itself and consumed there (keepalive answers)"),
    # --- verdicts: handed to the scapy slow path --------------------------------------------------
    Counter("slow_arp", SLOW, "ARP, answered by the slow path"),
    Counter("slow_to_gateway", SLOW, "addressed to the gateway, node or VTEP address"),
    Counter("slow_ttl_exceeded", SLOW, "TTL ran out: ICMP time exceeded"),
    Counter("slow_host_unreachable", SLOW, "an unused address of this node's podCIDR"),
    Counter("slow_no_route", SLOW, "no route: ICMP net unreachable"),
    Counter("slow_frag_needed", SLOW, "too big for the overlay: ICMP frag needed, or fragmented"),
    Counter("slow_service_reject", SLOW, "a Service port without endpoints: RST / port unreachable"),
    Counter("slow_outside_arp_needed", SLOW, "an outside neighbour to resolve with ARP first"),
    # --- verdicts: dropped -----------------------------------------------------------------------
    Counter("drop_runt", DROP, "shorter than an Ethernet header"),
    Counter("drop_oversize", DROP, "longer than a slot: truncated on read"),
    Counter("drop_unknown_ethertype", DROP, "neither IPv4 nor ARP"),
    Counter("drop_ipv6", DROP, "IPv6 (vrouter is IPv4-only)"),
    Counter("drop_bad_ipv4_header", DROP, "IPv4 header malformed or lengths inconsistent"),
    Counter("drop_bad_ipv4_checksum", DROP, "IPv4 header checksum wrong"),
    Counter("drop_bad_vnet_header", DROP, "virtio-net header inconsistent with the frame"),
    Counter("drop_bad_gso_size", DROP, "a super-frame asking for segments smaller than any "
            "kernel sends (or too many of them)"),
    Counter("drop_source_mac_multicast", DROP, "multicast source MAC"),
    Counter("drop_spoofed_mac", DROP, "a pod sent with another pod's MAC"),
    Counter("drop_spoofed_ip", DROP, "a source address its port may not use"),
    Counter("drop_same_port", DROP, "bridged back to the port it came from"),
    Counter("drop_martian", DROP, "to or from 0.0.0.0/8, 127.0.0.0/8 or multicast/reserved "
            "space: never routed"),
    Counter("drop_dhcp_server", DROP, "a pod answering as a DHCP server (UDP 67 to 68)"),
    Counter("drop_overlay_unknown_source", DROP, "VXLAN from an address that is no node"),
    Counter("drop_overlay_bad_vni", DROP, "VXLAN with another VNI"),
    Counter("drop_overlay_bad_flags", DROP, "VXLAN with the I flag clear or reserved bits set"),
    Counter("drop_overlay_truncated", DROP, "VXLAN datagram too short"),
    Counter("drop_overlay_bad_inner", DROP, "inner frame not IPv4 to our VTEP and podCIDR"),
    Counter("drop_overlay_peer_down", DROP, "the destination node has been silent"),
    Counter("drop_overlay_spoofed_source", DROP, "VXLAN whose inner source is neither in the "
            "sending node's podCIDR nor its node address"),
    Counter("drop_outside_not_for_us", DROP, "another host's frame on the outside bridge"),
    Counter("drop_service_no_local_endpoint", DROP, "externalTrafficPolicy Local, no endpoint here"),
    Counter("drop_service_no_snat_port", DROP, "no free source port to SNAT to"),
    Counter("drop_service_invalid", DROP, "a TCP segment for a Service that cannot start a "
            "connection (a stray RST or FIN), as kube-proxy drops conntrack INVALID"),
    Counter("ct_full_refused", DROP, "a new connection refused: every conntrack record in reach "
            "holds an assured connection (cluster.conntrack.maxEntries)"),
    Counter("drop_tcp_rst_out_of_window", DROP, "a TCP reset outside the receiver's window: "
            "not honoured"),
    Counter("drop_policy_ingress", DROP, "a NetworkPolicy isolates the receiving pod: no rule "
            "allows this new connection"),
    Counter("drop_policy_egress", DROP, "a NetworkPolicy isolates the sending pod: no rule "
            "allows this new connection"),
    Counter("drop_own_unroutable", DROP, "a packet the node built itself has nowhere to go"),
    Counter("drop_slow_path_budget", DROP, "for the slow path, but its port has spent this "
            "second's budget (fastpath.budgets)"),
    Counter("drop_icmp_ratelimited", DROP, "would be answered with an ICMP error or a refusal, "
            "but its destination (or the node) has spent this second's budget"),
    Counter("drop_no_room", DROP, "more segments than one output batch holds"),
    Counter("drop_tx_error", DROP, "a write or send failed"),
    Counter("drop_stage_unlinked", DROP, "a stage the node needs has no compiled code in its "
            "tables (a bug: fastpath.stages.link)"),
    # --- events -----------------------------------------------------------------------------------
    Counter("from_overlay", EVENT, "VXLAN datagrams accepted from peers"),
    Counter("from_outside", EVENT, "IPv4 packets accepted on the outside port"),
    Counter("fdb_learn_table_full", EVENT, "a MAC not learned: its window of the table was full"),
    Counter("fdb_learn_port_limit", EVENT, "a MAC not learned: its port has learned "
            "cluster.fdbMaxPerPort MACs already"),
    Counter("outside_neighbour_table_full", EVENT, "an outside neighbour not learned: table full"),
    Counter("svc_new_flows", EVENT, "connections given a Service backend"),
    Counter("masqueraded_flows", EVENT, "pods' connections to the outside network SNATed to "
            "the node address"),
    Counter("policy_flows_tracked", EVENT, "connections NetworkPolicy allowed, followed by "
            "conntrack so their replies pass"),
    Counter("ct_translated", EVENT, "packets translated by Service NAT"),
    Counter("ct_icmp_translated", EVENT, "ICMP errors about translated connections translated"),
    Counter("ct_evicted", EVENT, "unassured connections evicted to make room (early drop)"),
    Counter("aff_evicted", EVENT, "session affinity entries evicted by a full window"),
    Counter("frag_evicted", EVENT, "fragment translations evicted by a full window"),
    Counter("budget_evicted", EVENT, "per-destination ICMP budgets evicted by a full window"),
    Counter("slowpath_ratelimited", EVENT, "slow-path frames skipped: its token bucket was empty"),
    Counter("slowpath_ignored", EVENT, "slow-path frames it had nothing to say about"),
    Counter("slowpath_arp_spoofed", EVENT, "ARP claiming an address its port may not use"),
    Counter("echo_answered", EVENT, "pings to the gateway, node or VTEP address answered"),
    Counter("gso_superframes", EVENT, "super-frames (TSO/USO) received from TAPs"),
    Counter("gso_segments", EVENT, "segments cut from super-frames for the overlay"),
    Counter("gro_coalesced", EVENT, "overlay segments merged into a super-frame for a pod"),
    Counter("gro_bad_checksum", EVENT, "overlay segments not merged: TCP checksum wrong"),
    Counter("csum_partial_completed", EVENT, "partial checksums completed (kernel VXLAN peers, "
            "frames for the overlay or the slow path)"),
    Counter("tx_frames", EVENT, "frames written to TAPs (a flood counts each copy)"),
    Counter("tx_datagrams", EVENT, "VXLAN datagrams sent (a GSO train counts each)"),
    Counter("tx_syscalls", EVENT, "write/sendmmsg calls that sent them"),
    Counter("rx_syscalls", EVENT, "read/recvmmsg calls that returned data"),
    Counter("wakeups", EVENT, "times epoll_wait returned ready file descriptors"),
    Counter("busy_polls", EVENT, "empty polls while busy-polling after traffic"),
)

COUNTER_NAMES = [c.name for c in COUNTERS]
COUNTER_COUNT = len(COUNTERS)
COUNTER_HELP = {c.name: c.help for c in COUNTERS}
VERDICTS = {c.name for c in COUNTERS if c.kind != EVENT}

# R_RX_FRAMES = 0, R_FORWARDED_L2 = 1, ...: numba reads them as compile-time constants
for _index, _counter in enumerate(COUNTERS):
    globals()["R_" + _counter.name.upper()] = _index
assert len(set(COUNTER_NAMES)) == COUNTER_COUNT, "duplicate counter name"


def __getattr__(name: str):   # a clear error for a misspelt R_ constant
    raise AttributeError(f"fastpath.reasons has no {name!r}; counters are declared in COUNTERS")
