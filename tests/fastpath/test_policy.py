"""NetworkPolicy and masquerade in the fast path, frame by frame (scapy builds and checks).

node-a holds web-1 (port 0, 10.244.1.2) and web-2 (port 1, 10.244.1.3); node-b's client-1
(10.244.2.2) and web-3 (10.244.2.3) reach them over the overlay. The system tests
(tests/system/test_policy.py) check the same semantics with real connections between pods."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from tests.fastpath.test_outside import NODE_IP, NODE_MAC, OUT_IP, OUT_MAC, UPLINK
from tests.fastpath.test_services import (
    A_IP, A_MAC, B_IP, B_MAC, GW_MAC, VIP, assert_checksums_valid, first_flow, make_dp,
)
from tests.harness import OVERLAY_TARGET, process, process_datagrams
from vrouter.node.tables import ip_to_int

CLIENT, WEB3 = "10.244.2.2", "10.244.2.3"
NODE_B_UNDERLAY = "127.0.0.12"
VTEP_A_MAC, VTEP_B_MAC = "0e:76:0a:f4:01:00", "0e:76:0a:f4:02:00"

SERVICE = """
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.100
  selector: {app: web}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
"""


def policy(spec: str, name="p", namespace="default") -> str:
    return (f"\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")


def dp_with(*policies, extra=""):
    return make_dp(SERVICE + "".join(policies) + extra)


def tcp(src, dst, dport=8080, sport=40000, flags="S", src_mac=A_MAC, dst_mac=B_MAC):
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
                 / TCP(sport=sport, dport=dport, flags=flags))


def udp(src, dst, dport=5353, sport=40000, src_mac=A_MAC, dst_mac=B_MAC):
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
                 / UDP(sport=sport, dport=dport) / b"x")


def from_overlay(dp, inner_frame: bytes):
    """`inner_frame` as node-b sends it: routed to node-a's VTEP."""
    frame = Ether(src=VTEP_B_MAC, dst=VTEP_A_MAC) / Ether(inner_frame)[IP]
    return process_datagrams(dp, [(ip_to_int(NODE_B_UNDERLAY),
                                   bytes(VXLAN(vni=1, flags=0x08) / frame))])


def delivered(out, port):
    return [Ether(frame) for target, frame in out if target == port]


def drops(dp, name):
    return dp.counter_dict()[name]


def policy_drops(dp) -> dict:
    return {p["policy"]: p["dropped"] for p in dp.policy.summary()}


# --- isolation ---------------------------------------------------------------------------------

def test_no_policy_no_isolation_and_nothing_tracked():
    dp = dp_with()
    assert delivered(process(dp, [(0, tcp(A_IP, B_IP))]), 1)
    assert drops(dp, "policy_flows_tracked") == 0


def test_ingress_default_deny_drops_new_connections_from_every_peer_and_counts_them():
    dp = dp_with(policy("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n"),
                 extra="")
    assert process(dp, [(0, tcp(A_IP, B_IP))]) == []
    assert from_overlay(dp, tcp(CLIENT, A_IP)) == []
    assert drops(dp, "drop_policy_ingress") == 2
    assert policy_drops(dp) == {"default/p": 2}
    # egress is not isolated: web-1 still reaches node-b, and the answer comes back in
    out = process(dp, [(0, tcp(A_IP, WEB3, dst_mac=GW_MAC))])
    assert len(out) == 1 and out[0][0] >= OVERLAY_TARGET
    answer = tcp(WEB3, A_IP, sport=8080, dport=40000, flags="SA")
    assert [p[IP].src for p in delivered(from_overlay(dp, answer), 0)] == [WEB3]


def test_allowed_connection_replies_pass_an_egress_deny_but_new_ones_from_that_pod_do_not():
    allow = policy("  podSelector: {matchLabels: {app: web}}\n  ingress:\n"
                   "  - from: [{podSelector: {matchLabels: {app: web}}}]\n"
                   "    ports: [{port: 8080}]\n", name="allow-web")
    deny_egress = policy("  podSelector: {}\n  policyTypes: [Egress]\n", name="no-egress")
    dp = dp_with(allow, deny_egress)
    # web-1's egress is isolated too (no-egress selects every pod of default)
    assert process(dp, [(0, tcp(A_IP, B_IP))]) == []
    assert policy_drops(dp) == {"default/allow-web": 0, "default/no-egress": 1}
    # from node-b's web-3 (egress judged there): allowed in, the reply goes out
    assert delivered(from_overlay(dp, tcp(WEB3, B_IP)), 1)
    reply = tcp(B_IP, WEB3, sport=8080, dport=40000, flags="SA", src_mac=B_MAC, dst_mac=GW_MAC)
    out = process(dp, [(1, reply)])
    assert len(out) == 1 and out[0][0] >= OVERLAY_TARGET
    # the wrong port, or a peer that is not web: refused
    assert from_overlay(dp, tcp(WEB3, B_IP, dport=9090)) == []
    assert from_overlay(dp, tcp(CLIENT, B_IP)) == []
    # a new connection from web-2 itself: its egress is refused
    assert process(dp, [(1, tcp(B_IP, WEB3, sport=41000, src_mac=B_MAC, dst_mac=GW_MAC))]) == []
    assert drops(dp, "drop_policy_egress") == 2 and drops(dp, "drop_policy_ingress") == 2


