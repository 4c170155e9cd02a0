"""The outside network (NodePorts, load-balancer addresses, routing to and from outside hosts) and
ICMP errors about translated connections, through the real data plane (scapy as the oracle)."""
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import ARP, Ether

from tests.fastpath.test_services import (
    A_IP, A_MAC, B_IP, B_MAC, GW_MAC, REMOTE, VIP, assert_checksums_valid, first_flow, inner,
    make_dp, to_vip,
)
from tests.harness import OVERLAY_TARGET, process, still_clock
from vrouter.model import config
from vrouter.node.dataplane import Dataplane

UPLINK = 110                                 # pods have ports 0..109 (maxPodsPerNode), then the uplink
NODE_IP, NODE_MAC = "172.18.0.2", "02:76:ac:12:00:02"
OUT_IP, OUT_MAC = "172.18.0.1", "02:76:ac:12:00:01"     # the outside host (preset neighbour)
LB_IP = "172.18.0.100"

SERVICES = """
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.100
  type: NodePort
  selector: {app: web}
  ports: [{name: tcp, port: 80, targetPort: 8080, nodePort: 30080},
          {name: udp, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}]
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: tcp, port: 80, targetPort: 8080, nodePort: 30081}]
status: {loadBalancer: {ingress: [{ip: 172.18.0.100}]}}
---
apiVersion: v1
kind: Service
metadata: {name: remote-only}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: client}
  ports: [{name: tcp, port: 80, targetPort: 8080, nodePort: 30082}]
"""


@pytest.fixture
def dp():
    return make_dp(SERVICES)


def from_outside(dst, dport, sport=40000, proto="tcp", src=OUT_IP, src_mac=OUT_MAC,
                 dst_mac=NODE_MAC, payload=b"hi"):
    l4 = TCP(sport=sport, dport=dport, flags="S") if proto == "tcp" else UDP(sport=sport, dport=dport)
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / l4 / payload)


def arp_who_has(ip, src_ip=OUT_IP, src_mac=OUT_MAC):
    return bytes(Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc=src_mac, psrc=src_ip, pdst=ip))


def test_the_node_answers_arp_for_its_address_and_the_addresses_it_announces(dp):
    dp.announce()
    assert dp.services.announced == [LB_IP]   # policy Local: only node-a has endpoints
    for ip in (NODE_IP, LB_IP):
        ((port, frame),) = process(dp, [(UPLINK, arp_who_has(ip))])
        reply = Ether(frame)
        assert port == UPLINK and reply[ARP].op == 2
        assert (reply[ARP].psrc, reply[ARP].hwsrc, reply[ARP].pdst) == (ip, NODE_MAC, OUT_IP)
    assert process(dp, [(UPLINK, arp_who_has("172.18.0.3"))]) == []   # node-b's: not ours


def test_a_reload_that_moves_the_last_local_endpoint_moves_the_announcement(dp):
    assert [Ether(f)[ARP].psrc for _p, f in dp.announce()] == [NODE_IP, LB_IP]
    text = open("configs/demo.yaml").read() + SERVICES
    text = text.replace("{name: web-1, node: node-a, labels: {app: web}}",
                        "{name: web-1, node: node-a, labels: {app: retired}}")
    text = text.replace("{name: web-2, node: node-a, labels: {app: web}}",
                        "{name: web-2, node: node-a, labels: {app: retired}}")
    dp.reload(config.parse(text, "demo.yaml", check_host=False))
    assert dp.services.announced == []            # only node-b has endpoints now
    assert [Ether(f)[ARP].psrc for _p, f in dp.announce()] == [NODE_IP]
    assert process(dp, [(UPLINK, arp_who_has(LB_IP))]) == []
    node_b = Dataplane(config.parse(text, "demo.yaml", check_host=False), "node-b",
                       clock=still_clock())
    assert node_b.services.announced == [LB_IP]


def test_gratuitous_arps_announce_the_node_and_new_addresses_once(dp):
    first = [Ether(f)[ARP].psrc for _p, f in dp.slow.announce([LB_IP])]
    again = [Ether(f)[ARP].psrc for _p, f in dp.slow.announce([LB_IP])]
    assert first == [NODE_IP, LB_IP] and again == [NODE_IP]


def test_frames_for_other_hosts_on_the_outside_bridge_are_dropped_and_counted(dp):
    assert process(dp, [(UPLINK, from_outside(NODE_IP, 30080, dst_mac="02:76:ac:12:00:03"))]) == []
    assert dp.counter_dict()["drop_outside_not_for_us"] == 1


