"""Super-frames: virtio-net headers, segmentation for the overlay and coalescing back, partial
checksums through routing and NAT, with scapy as the oracle."""
import ipaddress
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fastpath.layout import (
    F_ROWS, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, O_KIND, O_LEN, O_SEGMENT,
    OUT_OVERLAY, VNET_F_NEEDS_CSUM,
)
from tests.fastpath.test_services import SERVICE, VIP
from tests.fastpath.test_services import assert_checksums_valid as assert_valid_checksums
from tests.harness import OVERLAY_TARGET, process_datagrams, process_tap, still_clock
from vrouter.model import config
from vrouter.node.dataplane import VNET_HEADER, Dataplane

A_IP, A_MAC = "10.244.1.2", "0a:58:0a:f4:01:02"      # web-1, node-a port 0
B_IP, B_MAC = "10.244.1.3", "0a:58:0a:f4:01:03"      # web-2, node-a port 1
REMOTE_IP = "10.244.2.3"                              # web-3, node-b port 1
GW_A, GW_B = "02:76:0a:f4:01:01", "02:76:0a:f4:02:01"
UNDERLAY_A = int(ipaddress.IPv4Address("127.0.0.11"))
POD_MTU = 1450
TCP_OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))]


def cluster(extra=""):
    return config.parse(open("configs/demo.yaml").read() + extra, "demo.yaml", check_host=False)


@pytest.fixture
def node_a():
    return Dataplane(cluster(), "node-a", clock=still_clock())


@pytest.fixture
def node_b():
    return Dataplane(cluster(), "node-b", clock=still_clock())


def fold(x):
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def pseudo(src, dst, proto, length):
    s, d = int(ipaddress.IPv4Address(src)), int(ipaddress.IPv4Address(dst))
    return fold((s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF) + proto + length)


def as_pod_kernel_sends(pkt, gso_size=0, gso_type=GSO_TCPV4, hdr_len=None):
    """What a TAP read returns for `pkt` sent by a pod's kernel with offloads: the L4 checksum
    field holds only the pseudo-header sum (NEEDS_CSUM), and a super-frame has a GSO type."""
    raw = bytearray(bytes(pkt))
    ip = IP(raw[14:])
    proto, ihl = ip.proto, ip.ihl * 4
    field = 14 + ihl + (16 if proto == 6 else 6)
    struct.pack_into("!H", raw, field, pseudo(ip.src, ip.dst, proto, ip.len - ihl))
    l4_len = (raw[14 + ihl + 12] >> 4) * 4 if proto == 6 else 8
    header = VNET_HEADER.pack(VNET_F_NEEDS_CSUM, gso_type if gso_size else GSO_NONE,
                              (14 + ihl + l4_len) if hdr_len is None else hdr_len, gso_size,
                              14 + ihl, field - 14 - ihl)
    return header + bytes(raw)


def superframe(payload, mss, dst=REMOTE_IP, flags="PA", ip_id=100, options=TCP_OPTIONS, df=True,
               seq=1000, tos=0, src=A_IP, src_mac=A_MAC, dst_mac=GW_A):
    pkt = (Ether(src=src_mac, dst=dst_mac)
           / IP(src=src, dst=dst, id=ip_id, flags="DF" if df else 0, tos=tos, ttl=64)
           / TCP(sport=40000, dport=5201, seq=seq, ack=777, flags=flags, options=options)
           / payload)
    return pkt, as_pod_kernel_sends(pkt, mss)


def datagrams_to(emitted, peer=0):
    return [e.data for e in emitted if e.target == OVERLAY_TARGET + peer]


def inner(datagram):
    return Ether(bytes(VXLAN(datagram).payload))


def complete(frame):
    """The frame with its partial checksum completed, as a kernel would before using it."""
    pkt = Ether(frame)
    layer = TCP if pkt.haslayer(TCP) else UDP
    del pkt[layer].chksum
    return Ether(bytes(pkt))


# --- segmentation ------------------------------------------------------------------------------