def test_udp_replies_pass_and_allow_all_rule_allows_everything():
    dp = dp_with(policy("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress, Egress]\n"
                        "  ingress: [{}]\n"))
    assert delivered(from_overlay(dp, udp(CLIENT, B_IP)), 1)           # ingress: allow all
    reply = udp(B_IP, CLIENT, sport=5353, dport=40000, src_mac=B_MAC, dst_mac=GW_MAC)
    assert len(process(dp, [(1, reply)])) == 1                          # the reply: tracked
    again = udp(B_IP, CLIENT, sport=7, dport=7, src_mac=B_MAC, dst_mac=GW_MAC)
    assert process(dp, [(1, again)]) == []                              # egress: a new flow


def test_service_traffic_is_judged_against_the_backend_port():
    to_80 = policy("  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80}]}]\n")
    to_8080 = policy("  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 8080}]}]\n")
    dp = dp_with(to_8080)
    _sport, target, pkt = first_flow(dp, range(30000, 30100), lambda t, p: t == 1)
    assert pkt[IP].dst == B_IP and pkt[TCP].dport == 8080
    dp = dp_with(to_80)
    remote = refused = 0
    for sport in range(30000, 30100):
        out = process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=VIP)
                                     / TCP(sport=sport, dport=80)))])
        if out:   # the backend on node-b: its own node judges it, node-a sends it on
            ((target, frame),) = out
            pkt = Ether(bytes(VXLAN(frame).payload))
            assert target == OVERLAY_TARGET and (pkt[IP].dst, pkt[TCP].dport) == (WEB3, 8080)
            remote += 1
        else:     # a local backend: its policy admits port 80 only, not 8080
            refused += 1
            assert drops(dp, "drop_policy_ingress") == refused, sport
    assert remote > 0 and refused > 0   # Maglev spreads 100 flows over all three backends
    assert dp.conntrack_fill()["entries"] == remote   # one record per connection


def test_namespace_selector_and_pod_selector_in_one_peer_are_anded():
    text = policy("  podSelector: {matchLabels: {app: web}}\n  ingress:\n"
                  "  - from: [{namespaceSelector: {matchLabels: {team: blue}},\n"
                  "            podSelector: {matchLabels: {app: client}}}]\n")
    ns = "\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: blue, labels: {team: blue}}\n"
    pods = ("\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: blue-client, namespace: blue, "
            "labels: {app: client}}\nspec: {nodeName: node-b}\n"
            "\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: blue-web, namespace: blue, "
            "labels: {app: web}}\nspec: {nodeName: node-b}\n")
    dp = dp_with(text, extra=ns + pods)
    blue_client = str(dp.cluster.pod("blue-client").ip)
    blue_web = str(dp.cluster.pod("blue-web").ip)
    assert delivered(from_overlay(dp, tcp(blue_client, A_IP)), 0)
    assert from_overlay(dp, tcp(blue_web, A_IP)) == []     # the namespace matches, the pod not
    assert from_overlay(dp, tcp(CLIENT, A_IP)) == []       # the pod matches, the namespace not


def test_ip_block_except_and_the_outside_host():
    text = policy("  podSelector: {matchLabels: {app: web}}\n  ingress:\n"
                  "  - from: [{ipBlock: {cidr: 172.18.0.0/24, except: [172.18.0.1/32]}}]\n")
    dp = dp_with(text)
    from_out = bytes(Ether(src=OUT_MAC, dst=NODE_MAC) / IP(src=OUT_IP, dst=A_IP) / TCP(dport=8080))
    assert process(dp, [(UPLINK, from_out)]) == []
    dp = dp_with(text.replace(", except: [172.18.0.1/32]", ""))
    assert delivered(process(dp, [(UPLINK, from_out)]), 0)


