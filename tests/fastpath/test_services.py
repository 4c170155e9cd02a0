"""Services in the fast path: Maglev, connection tracking, NAT (scapy is the checksum oracle)."""
import random

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from fastpath import conntrack as nat
from tests.harness import OVERLAY_TARGET, process, process_datagrams, still_clock
from vrouter.model import config
from vrouter.node.dataplane import Dataplane
from vrouter.node.servicetables import maglev_row
from vrouter.node.tables import ip_to_int

GW_MAC = "02:76:0a:f4:01:01"
A_IP, A_MAC = "10.244.1.2", "0a:58:0a:f4:01:02"    # web-1 (node-a, port 0)
B_IP, B_MAC = "10.244.1.3", "0a:58:0a:f4:01:03"    # web-2 (node-a, port 1)
REMOTE = "10.244.2.3"                                # web-3 (node-b)
VIP = "10.96.0.100"

SERVICE = """
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.100
  selector: {app: web}
  ports: [{name: tcp, port: 80, targetPort: 8080}, {name: udp, port: 53, protocol: UDP, targetPort: 5353}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: 10.96.0.11
  selector: {app: nothing}
  ports: [{name: t, port: 80}, {name: u, port: 80, protocol: UDP}]
"""


def make_dp(extra=SERVICE, **replace):
    text = open("configs/demo.yaml").read() + extra
    for old, new in replace.items():
        text = text.replace(old, new)
    return Dataplane(config.parse(text, "demo.yaml", check_host=False), "node-a",
                     clock=still_clock())


@pytest.fixture
def dp():
    return make_dp()


def to_vip(sport, proto="tcp", payload=b"hello", src=A_IP, src_mac=A_MAC, dport=None):
    l4 = (TCP(sport=sport, dport=dport or 80, flags="S") if proto == "tcp"
          else UDP(sport=sport, dport=dport or 53))
    return Ether(src=src_mac, dst=GW_MAC) / IP(src=src, dst=VIP) / l4 / payload


def inner(target, frame):
    """The pod-level frame of an output: decapsulated when it goes over the overlay."""
    if target >= OVERLAY_TARGET:
        return Ether(bytes(VXLAN(frame).payload))
    return Ether(frame)


def first_flow(dp, sports, wanted, proto="tcp"):
    """Open flows from A to the VIP until `wanted(target, pkt)` holds for the translated packet;
    returns (sport, target, pkt). Fails the test when no source port in `sports` gives one."""
    for sport in sports:
        ((target, frame),) = process(dp, [(0, bytes(to_vip(sport, proto)))])
        pkt = inner(target, frame)
        if wanted(target, pkt):
            return sport, target, pkt
    pytest.fail(f"no flow from source ports {sports} satisfied {wanted.__doc__ or wanted}")


def assert_checksums_valid(pkt):
    fresh = pkt.copy()
    del fresh[IP].chksum
    layer = TCP if pkt.haslayer(TCP) else UDP
    del fresh[layer].chksum
    fresh = Ether(bytes(fresh))
    assert pkt[IP].chksum == fresh[IP].chksum
    assert pkt[layer].chksum == fresh[layer].chksum


def test_clusterip_connections_reach_every_endpoint_and_replies_come_back_from_the_vip(dp):
    seen = set()
    for sport in range(20000, 20060):
        ((target, frame),) = process(dp, [(0, bytes(to_vip(sport)))])
        pkt = inner(target, frame)
        hairpin = pkt[IP].dst == A_IP   # the client is a backend too: SNAT (see below)
        assert pkt[TCP].dport == 8080 and pkt[IP].src == ("10.244.1.1" if hairpin else A_IP)
        assert_checksums_valid(pkt)
        seen.add(pkt[IP].dst)
    assert seen == {A_IP, B_IP, REMOTE}   # every endpoint, local and remote
    assert dp.counter_dict()["svc_new_flows"] == 60


def test_reply_from_a_local_backend_is_reverse_translated(dp):
    sport, _target, _pkt = first_flow(dp, range(30000, 30100), lambda t, p: p[IP].dst == B_IP)
    reply = Ether(src=B_MAC, dst=A_MAC) / IP(src=B_IP, dst=A_IP) / TCP(sport=8080, dport=sport,
                                                                        flags="SA") / b"x"
    ((target, frame),) = process(dp, [(1, bytes(reply))])
    pkt = Ether(frame)
    assert target == 0
    assert (pkt[IP].src, pkt[TCP].sport, pkt[IP].dst, pkt[TCP].dport) == (VIP, 80, A_IP, sport)
    assert_checksums_valid(pkt)


def test_reply_from_a_remote_backend_over_the_overlay_is_reverse_translated(dp):
    sport, _target, _pkt = first_flow(dp, range(31000, 31100),
                                      lambda t, p: t >= OVERLAY_TARGET, "udp")
    reply = (Ether(src="0e:76:0a:f4:02:00", dst="0e:76:0a:f4:01:00") /
             IP(src=REMOTE, dst=A_IP, ttl=63) / UDP(sport=5353, dport=sport) / b"answer")
    ((target, frame),) = process_datagrams(dp, [(ip_to_int("127.0.0.12"),
                                                 bytes(VXLAN(vni=1, flags=0x08) / reply))])
    pkt = Ether(frame)
    assert target == 0
    assert (pkt[IP].src, pkt[UDP].sport, pkt[UDP].dport) == (VIP, 53, sport)
    assert bytes(pkt[UDP].payload) == b"answer"
    assert_checksums_valid(pkt)


