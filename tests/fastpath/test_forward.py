"""The numba fast path against scapy's reading of the same frames (scapy is the oracle)."""
import ipaddress
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fastpath.checksum import update16
from tests.harness import OVERLAY_TARGET, keepalives, process, process_datagrams, still_clock
from vrouter.model import config
from vrouter.node.dataplane import Dataplane

GW_MAC = "02:76:0a:f4:01:01"
A_IP, A_MAC = "10.244.1.2", "0a:58:0a:f4:01:02"
B_IP, B_MAC = "10.244.1.3", "0a:58:0a:f4:01:03"
REMOTE_IP = "10.244.2.3"
VTEP_A, VTEP_B = "0e:76:0a:f4:01:00", "0e:76:0a:f4:02:00"
UNDERLAY_A, UNDERLAY_B = "127.0.0.11", "127.0.0.12"


def make_dp(extra=""):
    text = open("configs/demo.yaml").read().replace("  overlay:", extra + "  overlay:")
    return Dataplane(config.parse(text, "demo.yaml", check_host=False), "node-a",
                     clock=still_clock())


@pytest.fixture
def dp():
    return make_dp()


def counters(dp):
    return {k: v for k, v in dp.counter_dict().items() if v}


def routed(payload=None, src=A_IP, dst=B_IP, ttl=64, **ip):
    payload = payload if payload is not None else ICMP(id=1, seq=1) / b"ping"
    return Ether(src=A_MAC, dst=GW_MAC) / IP(src=src, dst=dst, ttl=ttl, **ip) / payload


def test_l2_forward_between_pods_leaves_frame_untouched(dp):
    frame = Ether(src=A_MAC, dst=B_MAC) / IP(src=A_IP, dst=B_IP) / UDP(sport=1, dport=2) / b"hi"
    assert process(dp, [(0, bytes(frame))]) == [(1, bytes(frame))]
    assert counters(dp) == {"rx_frames": 1, "forwarded_l2": 1}


def test_routed_via_gateway_rewrites_macs_and_decrements_ttl(dp):
    frame = routed(TCP(sport=1234, dport=80, flags="S"), ttl=17)
    (port, out), = process(dp, [(0, bytes(frame))])
    expected = frame.copy()
    expected[Ether].src, expected[Ether].dst = GW_MAC, B_MAC
    expected[IP].ttl = 16
    del expected[IP].chksum
    assert port == 1
    assert out == bytes(expected)   # incremental checksum == scapy's full recomputation


def test_incremental_checksum_matches_full_recompute_over_random_headers():
    rng = random.Random(7)
    for _ in range(500):
        pkt = IP(src=str(ipaddress.IPv4Address(rng.getrandbits(32))),
                 dst=str(ipaddress.IPv4Address(rng.getrandbits(32))),
                 ttl=rng.randint(2, 255), id=rng.getrandbits(16), tos=rng.getrandbits(8),
                 proto=rng.choice([1, 6, 17]))
        raw = IP(bytes(pkt))
        old_word = (raw.ttl << 8) | raw.proto
        new = raw.copy()
        new.ttl -= 1
        del new.chksum
        assert update16(raw.chksum, old_word, old_word - 256) == IP(bytes(new)).chksum


@pytest.mark.parametrize("frame, reason", [
    (b"\x00" * 10, "drop_runt"),
    (bytes(Ether(src=A_MAC, dst=B_MAC, type=0x88CC) / (b"lldp" * 3)), "drop_unknown_ethertype"),
    (bytes(Ether(src=A_MAC, dst=B_MAC, type=0x86DD) / (b"\x60" + b"\x00" * 39)), "drop_ipv6"),
    (bytes(Ether(src="01:00:5e:00:00:01", dst=B_MAC) / IP(src=A_IP, dst=B_IP)), "drop_source_mac_multicast"),
    (bytes(Ether(src=B_MAC, dst=GW_MAC) / IP(src=A_IP, dst=B_IP)), "drop_spoofed_mac"),
    (bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=B_IP, dst="10.244.2.2")), "drop_spoofed_ip"),
    (bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=B_IP, chksum=0x1234)), "drop_bad_ipv4_checksum"),
    (bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=B_IP, ihl=4)), "drop_bad_ipv4_header"),
    (bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=B_IP, len=400)), "drop_bad_ipv4_header"),
    (bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=B_IP, version=6)), "drop_bad_ipv4_header"),
    (bytes(Ether(src=A_MAC, dst=A_MAC) / IP(src=A_IP, dst=A_IP)), "drop_same_port"),
])
def test_bad_frames_are_dropped_and_counted_by_reason(dp, frame, reason):
    assert process(dp, [(0, frame)]) == []
    assert counters(dp) == {"rx_frames": 1, reason: 1}