def test_random_tcp_superframes_segment_into_valid_packets_that_reassemble(node_a):
    rng = random.Random(9)
    for n in range(60):
        mss = rng.choice([536, 1000, 1386, 1398])
        size = rng.randrange(mss + 1, 65000 - 100)
        payload = bytes(rng.getrandbits(8) for _ in range(size))
        flags = rng.choice(["A", "PA", "FPA", "FA", "PAC", "PAE", "CE"])
        options = rng.choice([[], TCP_OPTIONS, [("MSS", 1400), ("NOP", None), ("WScale", 7),
                                                ("NOP", None)]])
        ip_id = rng.randrange(65536)
        seq = rng.getrandbits(32)
        sent, raw = superframe(payload, mss, flags=flags, options=options, ip_id=ip_id, seq=seq,
                               df=rng.random() < 0.8, tos=rng.choice([0, 0x10, 0x02]))
        sent = Ether(bytes(sent))   # as parsed: options padded
        segments = [inner(d) for d in datagrams_to(process_tap(node_a, 0, [raw]))]
        count = -(-size // mss)
        assert len(segments) == count, (n, size, mss)
        for k, seg in enumerate(segments):
            assert_valid_checksums(seg)
            assert seg[IP].len <= POD_MTU and seg[IP].ttl == 63 and seg[IP].tos == sent[IP].tos
            assert seg[IP].id == (ip_id + k) & 0xFFFF and seg[IP].flags == sent[IP].flags
            assert seg[TCP].seq == (seq + k * mss) & 0xFFFFFFFF
            assert seg[TCP].options == sent[TCP].options and seg[TCP].ack == 777
            want = sent[TCP].flags
            if k > 0:
                want &= ~0x80          # CWR only on the first
            if k < count - 1:
                want &= ~0x09          # FIN and PSH only on the last
            assert int(seg[TCP].flags) == int(want), (n, k)
            assert (seg.src, seg.dst) == ("0e:76:0a:f4:01:00", "0e:76:0a:f4:02:00")
        assert b"".join(bytes(s[TCP].payload) for s in segments) == payload


def test_a_superframe_of_64_kib_goes_out_as_gso_trains_of_equal_datagrams(node_a):
    payload = bytes(range(256)) * 255          # 65280 bytes: about the largest a TAP hands over
    _sent, raw = superframe(payload, 1386)
    datagrams = datagrams_to(process_tap(node_a, 0, [raw]))
    sizes = [len(d) for d in datagrams]
    assert len(sizes) == 48 and set(sizes[:-1]) == {8 + 14 + 20 + 32 + 1386}
    # two sends: as many datagrams as fit the 64 KiB a UDP GSO send may carry, then the rest
    rows = node_a.out.rows[:node_a.out.fill[F_ROWS]]
    trains = rows[rows[:, O_KIND] == OUT_OVERLAY]
    assert trains[:, O_SEGMENT].tolist() == [1460, 1460]
    assert trains[:, O_LEN].tolist() == [44 * 1460, sum(sizes[44:])]


def test_udp_superframes_segment_into_datagrams(node_a):
    rng = random.Random(4)
    for _ in range(20):
        mss = rng.choice([500, 1200, 1422])
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(mss + 1, 20000)))
        sent = (Ether(src=A_MAC, dst=GW_A) / IP(src=A_IP, dst=REMOTE_IP, id=7)
                / UDP(sport=7000, dport=7001) / payload)
        raw = as_pod_kernel_sends(sent, mss, GSO_UDP_L4)
        segments = [inner(d) for d in datagrams_to(process_tap(node_a, 0, [raw]))]
        assert len(segments) == -(-len(payload) // mss)
        for k, seg in enumerate(segments):
            assert_valid_checksums(seg)
            assert seg[UDP].len == len(seg[UDP].payload) + 8 and seg[IP].id == 7 + k
            assert (seg[UDP].sport, seg[UDP].dport) == (7000, 7001)
        assert b"".join(bytes(s[UDP].payload) for s in segments) == payload


def test_mtu_checks_use_the_segment_size_not_the_superframe_length(node_a):
    _sent, fits = superframe(b"x" * 8000, POD_MTU - 20 - 32)           # full segment = pod MTU
    assert len(datagrams_to(process_tap(node_a, 0, [fits]))) == 6
    _sent, too_big = superframe(b"x" * 8000, POD_MTU - 20 - 32 + 1)    # one byte more
    ((port, frame),) = [(e.target, e.data) for e in process_tap(node_a, 0, [too_big])]
    error = Ether(frame)
    assert port == 0 and (error[ICMP].type, error[ICMP].code, error[ICMP].nexthopmtu) == (3, 4, 1450)


def test_a_superframe_is_bridged_and_routed_on_the_node_in_one_write(node_a):
    payload = bytes(range(256)) * 200
    bridged, raw = superframe(payload, 1386, dst=B_IP, dst_mac=B_MAC)
    ((target, frame, vnet, _s),) = process_tap(node_a, 0, [raw])
    assert target == 1 and vnet == raw[:10] and frame == raw[10:]     # untouched, header kept
    _routed, raw = superframe(payload, 1386, dst=B_IP)                 # via the gateway
    ((target, frame, vnet, _s),) = process_tap(node_a, 0, [raw])
    assert target == 1 and vnet == raw[:10]
    got = Ether(frame)
    assert (got.src, got.dst, got[IP].ttl) == (GW_A, B_MAC, 63) and len(frame) == len(raw) - 10
    assert_valid_checksums(complete(frame))                    # IPv4 updated, TCP still partial
    assert got[TCP].chksum == pseudo(A_IP, B_IP, 6, got[IP].len - 20)


def test_service_nat_keeps_a_partial_checksum_partial_and_consistent():
    dp = Dataplane(cluster(SERVICE), "node-a", clock=still_clock())
    seen = set()
    for sport in range(20000, 20040):
        pkt = (Ether(src=A_MAC, dst=GW_A) / IP(src=A_IP, dst=VIP)
               / TCP(sport=sport, dport=80, flags="S") / b"hello")
        ((target, frame, vnet, _s),) = process_tap(dp, 0, [as_pod_kernel_sends(pkt)])
        if target >= OVERLAY_TARGET:      # to node-b: completed for the wire
            got = inner(frame)
            assert_valid_checksums(got)
        else:                             # to a local pod: still partial, for the new addresses
            assert VNET_HEADER.unpack(vnet)[0] == VNET_F_NEEDS_CSUM
            got = Ether(frame)
            assert got[TCP].chksum == pseudo(got[IP].src, got[IP].dst, 6, got[IP].len - 20)
            assert_valid_checksums(complete(frame))
        assert got[TCP].dport == 8080
        seen.add(got[IP].dst)
    assert seen == {A_IP, B_IP, REMOTE_IP}


def test_frames_for_the_slow_path_get_their_partial_checksum_completed(node_a):
    pkt = (Ether(src=A_MAC, dst=GW_A) / IP(src=A_IP, dst=REMOTE_IP, ttl=1)
           / TCP(sport=1, dport=2, flags="S") / b"quote me")
    ((port, frame, _v, _s),) = process_tap(node_a, 0, [as_pod_kernel_sends(pkt)])
    quoted = Ether(frame)[IPerror]
    assert port == 0 and Ether(frame)[ICMP].type == 11
    fresh = IP(bytes(quoted))
    del fresh[TCP].chksum
    assert IP(bytes(fresh))[TCP].chksum == quoted[TCPerror].chksum
    assert node_a.counter_dict()["csum_partial_completed"] == 1


# --- coalescing ----------------------------------------------------------------------------------

def overlay_train(node_a, payload, mss, **kw):
    """The datagrams node-a sends for one super-frame of a pod: one GSO train."""
    _sent, raw = superframe(payload, mss, **kw)
    return datagrams_to(process_tap(node_a, 0, [raw]))


def receive_train(node_b, datagrams):
    """node-b reading the datagrams as one UDP GRO train (all the size of the first)."""
    return process_datagrams(node_b, [(UNDERLAY_A, b"".join(datagrams))],
                                     segment=len(datagrams[0]), detail=True)


def test_coalescing_rebuilds_what_was_segmented(node_a, node_b):
    rng = random.Random(2)
    for _ in range(25):
        mss = rng.choice([536, 1386])
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(mss * 2, 40000)))
        flags = rng.choice(["A", "PA", "FPA"])
        datagrams = overlay_train(node_a, payload, mss, flags=flags)
        ((target, frame, vnet, _s),) = receive_train(node_b, datagrams)
        got = Ether(frame)
        assert target == 1 and bytes(got[TCP].payload) == payload
        assert got[TCP].flags == flags and got[TCP].seq == 1000 and got[IP].ttl == 62
        assert VNET_HEADER.unpack(vnet) == (VNET_F_NEEDS_CSUM, GSO_TCPV4, 14 + 20 + 32, mss, 34, 16)
        assert_valid_checksums(complete(frame))
        assert IP(bytes(got[IP])).chksum == got[IP].chksum
        assert node_b.counter_dict()["gro_coalesced"] == len(datagrams) - 1
        node_b.counters[:] = 0