def test_nodeport_with_policy_cluster_snats_to_the_gateway_and_replies_return(dp):
    seen = set()
    for sport in range(41000, 41040):
        ((target, frame),) = process(dp, [(UPLINK, from_outside(NODE_IP, 30080, sport))])
        pkt = inner(target, frame)
        assert pkt[IP].src == "10.244.1.1" and pkt[TCP].dport == 8080   # the client is hidden
        assert_checksums_valid(pkt)
        seen.add(pkt[IP].dst)
        if pkt[IP].dst == B_IP and target == 1:
            reply = (Ether(src=B_MAC, dst=GW_MAC) / IP(src=B_IP, dst="10.244.1.1")
                     / TCP(sport=8080, dport=pkt[TCP].sport, flags="SA"))
            ((out, answer),) = process(dp, [(1, bytes(reply))])
            back = Ether(answer)
            assert out == UPLINK and (back.src, back.dst) == (NODE_MAC, OUT_MAC)
            assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == \
                (NODE_IP, 30080, OUT_IP, sport)
            assert_checksums_valid(back)
    assert seen == {A_IP, B_IP, REMOTE}


def test_nodeport_with_policy_local_keeps_the_client_address_and_uses_local_endpoints(dp):
    seen = set()
    for sport in range(42000, 42040):
        for dst, dport in ((NODE_IP, 30081), (LB_IP, 80)):
            ((target, frame),) = process(dp, [(UPLINK, from_outside(dst, dport, sport))])
            pkt = Ether(frame)
            assert target in (0, 1) and pkt[IP].src == OUT_IP
            seen.add(pkt[IP].dst)
    assert seen == {A_IP, B_IP}


def test_policy_local_without_a_local_endpoint_drops(dp):
    assert process(dp, [(UPLINK, from_outside(NODE_IP, 30082))]) == []
    assert dp.counter_dict()["drop_service_no_local_endpoint"] == 1


def test_outside_hosts_reach_pods_and_pods_reach_outside_hosts(dp):
    ((target, frame),) = process(dp, [(UPLINK, from_outside(A_IP, 8080))])
    assert target == 0 and Ether(frame)[IP].ttl == 63
    ((target, frame),) = process(dp, [(UPLINK, from_outside(REMOTE, 8080))])
    assert target >= OVERLAY_TARGET
    out = Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="172.18.0.3") / ICMP()
    ((target, frame),) = process(dp, [(0, bytes(out))])
    assert target == UPLINK and Ether(frame).dst == "02:76:ac:12:00:03"   # node-b, preset


def test_an_unknown_outside_address_is_resolved_with_arp_then_learned(dp):
    out = bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="172.18.0.50") / ICMP())
    ((target, frame),) = process(dp, [(0, out)])
    request = Ether(frame)
    assert target == UPLINK and request[ARP].pdst == "172.18.0.50"
    assert request[ARP].psrc == NODE_IP
    assert process(dp, [(0, out)]) == []   # asked a moment ago: not again
    answer = Ether(src="02:00:00:00:00:50", dst=NODE_MAC) / ARP(
        op=2, hwsrc="02:00:00:00:00:50", psrc="172.18.0.50", hwdst=NODE_MAC, pdst=NODE_IP)
    process(dp, [(UPLINK, bytes(answer))])
    ((target, frame),) = process(dp, [(0, out)])
    assert target == UPLINK and Ether(frame).dst == "02:00:00:00:00:50"


def test_the_node_address_answers_ping_and_refuses_closed_ports(dp):
    ping = Ether(src=OUT_MAC, dst=NODE_MAC) / IP(src=OUT_IP, dst=NODE_IP) / ICMP(id=7, seq=1)
    ((target, frame),) = process(dp, [(UPLINK, bytes(ping))])
    echo = Ether(frame)
    assert target == UPLINK and echo[ICMP].type == 0 and echo[IP].src == NODE_IP
    ((target, frame),) = process(dp, [(UPLINK, from_outside(NODE_IP, 22))])
    assert Ether(frame)[TCP].flags == "RA" and Ether(frame)[IP].src == NODE_IP


def test_a_spoofed_local_pod_source_from_outside_is_dropped(dp):
    assert process(dp, [(UPLINK, from_outside(NODE_IP, 30080, src=A_IP))]) == []
    assert dp.counter_dict()["drop_spoofed_ip"] == 1