def test_named_port_and_port_ranges():
    web_ports = {"pods:\n  - {name: web-1, node: node-a, labels: {app: web}}":
                 "pods:\n  - {name: web-1, node: node-a, labels: {app: web}, "
                 "ports: [{name: http, containerPort: 8080}]}"}
    named = policy("  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: http}]}]\n")
    dp = make_dp(SERVICE + named, **web_ports)
    assert delivered(process(dp, [(1, tcp(B_IP, A_IP, src_mac=B_MAC, dst_mac=A_MAC))]), 0)
    assert process(dp, [(0, tcp(A_IP, B_IP))]) == []   # web-2 has no port named http
    ranged = policy("  podSelector: {matchLabels: {app: web}}\n  ingress:\n"
                    "  - ports: [{protocol: UDP, port: 5000, endPort: 5999}]\n")
    dp = dp_with(ranged)
    assert delivered(process(dp, [(0, udp(A_IP, B_IP, dport=5999))]), 1)
    assert process(dp, [(0, udp(A_IP, B_IP, dport=6000, sport=40001))]) == []
    assert process(dp, [(0, tcp(A_IP, B_IP, dport=5500))]) == []      # TCP is not in the rule


def test_egress_named_port_is_the_destination_pods():
    web_ports = {"pods:\n  - {name: web-1, node: node-a, labels: {app: web}}":
                 "pods:\n  - {name: web-1, node: node-a, labels: {app: web}, "
                 "ports: [{name: http, containerPort: 8080}]}"}
    text = policy("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n"
                  "  egress: [{ports: [{port: http}]}]\n")
    dp = make_dp(SERVICE + text, **web_ports)
    assert delivered(process(dp, [(1, tcp(B_IP, A_IP, src_mac=B_MAC, dst_mac=A_MAC))]), 0)
    assert process(dp, [(0, tcp(A_IP, B_IP))]) == []   # web-2 names no port http


def test_a_reload_swaps_policies_and_keeps_drop_counts():
    text = policy("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n")
    dp = dp_with(text)
    assert process(dp, [(0, tcp(A_IP, B_IP))]) == []
    dp.reload(dp_with(text, extra=policy("  podSelector: {}\n  ingress: [{}]\n", name="open"))
              .cluster)
    assert delivered(process(dp, [(0, tcp(A_IP, B_IP, sport=40001))]), 1)
    assert policy_drops(dp) == {"default/p": 1, "default/open": 0}


def test_ping_is_judged_and_its_reply_follows():
    text = policy("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress, Egress]\n"
                  "  egress: [{to: [{podSelector: {}}]}]\n")
    dp = dp_with(text)
    ping = bytes(Ether(src=A_MAC, dst=B_MAC) / IP(src=A_IP, dst=B_IP) / ICMP(id=9))
    assert process(dp, [(0, ping)]) == []                   # web-2's ingress: nothing allowed
    ping_out = bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=WEB3) / ICMP(id=9))
    assert len(process(dp, [(0, ping_out)])) == 1           # egress to any pod: allowed
    echo = bytes(Ether(src=VTEP_B_MAC, dst=VTEP_A_MAC) / IP(src=WEB3, dst=A_IP) / ICMP(type=0, id=9))
    assert delivered(from_overlay(dp, echo), 0)


# --- masquerade ------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_pods_reach_the_outside_as_the_node_and_replies_come_back(proto):
    dp = dp_with()
    make = tcp if proto == "tcp" else udp
    layer = TCP if proto == "tcp" else UDP
    ((target, frame),) = process(dp, [(0, make(A_IP, OUT_IP, dport=80, dst_mac=GW_MAC))])
    out = Ether(frame)
    assert target == UPLINK and out[IP].src == NODE_IP and out[IP].dst == OUT_IP
    assert_checksums_valid(out)
    reply = (Ether(src=OUT_MAC, dst=NODE_MAC) / IP(src=OUT_IP, dst=NODE_IP)
             / layer(sport=80, dport=out[layer].sport))
    ((target, frame),) = process(dp, [(UPLINK, bytes(reply))])
    back = Ether(frame)
    assert target == 0 and (back[IP].dst, back[layer].dport) == (A_IP, 40000)
    assert_checksums_valid(back)
    assert drops(dp, "masqueraded_flows") == 1


def test_ping_to_the_outside_is_masqueraded_by_its_identifier():
    dp = dp_with()
    ping = bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=OUT_IP) / ICMP(id=77, seq=1))
    ((target, frame),) = process(dp, [(0, ping)])
    out = Ether(frame)
    assert target == UPLINK and out[IP].src == NODE_IP
    echo = Ether(src=OUT_MAC, dst=NODE_MAC) / IP(src=OUT_IP, dst=NODE_IP) / ICMP(
        type=0, id=out[ICMP].id, seq=1)
    ((target, frame),) = process(dp, [(UPLINK, bytes(echo))])
    back = Ether(frame)
    assert target == 0 and back[IP].dst == A_IP and back[ICMP].id == 77
    fresh = back.copy()
    del fresh[ICMP].chksum
    assert Ether(bytes(fresh))[ICMP].chksum == back[ICMP].chksum