def test_single_datagrams_from_a_kernel_peer_are_delivered_one_by_one(node_a, node_b):
    datagrams = overlay_train(node_a, b"k" * 5000, 1386)
    out = process_datagrams(node_b, [(UNDERLAY_A, d) for d in datagrams], detail=True)
    assert len(out) == len(datagrams) and all(e.vnet == bytes(10) for e in out)


def _mutate(datagram, change):
    """The datagram with its inner packet changed (lengths and checksums made right again)."""
    pkt = inner(datagram)
    change(pkt)
    del pkt[IP].chksum, pkt[IP].len, pkt[TCP].chksum
    return datagram[:8] + bytes(pkt)


def _set(layer, field, value):
    return lambda pkt: setattr(pkt[layer], field, value)


def _shorter(pkt):
    pkt[TCP].remove_payload()
    pkt[TCP].add_payload(b"\0" * 1385)


M = 1386
# rule -> payload of the first super-frame: segment 3 of 6 breaks the rule. Most rules keep it
# out; PSH, FIN and a short segment may be the *last* to join, and end the super-frame.
RULE_BREAKERS = {
    "other flow": (_set(TCP, "sport", 40001), 3 * M),
    "gap in sequence": (lambda p: setattr(p[TCP], "seq", p[TCP].seq + 1), 3 * M),
    "other TOS": (_set(IP, "tos", 0x10), 3 * M),
    "other TTL": (_set(IP, "ttl", 20), 3 * M),
    "DF differs": (_set(IP, "flags", 0), 3 * M),
    "other TCP options": (_set(TCP, "options", [("NOP", None), ("NOP", None),
                                                ("Timestamp", (9, 9))]), 3 * M),
    "other ACK": (_set(TCP, "ack", 778), 3 * M),
    "SYN": (_set(TCP, "flags", "SA"), 3 * M),
    "RST": (_set(TCP, "flags", "RA"), 3 * M),
    "URG": (_set(TCP, "flags", "UA"), 3 * M),
    "CWR after the first": (_set(TCP, "flags", "CA"), 3 * M),
    "PSH in the middle": (_set(TCP, "flags", "PA"), 4 * M),
    "FIN in the middle": (_set(TCP, "flags", "FA"), 4 * M),
    "shorter segment in the middle": (_shorter, 3 * M + 1385),
}