def test_a_bad_frame_does_not_disturb_its_batch(dp):
    good = bytes(Ether(src=A_MAC, dst=B_MAC) / IP(src=A_IP, dst=B_IP) / UDP())
    out = process(dp, [(0, good), (0, b"\x01\x02"), (0, good)])
    assert out == [(1, good), (1, good)]


def test_broadcast_and_unknown_unicast_flood_to_other_ports(dp):
    bcast = bytes(Ether(src=A_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src=A_IP, dst="10.244.1.255") / UDP())
    unknown = bytes(Ether(src=A_MAC, dst="0a:58:00:00:00:99") / IP(src=A_IP, dst=B_IP) / UDP())
    # every other port: web-2 (1) and the node's DNS server pod (2)
    assert process(dp, [(0, bcast), (0, unknown)]) == [(1, bcast), (2, bcast), (1, unknown),
                                                       (2, unknown)]


def test_mac_learning_and_ageing():
    now = [1000]
    text = open("configs/demo.yaml").read().replace("podCIDR: 10.244.0.0/16",
                                                     "podCIDR: 10.244.0.0/16\n  fdbAgeSeconds: 60")
    dp = Dataplane(config.parse(text, "demo.yaml", check_host=False), "node-a", clock=lambda: now[0])
    other_mac = "0a:58:0a:f4:01:77"   # a MAC the user gave pod B by hand
    learn = bytes(Ether(src=other_mac, dst=A_MAC) / IP(src=B_IP, dst=A_IP) / UDP())
    to_it = bytes(Ether(src=A_MAC, dst=other_mac) / IP(src=A_IP, dst=B_IP) / UDP())
    assert process(dp, [(1, learn)]) == [(0, learn)]
    assert process(dp, [(0, to_it)]) == [(1, to_it)]          # learned: straight to port 1
    now[0] += 61
    assert process(dp, [(0, to_it)]) == [(1, to_it), (2, to_it)]   # aged out: flooded
    assert counters(dp)["flooded"] == 1


def test_arp_goes_to_the_slow_path_and_is_answered(dp):
    req = Ether(src=A_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=A_MAC, psrc=A_IP, pdst="10.244.1.1")
    (port, out), = process(dp, [(0, bytes(req))])
    assert port == 0 and Ether(out)[ARP].hwsrc == GW_MAC
    assert counters(dp)["slow_arp"] == 1


def test_ttl_one_gets_time_exceeded_from_the_gateway(dp):
    (port, out), = process(dp, [(0, bytes(routed(ttl=1)))])
    reply = Ether(out)
    assert port == 0 and reply.src == GW_MAC and reply.dst == A_MAC
    assert reply[IP].src == "10.244.1.1" and reply[ICMP].type == 11


def test_unused_address_in_pod_cidr_gets_host_unreachable(dp):
    (port, out), = process(dp, [(0, bytes(routed(dst="10.244.1.99")))])
    assert port == 0 and (Ether(out)[ICMP].type, Ether(out)[ICMP].code) == (3, 1)


OUTSIDE_HOST_MAC = "02:76:ac:12:00:01"   # 172.18.0.1, the nodes' default gateway
NODE_A_ADDRESS, NODE_A_MAC = "172.18.0.2", "02:76:ac:12:00:02"


def test_the_world_beyond_goes_to_the_outside_gateway_as_the_node(dp):
    (port, out), = process(dp, [(0, bytes(routed(UDP(sport=4000, dport=53), dst="192.0.2.1")))])
    pkt = Ether(out)
    assert port == dp.uplink and (pkt.dst, pkt.src) == (OUTSIDE_HOST_MAC, NODE_A_MAC)
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl) == (NODE_A_ADDRESS, "192.0.2.1", 63)
    assert counters(dp)["masqueraded_flows"] == 1


def test_without_an_outside_gateway_the_world_is_net_unreachable():
    dp = make_dp("  outsideGateway: none\n")
    (port, out), = process(dp, [(0, bytes(routed(dst="192.0.2.1")))])
    assert port == 0 and (Ether(out)[ICMP].type, Ether(out)[ICMP].code) == (3, 0)


@pytest.mark.parametrize("dst", ["10.244.7.1",    # the cluster's podCIDR, but no node's
                                 "10.96.9.9"])    # the serviceCIDR, but no Service