def test_nat_checksums_match_scapy_over_many_random_flows():
    rng = random.Random(11)
    dp = make_dp()
    for _ in range(300):
        proto = rng.choice(["tcp", "udp"])
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        frame = to_vip(rng.randrange(1, 65536), proto, payload)
        if proto == "udp" and rng.random() < 0.2:
            frame[UDP].chksum = 0   # "no checksum" must stay 0
            frame = Ether(bytes(frame))
        out = process(dp, [(0, bytes(frame))])
        ((target, data),) = out
        pkt = inner(target, data)
        if proto == "udp" and frame[UDP].chksum == 0:
            assert pkt[UDP].chksum == 0
        else:
            assert_checksums_valid(pkt)
        assert bytes(pkt[IP].payload.payload) == payload


def test_hairpin_is_snatted_to_the_gateway_and_comes_back(dp):
    # web-1 reaches the VIP until Maglev sends it to itself
    sport, target, pkt = first_flow(dp, range(40000, 40200), lambda t, p: p[IP].dst == A_IP)
    assert target == 0 and pkt[IP].src == "10.244.1.1"   # SNAT: it would answer itself otherwise
    reply = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="10.244.1.1") / TCP(
        sport=8080, dport=pkt[TCP].sport, flags="SA")
    ((target, frame),) = process(dp, [(0, bytes(reply))])
    back = Ether(frame)
    assert target == 0
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (VIP, 80, A_IP, sport)


def test_no_endpoints_rejects_at_once(dp):
    frame = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="10.96.0.11") / TCP(sport=5, dport=80,
                                                                                 flags="S")
    ((target, out),) = process(dp, [(0, bytes(frame))])
    rst = Ether(out)
    assert target == 0 and rst[IP].src == "10.96.0.11" and rst[TCP].flags == "RA"
    frame = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="10.96.0.11") / UDP(sport=5, dport=80)
    ((target, out),) = process(dp, [(0, bytes(frame))])
    assert Ether(out)[ICMP].type == 3 and Ether(out)[ICMP].code == 3


def test_client_ip_affinity_pins_every_connection_of_a_client():
    dp = make_dp(extra=SERVICE.replace("  selector: {app: web}\n  ports: [{name: tcp",
                                       "  selector: {app: web}\n  sessionAffinity: ClientIP\n"
                                       "  ports: [{name: tcp", 1))
    backends = {inner(*process(dp, [(0, bytes(to_vip(sport)))])[0])[IP].dst
                for sport in range(1000, 1050)}
    assert len(backends) == 1


def test_large_udp_payload_in_fragments_is_translated_whole(dp):
    from scapy.layers.inet import fragment
    datagram = IP(src=A_IP, dst=VIP, id=77) / UDP(sport=4444, dport=53) / (b"z" * 2000)
    frames = [bytes(Ether(src=A_MAC, dst=GW_MAC) / f) for f in fragment(datagram, fragsize=1400)]
    out = process(dp, [(0, f) for f in frames])
    pkts = [inner(t, f)[IP] for t, f in out]
    assert len(pkts) == 2 and len({p.dst for p in pkts}) == 1 and pkts[0].dst != VIP
    from scapy.layers.inet import defragment
    (whole,) = defragment([IP(bytes(p)) for p in pkts])
    whole = IP(bytes(whole))
    assert whole[UDP].dport == 5353 and bytes(whole[UDP].payload) == b"z" * 2000
    del whole[UDP].chksum
    assert IP(bytes(whole))[UDP].chksum == IP(bytes(defragment([IP(bytes(p)) for p in pkts])[0]))[UDP].chksum


# --- Maglev ------------------------------------------------------------------------------------

def test_maglev_spreads_evenly_and_removal_moves_about_one_nth():
    names = [f"default/web-{k}:8080" for k in range(10)]
    before = maglev_row(names, 16381)
    counts = np.bincount(before, minlength=10)
    assert counts.min() > 16381 / 10 * 0.9 and counts.max() < 16381 / 10 * 1.1
    after = maglev_row(names[:4] + names[5:], 16381)
    # map old indices to names to compare the same backends
    old = np.array(names)[before]
    new = np.array(names[:4] + names[5:])[after]
    moved = np.count_nonzero(old != new)
    owned_by_removed = np.count_nonzero(old == names[4])
    assert moved >= owned_by_removed
    assert moved <= owned_by_removed * 1.5 + 16381 * 0.02   # little beyond the removed slots


def test_a_syn_on_a_closed_connections_tuple_starts_afresh():
    dp = make_dp()
    sport, _target, _pkt = first_flow(dp, range(51000, 51100), lambda t, p: t == 1)
    synack = Ether(src=B_MAC, dst=GW_MAC) / IP(src=B_IP, dst=A_IP) / TCP(sport=8080, dport=sport,
                                                                          flags="SA")
    process(dp, [(1, bytes(synack))])
    rst = to_vip(sport)
    rst[TCP].flags = "R"
    process(dp, [(0, bytes(rst))])   # closed: both entries linger for T_TCP_CLOSED
    # a direct connection to the backend on the same 4-tuple: its SYN-ACK is not the old reply
    direct = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=B_IP) / TCP(sport=sport, dport=8080,
                                                                          flags="S")
    ((target, frame),) = process(dp, [(0, bytes(direct))])
    assert target == 1 and Ether(frame)[IP].dst == B_IP
    ((target, frame),) = process(dp, [(1, bytes(synack))])
    assert target == 0 and Ether(frame)[IP].src == B_IP and Ether(frame)[TCP].sport == 8080
    # and a new SYN to the service on the old tuple is a new connection (a new Maglev choice)
    new_flows = dp.counter_dict()["svc_new_flows"]
    process(dp, [(0, bytes(to_vip(sport)))])
    assert dp.counter_dict()["svc_new_flows"] == new_flows + 1