@pytest.mark.parametrize("rule", sorted(RULE_BREAKERS))
def test_coalescing_refuses_every_rule_violation(node_a, node_b, rule):
    """Six adjacent segments of one flow, the fourth breaking a rule: the first super-frame
    ends where the rule says, and nothing after the break joins it."""
    change, first_payload = RULE_BREAKERS[rule]
    datagrams = overlay_train(node_a, bytes(range(256)) * 30, M, flags="A")
    assert len(datagrams) == 6
    datagrams[3] = _mutate(datagrams[3], change)
    out = process_datagrams(node_b, [(UNDERLAY_A, datagrams)], detail=True)
    payloads = [len(Ether(e.data)[TCP].payload) for e in out if e.target == 1]
    assert payloads[0] == first_payload, (rule, payloads)
    assert len(payloads) >= 2 and sum(payloads) == 7680 - (1 if rule.startswith("shorter") else 0)


def test_a_segment_with_a_bad_checksum_is_not_merged(node_a, node_b):
    datagrams = overlay_train(node_a, b"c" * 6000, 1386, flags="A")
    broken = bytearray(datagrams[2])
    broken[-1] ^= 0xFF                     # payload changed, checksum not
    datagrams[2] = bytes(broken)
    out = process_datagrams(node_b, [(UNDERLAY_A, datagrams)], detail=True)
    assert [len(Ether(e.data)[TCP].payload) for e in out][:2] == [2 * 1386, 1386]
    assert node_b.counter_dict()["gro_bad_checksum"] == 1