def test_cluster_addresses_nobody_serves_are_net_unreachable_not_sent_outside(dp, dst):
    (port, out), = process(dp, [(0, bytes(routed(dst=dst)))])
    assert port == 0 and (Ether(out)[ICMP].type, Ether(out)[ICMP].code) == (3, 0)


@pytest.mark.parametrize("dst", ["127.0.0.1", "127.1.2.3", "0.0.0.1", "224.0.0.1",
                                 "255.255.255.255"])
def test_martian_destinations_are_dropped(dp, dst):
    """A pod may not reach the node's loopback through its gateway (the CVE-2020-8558 class)."""
    assert process(dp, [(0, bytes(routed(dst=dst)))]) == []
    assert counters(dp) == {"rx_frames": 1, "drop_martian": 1}


def test_a_pods_dhcp_server_answer_is_dropped(dp):
    offer = Ether(src=A_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src=A_IP, dst="255.255.255.255") \
        / UDP(sport=67, dport=68) / (b"\x02" + bytes(239))
    assert process(dp, [(0, bytes(offer))]) == []
    assert counters(dp) == {"rx_frames": 1, "drop_dhcp_server": 1}


def test_ipv6_router_advertisements_are_not_forwarded(dp):
    from scapy.layers.inet6 import ICMPv6ND_RA, IPv6
    ra = Ether(src=A_MAC, dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1") \
        / ICMPv6ND_RA()
    assert process(dp, [(0, bytes(ra))]) == []
    assert counters(dp) == {"rx_frames": 1, "drop_ipv6": 1}


# --- VXLAN encapsulation and decapsulation -------------------------------------------------------

def test_encapsulation_matches_scapy(dp):
    """The node's UDP socket carries the datagram (the kernel writes outer IPv4/UDP): the fast
    path's output is the VXLAN header and the inner frame, addressed VTEP to VTEP."""
    inner = routed(UDP(sport=5555, dport=53) / b"query", dst=REMOTE_IP, ttl=30)
    (target, datagram), = process(dp, [(0, bytes(inner))])
    assert target == OVERLAY_TARGET + 0
    assert len(datagram) == len(inner) + 8
    vx = VXLAN(datagram)
    assert vx.flags == 0x08 and vx.vni == 1 and vx.reserved1 == 0 and vx.reserved2 == 0
    expected = inner.copy()
    expected[Ether].src, expected[Ether].dst = VTEP_A, VTEP_B
    expected[IP].ttl = 29
    del expected[IP].chksum
    assert bytes(vx.payload) == bytes(expected)


def test_outer_source_port_follows_the_inner_flow(dp):
    """Flows are spread over the node's send sockets (their UDP source ports) by a hash of the
    inner flow, so an ECMP underlay spreads them too; one flow always uses one socket."""
    def socket_of(sp):
        (emitted,) = process(dp, [(0, bytes(routed(UDP(sport=sp, dport=80), dst=REMOTE_IP)))],
                                 detail=True)
        return emitted.socket
    assert socket_of(1000) == socket_of(1000)
    assert len({socket_of(p) for p in range(1000, 1032)}) >= 6   # of 8 sockets


def test_too_big_with_df_gets_frag_needed(dp):
    big = routed(UDP() / (b"x" * 1472), dst=REMOTE_IP, flags="DF")
    (port, out), = process(dp, [(0, bytes(big))])
    icmp = Ether(out)[ICMP]
    assert port == 0 and (icmp.type, icmp.code, icmp.nexthopmtu) == (3, 4, 1450)


def vxlan_datagram(inner, vni=1, flags=0x08, reserved1=0, reserved2=0):
    return bytes(VXLAN(flags=flags, vni=vni, reserved1=reserved1, reserved2=reserved2) / inner)


def from_b(dst=A_IP, ttl=20):
    return Ether(src=VTEP_B, dst=VTEP_A) / IP(src=REMOTE_IP, dst=dst, ttl=ttl) / UDP(sport=7, dport=9) / b"data"


def ip_int(addr):
    return int(ipaddress.IPv4Address(addr))


def test_decapsulated_frame_is_delivered_to_the_pod(dp):
    inner = from_b()
    (port, out), = process_datagrams(dp, [(ip_int(UNDERLAY_B), vxlan_datagram(inner))])
    expected = inner.copy()
    expected[Ether].src, expected[Ether].dst = GW_MAC, A_MAC
    expected[IP].ttl = 19
    del expected[IP].chksum
    assert port == 0 and out == bytes(expected)


@pytest.mark.parametrize("source, datagram, reason", [
    ("127.0.0.99", vxlan_datagram(from_b()), "drop_overlay_unknown_source"),
    (UNDERLAY_B, vxlan_datagram(from_b(), vni=2), "drop_overlay_bad_vni"),
    (UNDERLAY_B, vxlan_datagram(from_b(), flags=0x00), "drop_overlay_bad_flags"),
    (UNDERLAY_B, vxlan_datagram(from_b())[:12], "drop_overlay_truncated"),
    (UNDERLAY_B, vxlan_datagram(Ether(src=VTEP_B, dst="0a:00:00:00:00:01") / IP()), "drop_overlay_bad_inner"),
    (UNDERLAY_B, vxlan_datagram(bytes(from_b())[:30]), "drop_overlay_bad_inner"),
    (UNDERLAY_B, vxlan_datagram(from_b(dst="10.244.2.9")), "drop_overlay_bad_inner"),
])
def test_bad_overlay_datagrams_are_dropped_by_reason(dp, source, datagram, reason):
    assert process_datagrams(dp, [(ip_int(source), datagram)]) == []
    assert counters(dp) == {"rx_frames": 1, reason: 1}


def spoofed(src):
    return Ether(src=VTEP_B, dst=VTEP_A) / IP(src=src, dst=A_IP) / UDP(sport=7, dport=9)


@pytest.mark.parametrize("src", ["10.244.1.3",   # one of our own pods
                                 "10.244.3.7",   # a podCIDR of no node
                                 "172.18.0.1",   # the outside host
                                 "192.0.2.1", "127.0.0.1"])
def test_a_peer_may_only_speak_for_its_own_pods_and_itself(dp, src):
    assert process_datagrams(dp, [(ip_int(UNDERLAY_B), vxlan_datagram(spoofed(src)))]) == []
    assert counters(dp) == {"rx_frames": 1, "drop_overlay_spoofed_source": 1}


@pytest.mark.parametrize("src", ["10.244.2.3", "10.244.2.1", "10.244.2.0", "172.18.0.3"])
def test_a_peers_pods_gateway_vtep_and_node_address_are_accepted(dp, src):
    (port, _out), = process_datagrams(dp, [(ip_int(UNDERLAY_B), vxlan_datagram(spoofed(src)))])
    assert port == 0


# every bit of the VXLAN header but the I flag (byte 0, 0x08) and the VNI (bytes 4-6) is reserved
RESERVED_BITS = [(byte, mask) for byte in (0, 1, 2, 3, 7) for mask in (1 << k for k in range(8))
                 if (byte, mask) != (0, 0x08)]


@pytest.mark.parametrize("byte, mask", RESERVED_BITS, ids=[f"byte{b}-0x{m:02x}" for b, m in RESERVED_BITS])
def test_every_reserved_bit_is_rejected(dp, byte, mask):
    """As the Linux selftest vxlan_reserved.sh does: set each reserved bit in turn."""
    header = bytearray(vxlan_datagram(from_b())[:8])
    header[byte] |= mask
    datagram = bytes(header) + bytes(from_b())
    assert process_datagrams(dp, [(ip_int(UNDERLAY_B), datagram)]) == []
    assert counters(dp) == {"rx_frames": 1, "drop_overlay_bad_flags": 1}


def test_the_reserved_bits_cover_the_header_but_flag_and_vni():
    assert len(RESERVED_BITS) == 5 * 8 - 1


def silence_peer(dp):
    dp.tables.peers.peer_seen[0] = int(dp.clock()) - 10   # nothing heard for longer than the limit
    assert not dp.peer_is_up(0)


def test_down_peer_drops_pod_traffic_but_keepalives_still_go(dp):
    silence_peer(dp)
    assert process(dp, [(0, bytes(routed(dst=REMOTE_IP)))]) == []
    assert counters(dp)["drop_overlay_peer_down"] == 1
    (emitted,) = keepalives(dp)
    inner = Ether(bytes(VXLAN(emitted.data).payload))
    assert emitted.target == OVERLAY_TARGET and (inner[IP].src, inner[IP].dst) == ("10.244.1.0", "10.244.2.0")


def test_any_datagram_from_a_peer_marks_it_up_again(dp):
    silence_peer(dp)
    process_datagrams(dp, [(ip_int(UNDERLAY_B), vxlan_datagram(from_b()))])
    assert dp.peer_is_up(0)


# --- the node as a host: echo answered in the fast path -------------------------------------

def assert_icmp_valid(pkt):
    fresh = pkt.copy()
    del fresh[IP].chksum, fresh[ICMP].chksum
    fresh = Ether(bytes(fresh))
    assert (pkt[IP].chksum, pkt[ICMP].chksum) == (fresh[IP].chksum, fresh[ICMP].chksum)


def test_a_ping_to_the_gateway_is_answered_in_the_fast_path(dp):
    request = routed(ICMP(id=9, seq=3) / (b"p" * 56), dst="10.244.1.1", ttl=5)
    (port, frame), = process(dp, [(0, bytes(request))])
    reply = Ether(frame)
    assert port == 0 and (reply.src, reply.dst) == (GW_MAC, A_MAC)
    assert (reply[IP].src, reply[IP].dst, reply[IP].ttl) == ("10.244.1.1", A_IP, 64)
    assert (reply[ICMP].type, reply[ICMP].id, reply[ICMP].seq) == (0, 9, 3)
    assert bytes(reply[ICMP].payload) == b"p" * 56
    assert_icmp_valid(reply)
    assert counters(dp) == {"rx_frames": 1, "forwarded_routed": 1, "echo_answered": 1}


def test_a_vrouter_peer_gets_a_one_way_heartbeat_taken_in_without_an_answer():
    node_a, node_b = make_dp(), Dataplane(make_dp().cluster, "node-b", clock=still_clock())
    (keepalive,) = keepalives(node_a)
    heartbeat = Ether(bytes(VXLAN(keepalive.data).payload))
    assert (heartbeat[IP].src, heartbeat[IP].dst, heartbeat[ICMP].type) == \
        ("10.244.1.0", "10.244.2.0", 0)   # an echo reply: nothing to answer
    assert_icmp_valid(heartbeat)
    silence_peer(node_b)
    assert process_datagrams(node_b, [(ip_int(UNDERLAY_A), keepalive.data)]) == []
    assert node_b.peer_is_up(0) and node_b.counter_dict()["to_node"] == 1
    assert node_b.counter_dict()["echo_answered"] == node_b.counter_dict()["slow_to_gateway"] == 0


def test_a_kernel_peer_gets_an_echo_request_and_its_answer_marks_it_up():
    """A kernel VTEP sends no keepalives of its own: its answer is what is heard from it
    (here node-b's fast path answers as the kernel would)."""
    kernel_b = open("configs/demo.yaml").read().replace(
        "podCIDR: 10.244.2.0/24", "podCIDR: 10.244.2.0/24, kernel: true")
    assert kernel_b != open("configs/demo.yaml").read()
    node_a = Dataplane(config.parse(kernel_b, "demo.yaml", check_host=False), "node-a",
                       clock=still_clock())
    node_b = Dataplane(make_dp().cluster, "node-b", clock=still_clock())
    (keepalive,) = keepalives(node_a)
    assert Ether(bytes(VXLAN(keepalive.data).payload))[ICMP].type == 8
    (answer,) = process_datagrams(node_b, [(ip_int(UNDERLAY_A), keepalive.data)], detail=True)
    reply = Ether(bytes(VXLAN(answer.data).payload))
    assert answer.target == OVERLAY_TARGET and reply[ICMP].type == 0
    assert (reply[IP].src, reply[IP].dst) == ("10.244.2.0", "10.244.1.0")
    assert_icmp_valid(reply)
    silence_peer(node_a)
    assert process_datagrams(node_a, [(ip_int(UNDERLAY_B), answer.data)]) == []
    assert node_a.peer_is_up(0) and node_a.counter_dict()["to_node"] == 1
    assert node_b.counter_dict()["echo_answered"] == 1
    assert node_a.counter_dict()["slow_to_gateway"] == node_b.counter_dict()["slow_to_gateway"] == 0


def test_an_echo_with_ip_options_is_left_to_the_slow_path(dp):
    request = routed(ICMP(id=1, seq=1), dst="10.244.1.1", options=[IPOption_RR()])
    (port, frame), = process(dp, [(0, bytes(request))])
    assert port == 0 and Ether(frame)[ICMP].type == 0
    assert counters(dp)["slow_to_gateway"] == 1 and "echo_answered" not in counters(dp)


def test_all_fragments_of_a_datagram_take_the_same_send_socket(dp):
    """The node sends with one sendmmsg per socket: fragments on different sockets could
    overtake each other, and Service NAT translates later fragments only after the first."""
    from scapy.layers.inet import fragment
    for sport in range(2000, 2020):
        datagram = IP(src=A_IP, dst=REMOTE_IP, id=sport) / UDP(sport=sport, dport=53) / (b"f" * 3000)
        frames = [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / f)) for f in fragment(datagram, 1400)]
        sockets = {e.socket for e in process(dp, frames, detail=True)}
        assert len(sockets) == 1