def test_masquerade_off_keeps_the_pod_address():
    dp = make_dp(SERVICE, **{"mtu: 1500}": "mtu: 1500}\n  masquerade: false"})
    ((target, frame),) = process(dp, [(0, tcp(A_IP, OUT_IP, dport=80, dst_mac=GW_MAC))])
    assert target == UPLINK and Ether(frame)[IP].src == A_IP
    assert drops(dp, "masqueraded_flows") == 0


def test_a_pod_attached_at_runtime_is_isolated_as_its_labels_say():
    import dataclasses
    import ipaddress
    dp = dp_with(policy("  podSelector: {matchLabels: {app: late}}\n  policyTypes: [Ingress]\n"))
    late = dataclasses.replace(dp.cluster.pod("web-2"), name="late", labels=(("app", "late"),),
                               ip=ipaddress.IPv4Address("10.244.1.50"), mac="0a:58:0a:f4:01:32")
    port = dp.attach(late)
    late_syn = tcp(A_IP, "10.244.1.50", dst_mac="0a:58:0a:f4:01:32")
    assert process(dp, [(0, late_syn)]) == []
    assert policy_drops(dp) == {"default/p": 1}
    dp.detach(port)
    dp.attach(dataclasses.replace(late, labels=(("app", "web"),)))
    assert delivered(process(dp, [(0, late_syn)]), port)


UDP_SERVICE = """
---
apiVersion: v1
kind: Service
metadata: {name: dns-like}
spec:
  clusterIP: 10.96.0.101
  selector: {app: web}
  ports: [{name: u, port: 53, protocol: UDP, targetPort: 5353}]
"""


def test_fragments_of_a_datagram_the_policy_refused_do_not_pass():
    """web-2 admits nothing: the first fragment of a datagram to the Service is refused after
    its DNAT, and the translation it opened for its later fragments is forgotten with it."""
    from scapy.layers.inet import fragment
    deny = policy("  podSelector: {}\n  policyTypes: [Ingress]\n")
    dp = make_dp(UDP_SERVICE + deny)
    refused = 0
    for sport in range(42000, 42100):
        datagram = IP(src=A_IP, dst="10.96.0.101", id=sport) / UDP(sport=sport, dport=53) \
            / (b"z" * 3000)
        first, *rest = fragment(datagram, fragsize=1400)
        out = process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / first))])
        if out:   # to web-3 on node-b, which judges its own ingress
            assert all(target >= OVERLAY_TARGET for target, _f in out)
            continue
        refused += 1   # to web-1 or web-2 here: refused after its DNAT
        assert process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / f)) for f in rest]) == []
    assert refused >= 30 and drops(dp, "drop_policy_ingress") == refused


def sctp(src, dst, dport, sport=40000, src_mac=A_MAC, dst_mac=B_MAC):
    from scapy.layers.sctp import SCTP, SCTPChunkInit
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
                 / SCTP(sport=sport, dport=dport) / SCTPChunkInit())


def test_an_sctp_rule_opens_sctp_and_nothing_else_and_its_replies_pass():
    only_sctp = policy("  podSelector: {matchLabels: {app: web}}\n"
                       "  policyTypes: [Ingress, Egress]\n"
                       "  ingress: [{ports: [{port: 9000, protocol: SCTP}]}]\n"
                       "  egress: [{ports: [{port: 9000, protocol: SCTP}]}]\n")
    dp = dp_with(only_sctp)
    assert delivered(process(dp, [(0, sctp(A_IP, B_IP, 9000))]), 1)      # allowed both ways
    assert process(dp, [(0, sctp(A_IP, B_IP, 9001, sport=40001))]) == []   # another port
    assert process(dp, [(0, tcp(A_IP, B_IP, 9000, sport=40002))]) == []    # TCP on its number
    assert process(dp, [(0, udp(A_IP, B_IP, 9000, sport=40003))]) == []    # UDP on its number
    # web-2's answer to the allowed association passes, though web-2's egress is isolated
    answer = sctp(B_IP, A_IP, 40000, sport=9000, src_mac=B_MAC, dst_mac=A_MAC)
    assert delivered(process(dp, [(1, answer)]), 0)
    # an answer nobody asked for does not
    stray = sctp(B_IP, A_IP, 40009, sport=9000, src_mac=B_MAC, dst_mac=A_MAC)
    assert process(dp, [(1, stray)]) == []