# --- checksums a Linux VXLAN peer leaves partial -----------------------------------------------

def kernel_peer_b():
    """node-b of a cluster whose node-a is served by a Linux VXLAN device."""
    text = open("configs/demo.yaml").read().replace(
        "{name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}",
        "{name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24, kernel: true}")
    return Dataplane(config.parse(text, "demo.yaml", check_host=False), "node-b", clock=still_clock())


def test_partial_inner_checksums_from_a_vrouter_peer_are_never_repaired(node_b):
    """A vrouter peer always sends complete checksums: one that looks partial is corruption."""
    pkt = (Ether(src="0e:76:0a:f4:01:00", dst="0e:76:0a:f4:02:00")
           / IP(src=A_IP, dst=REMOTE_IP, ttl=63) / UDP(sport=1, dport=53) / b"from vrouter")
    partial = as_pod_kernel_sends(pkt)[10:]
    ((target, frame),) = process_datagrams(node_b, 
        [(UNDERLAY_A, bytes(VXLAN(vni=1, flags=0x08) / Ether(partial)))])
    assert target == 1 and Ether(frame)[UDP].chksum == Ether(partial)[UDP].chksum
    assert node_b.counter_dict()["csum_partial_completed"] == 0


def test_partial_inner_checksums_from_a_kernel_peer_are_completed():
    node_b = kernel_peer_b()
    for proto in (TCP(sport=1, dport=5201, flags="S"), UDP(sport=1, dport=53)):
        pkt = (Ether(src="0e:76:0a:f4:01:00", dst="0e:76:0a:f4:02:00")
               / IP(src=A_IP, dst=REMOTE_IP, ttl=63) / proto / b"from a kernel vtep")
        partial = as_pod_kernel_sends(pkt)[10:]           # the field holds the pseudo sum only
        datagram = bytes(VXLAN(vni=1, flags=0x08) / Ether(partial))
        ((target, frame),) = process_datagrams(node_b, [(UNDERLAY_A, datagram)])
        assert target == 1
        assert_valid_checksums(Ether(frame))
    assert node_b.counter_dict()["csum_partial_completed"] == 2
    # a complete checksum is left alone, even when it happens to be small
    pkt = (Ether(src="0e:76:0a:f4:01:00", dst="0e:76:0a:f4:02:00")
           / IP(src=A_IP, dst=REMOTE_IP) / UDP(sport=1, dport=53) / b"done")
    ((_t, frame),) = process_datagrams(node_b, [(UNDERLAY_A, bytes(VXLAN(vni=1, flags=0x08) / pkt))])
    assert Ether(frame)[UDP].chksum == Ether(bytes(pkt))[UDP].chksum
    assert node_b.counter_dict()["csum_partial_completed"] == 2


# --- inconsistent virtio-net headers ---------------------------------------------------------------