# --- ICMP errors about translated connections -------------------------------------------------

def icmp_error_about(pkt, src, dst, src_mac, dst_mac, kind=3, code=3, full=False):
    quote = bytes(pkt[IP])
    if not full:   # senders quote at least the IP header and 8 bytes, often more
        quote = quote[:28 + random.Random(len(quote)).choice([0, 8, 40])]
    return Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / ICMP(type=kind, code=code) / quote


def assert_icmp_checksums_valid(pkt):
    fresh = pkt.copy()
    del fresh[IP].chksum
    del fresh[ICMP].chksum
    del fresh[IPerror].chksum
    fresh = Ether(bytes(fresh))
    assert (pkt[IP].chksum, pkt[ICMP].chksum, pkt[IPerror].chksum) == \
        (fresh[IP].chksum, fresh[ICMP].chksum, fresh[IPerror].chksum)


def test_port_unreachable_from_a_backend_reaches_the_client_as_if_from_the_service(dp):
    sport, _target, pkt = first_flow(dp, range(43000, 43100), lambda t, p: p[IP].dst == B_IP,
                                     "udp")
    sent = to_vip(sport, "udp")
    error = icmp_error_about(pkt, B_IP, A_IP, B_MAC, GW_MAC, full=True)
    ((target, frame),) = process(dp, [(1, bytes(error))])
    got = Ether(frame)
    assert target == 0 and got[IP].src == VIP and got[IP].dst == A_IP
    quoted = got[IPerror]
    assert (quoted.src, quoted.dst, got[UDPerror].sport, got[UDPerror].dport) == (A_IP, VIP, sport, 53)
    assert_icmp_checksums_valid(got)
    # the quote is now exactly what the client sent (one router hop later), UDP checksum included
    sent[IP].ttl -= 1
    del sent[IP].chksum
    assert bytes(got[IPerror]) == bytes(Ether(bytes(sent))[IP])
    assert dp.counter_dict()["ct_icmp_translated"] == 1


def test_icmp_errors_about_snatted_nodeport_flows_go_back_to_the_outside_client():
    rng = random.Random(5)
    dp = make_dp(SERVICES)
    for n in range(100):
        sport = 44000 + n
        proto = rng.choice(["tcp", "udp"])
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 60)))
        ((target, frame),) = process(dp, [(UPLINK, from_outside(
            NODE_IP, 30080 if proto == "tcp" else 30053, sport, proto, payload=payload))])
        pkt = inner(target, frame)
        if target >= OVERLAY_TARGET:
            continue
        backend_mac = A_MAC if target == 0 else B_MAC
        error = icmp_error_about(pkt, pkt[IP].dst, "10.244.1.1", backend_mac, GW_MAC,
                                 kind=rng.choice([3, 11]), code=0)
        ((out, answer),) = process(dp, [(target, bytes(error))])
        got = Ether(answer)
        assert out == UPLINK and (got[IP].src, got[IP].dst) == (NODE_IP, OUT_IP)
        assert (got[IPerror].src, got[IPerror].dst) == (OUT_IP, NODE_IP)
        # scapy leaves a quoted TCP header shorter than 20 bytes raw: read the ports directly
        ports = struct.unpack("!HH", bytes(got[IPerror].payload)[:4])
        assert ports == (sport, 30080 if proto == "tcp" else 30053)
        assert_icmp_checksums_valid(got)


def test_icmp_errors_about_unknown_flows_pass_unchanged(dp):
    stray = IP(src=A_IP, dst=B_IP) / UDP(sport=1, dport=2)
    error = icmp_error_about(stray, B_IP, A_IP, B_MAC, GW_MAC)
    ((target, frame),) = process(dp, [(1, bytes(error))])
    assert target == 0 and Ether(frame)[IPerror].dst == B_IP
    assert dp.counter_dict()["ct_icmp_translated"] == 0


def test_errors_about_outside_packets_come_from_the_node_address(dp):
    expiring = Ether(src=OUT_MAC, dst=NODE_MAC) / IP(src=OUT_IP, dst=A_IP, ttl=1) / UDP(dport=9)
    ((target, frame),) = process(dp, [(UPLINK, bytes(expiring))])
    error = Ether(frame)
    assert target == UPLINK and error[ICMP].type == 11
    assert (error[IP].src, error[IP].dst, error.dst) == (NODE_IP, OUT_IP, OUT_MAC)
