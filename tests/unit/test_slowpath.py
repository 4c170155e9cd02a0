"""The scapy slow path, bytes in and bytes out: ARP responder, gateway host, ICMP errors."""
import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from fastpath.reasons import (
    COUNTER_COUNT, R_SLOWPATH_IGNORED, R_SLOWPATH_RATELIMITED, R_SLOWPATH_ARP_SPOOFED,
    R_SLOW_ARP, R_SLOW_FRAG_NEEDED, R_SLOW_HOST_UNREACHABLE, R_SLOW_TO_GATEWAY,
    R_SLOW_TTL_EXCEEDED,
)
from vrouter.model import config
from vrouter.node.slowpath import SlowPath

GW, GW_MAC = "10.244.1.1", "02:76:0a:f4:01:01"
A_IP, A_MAC = "10.244.1.2", "0a:58:0a:f4:01:02"
B_IP, B_MAC = "10.244.1.3", "0a:58:0a:f4:01:03"


@pytest.fixture
def slow():
    cluster = config.load("configs/demo.yaml", check_host=False)
    return SlowPath(cluster, "node-a", np.zeros(COUNTER_COUNT, dtype=np.uint64))


def who_has(target, sender_ip=A_IP, sender_mac=A_MAC):
    return bytes(Ether(src=sender_mac, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc=sender_mac, psrc=sender_ip, pdst=target))


def only_routed(result):
    l2, routed = result
    assert l2 == []
    assert len(routed) == 1
    frame = Ether(routed[0])
    assert frame.dst == GW_MAC   # handed back to the fast path for routing
    return frame[IP]


def test_arp_for_gateway_is_answered_with_gateway_mac(slow):
    l2, routed = slow.handle(who_has(GW), 0, R_SLOW_ARP)
    assert routed == [] and len(l2) == 1
    port, frame = l2[0]
    reply = Ether(frame)
    assert port == 0
    assert reply.dst == A_MAC and reply[ARP].op == 2
    assert reply[ARP].hwsrc == GW_MAC and reply[ARP].psrc == GW and reply[ARP].pdst == A_IP


def test_arp_suppression_answers_for_a_known_pod(slow):
    (port, frame), = slow.handle(who_has(B_IP), 0, R_SLOW_ARP)[0]
    assert Ether(frame)[ARP].hwsrc == B_MAC and Ether(frame)[ARP].psrc == B_IP


def test_arp_for_unknown_address_gets_no_answer_and_is_counted(slow):
    assert slow.handle(who_has("10.244.1.77"), 0, R_SLOW_ARP) == ([], [])
    assert slow.counters[R_SLOWPATH_IGNORED] == 1


def test_arp_claiming_another_pods_address_is_dropped(slow):
    assert slow.handle(who_has(GW, sender_ip=B_IP), 0, R_SLOW_ARP) == ([], [])
    assert slow.counters[R_SLOWPATH_ARP_SPOOFED] == 1


def test_arp_reply_to_probe_marks_pod_answered(slow):
    assert [port for port, _ in slow.probes()] == [0, 1, 2]   # web-1, web-2, the DNS server
    reply = bytes(Ether(src=A_MAC, dst=GW_MAC) / ARP(op=2, hwsrc=A_MAC, psrc=A_IP, hwdst=GW_MAC, pdst=GW))
    slow.handle(reply, 0, R_SLOW_ARP)
    assert slow.answered == {0}
    assert [port for port, _ in slow.probes()] == [1, 2]


def test_echo_request_to_gateway_gets_reply(slow):
    req = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=GW) / ICMP(id=7, seq=3) / b"payload"
    ip = only_routed(slow.handle(bytes(req), 0, R_SLOW_TO_GATEWAY))
    assert (ip.src, ip.dst) == (GW, A_IP)
    assert ip[ICMP].type == 0 and ip[ICMP].id == 7 and ip[ICMP].seq == 3
    assert bytes(ip[ICMP].payload) == b"payload"


def test_udp_to_gateway_gets_port_unreachable(slow):
    pkt = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=GW) / UDP(sport=5000, dport=53)
    ip = only_routed(slow.handle(bytes(pkt), 0, R_SLOW_TO_GATEWAY))
    assert (ip[ICMP].type, ip[ICMP].code) == (3, 3)