def _header(raw, **fields):
    names = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
    values = dict(zip(names, VNET_HEADER.unpack(raw[:10])))
    values.update(fields)
    return VNET_HEADER.pack(*(values[n] for n in names)) + raw[10:]


_TCP_SUPER = superframe(b"v" * 5000, 1386)[1]
_UDP_SMALL = as_pod_kernel_sends(Ether(src=A_MAC, dst=GW_A) / IP(src=A_IP, dst=REMOTE_IP)
                                 / UDP(sport=1, dport=2) / b"u")
_ARP = bytes(10) + bytes(Ether(src=A_MAC, dst="ff:ff:ff:ff:ff:ff")
                         / ARP(op=1, hwsrc=A_MAC, psrc=A_IP, pdst="10.244.1.1"))
BAD_HEADERS = {
    "gso type without gso size": _header(_TCP_SUPER, gso_size=0),
    "csum_start beyond the frame": _header(_UDP_SMALL, csum_start=5000),
    "csum_offset beyond the frame": _header(_UDP_SMALL, csum_offset=400),
    "csum_start not at the L4 header": _header(_UDP_SMALL, csum_start=30),
    "csum_offset not the checksum field": _header(_UDP_SMALL, csum_offset=4),
    "gso size larger than the payload": _header(_TCP_SUPER, gso_size=6000),
    "header length longer than the frame": _header(_TCP_SUPER, hdr_len=9000),
    "header length shorter than the headers": _header(_TCP_SUPER, hdr_len=40),
    "TCP segmentation of a UDP packet": _header(_UDP_SMALL, gso_type=GSO_TCPV4, gso_size=1),
    "UDP segmentation of a TCP packet": _header(_TCP_SUPER, gso_type=GSO_UDP_L4),
    "UFO": _header(_TCP_SUPER, gso_type=GSO_UDP),
    "TCPv6 on IPv4": _header(_TCP_SUPER, gso_type=GSO_TCPV6),
    "gso without NEEDS_CSUM": _header(_TCP_SUPER, flags=0),
    "unknown flag bits": _header(_UDP_SMALL, flags=0x81),
    "NEEDS_CSUM on ARP": _header(_ARP, flags=VNET_F_NEEDS_CSUM, csum_start=14, csum_offset=6),
    "super-frame longer than its IPv4 length": _TCP_SUPER + b"trailing",
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_an_inconsistent_vnet_header_is_dropped_and_counted(node_a, case):
    assert process_tap(node_a, 0, [BAD_HEADERS[case]]) == []
    counters = node_a.counter_dict()
    assert counters["drop_bad_vnet_header"] == 1 and counters["rx_frames"] == 1
    # and the node goes on: a good super-frame right after it is forwarded
    assert len(datagrams_to(process_tap(node_a, 0, [_TCP_SUPER]))) == 4


_BIG_TCP = superframe(b"g" * 60000, 1386)[1]


@pytest.mark.parametrize("gso_size", [1, 7, 47])
def test_a_segment_size_no_kernel_sends_is_refused_before_it_costs_rows(node_a, gso_size):
    assert process_tap(node_a, 0, [_header(_BIG_TCP, gso_size=gso_size)]) == []
    counters = node_a.counter_dict()
    assert counters["drop_bad_gso_size"] == 1 and counters["rx_frames"] == 1
    assert len(datagrams_to(process_tap(node_a, 0, [_TCP_SUPER]))) == 4


def test_a_batch_of_the_smallest_segments_fits_the_output_rows(node_a):
    """64 super-frames of 48-byte segments: each a thousand datagrams. The output batch
    reserves rows per GSO train, so forward() stops early and goes on instead of overrunning."""
    frame = _header(superframe(b"s" * (48 * 1000), 48)[1], gso_size=48)
    segments = datagrams_to(process_tap(node_a, 0, [frame] * 64))
    assert len(segments) == 64 * 1000
    assert node_a.counter_dict()["drop_no_room"] == 0