def test_tcp_syn_to_gateway_gets_rst(slow):
    pkt = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=GW) / TCP(sport=4000, dport=80, seq=100, flags="S")
    ip = only_routed(slow.handle(bytes(pkt), 0, R_SLOW_TO_GATEWAY))
    assert ip[TCP].flags == "RA" and ip[TCP].ack == 101 and ip[TCP].dport == 4000


def test_the_rst_to_a_syn_at_the_end_of_sequence_space_acknowledges_across_the_wrap(slow):
    syn = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=GW) / TCP(sport=40000, dport=80,
                                                                 flags="S", seq=0xFFFFFFFF)
    rst = only_routed(slow.handle(bytes(syn), 0, R_SLOW_TO_GATEWAY))[TCP]
    assert rst.flags == "RA" and rst.ack == 0   # found by tests/fuzz/pod_frames


@pytest.mark.parametrize("reason, icmp_type, code", [
    (R_SLOW_TTL_EXCEEDED, 11, 0), (R_SLOW_HOST_UNREACHABLE, 3, 1),
])
def test_router_errors_quote_the_offending_packet(slow, reason, icmp_type, code):
    orig = IP(src=A_IP, dst="10.244.1.99", ttl=1) / UDP(sport=1, dport=2) / (b"x" * 40)
    ip = only_routed(slow.handle(bytes(Ether(src=A_MAC, dst=GW_MAC) / orig), 0, reason))
    assert (ip.src, ip.dst) == (GW, A_IP)
    assert (ip[ICMP].type, ip[ICMP].code) == (icmp_type, code)
    assert bytes(ip[ICMP].payload).startswith(bytes(orig)[:28])


def test_frag_needed_carries_the_pod_mtu(slow):
    orig = IP(src=A_IP, dst="10.244.2.3", flags="DF") / UDP() / (b"x" * 1472)
    ip = only_routed(slow.handle(bytes(Ether(src=A_MAC, dst=GW_MAC) / orig), 0, R_SLOW_FRAG_NEEDED))
    assert (ip[ICMP].type, ip[ICMP].code, ip[ICMP].nexthopmtu) == (3, 4, 1450)


def test_oversize_without_df_is_fragmented(slow):
    orig = IP(src=A_IP, dst="10.244.2.3", ttl=9) / UDP() / (b"x" * 2000)
    l2, routed = slow.handle(bytes(Ether(src=A_MAC, dst=GW_MAC) / orig), 0, R_SLOW_FRAG_NEEDED)
    frags = [Ether(f)[IP] for f in routed]
    assert len(frags) == 2
    assert all(len(f) <= 1450 and f.ttl == 8 for f in frags)
    assert sum(len(f.payload) for f in frags) == len(orig.payload)


def test_no_icmp_error_about_an_icmp_error(slow):
    err = IP(src=A_IP, dst="10.244.1.99", ttl=1) / ICMP(type=3, code=1)
    assert slow.handle(bytes(Ether(src=A_MAC, dst=GW_MAC) / err), 0, R_SLOW_TTL_EXCEEDED) == ([], [])


def test_malformed_frame_is_counted_not_raised(slow):
    assert slow.handle(b"\x00" * 20, 0, R_SLOW_TO_GATEWAY) == ([], [])
    assert slow.counters[R_SLOWPATH_IGNORED] == 1


def test_rate_limit_caps_slow_path_work():
    cluster = config.load("configs/demo.yaml", check_host=False)
    now = [0.0]
    slow = SlowPath(cluster, "node-a", np.zeros(COUNTER_COUNT, dtype=np.uint64), rate=10, burst=5,
                    clock=lambda: now[0])
    frame = who_has(GW)
    answered = sum(1 for _ in range(20) if slow.handle(frame, 0, R_SLOW_ARP)[0])
    assert answered == 5
    assert slow.counters[R_SLOWPATH_RATELIMITED] == 15
    now[0] = 1.0   # a second later the bucket has refilled (capped at the burst)
    assert sum(1 for _ in range(20) if slow.handle(frame, 0, R_SLOW_ARP)[0]) == 5
