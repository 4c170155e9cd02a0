"""The flow log, frame by frame: connection starts, ends and refusals from the fast path's ring
(fastpath.flows), named by the node's flow log (vrouter.node.flowlog) as `vrouter observe`
shows them. The system tests (tests/system/test_observe.py) check the same with real pods."""
import collections

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from fastpath import flows as ring
from tests.fastpath.test_conntrack import Clock
from tests.fastpath.test_policy import policy
from tests.harness import process
from tests.fastpath.test_services import A_IP, A_MAC, B_IP, B_MAC, GW_MAC, SERVICE, VIP, make_dp
from vrouter.node.dataplane import Dataplane
from vrouter.node.flowfilter import build
from vrouter.node.flowlog import FlowLog, collect, name_batch
from vrouter.node.metrics import flow_families
from vrouter.node.trace import Tracer


def new_dp(extra=SERVICE, **replace):
    clock = Clock()
    return Dataplane(make_dp(extra, **replace).cluster, "node-a", clock=clock), clock


def drained(dp, log=None) -> list[dict]:
    """What the node would log now (the data-path thread's drain, then trio's naming)."""
    log = log or FlowLog("node-a")
    batch = collect(dp)
    if batch is None:
        return []
    log.add(batch)   # counted and kept, named when asked
    return name_batch(batch, log.node_name)


def a_to_b(flags, sport=40000, seq=0, ack=0, payload=b""):
    return bytes(Ether(src=A_MAC, dst=B_MAC) / IP(src=A_IP, dst=B_IP)
                 / TCP(sport=sport, dport=80, flags=flags, seq=seq, ack=ack) / payload)


def b_to_a(flags, sport=40000, seq=0, ack=0, payload=b""):
    return bytes(Ether(src=B_MAC, dst=A_MAC) / IP(src=B_IP, dst=A_IP)
                 / TCP(sport=80, dport=sport, flags=flags, seq=seq, ack=ack) / payload)


def handshake_and_close(dp, sport=40000):
    """web-1 -> web-2:80 (bridged): handshake, 100 bytes each way, FIN from web-1 first."""
    steps = [(0, a_to_b("S", sport, seq=100)), (1, b_to_a("SA", sport, seq=500, ack=101)),
             (0, a_to_b("A", sport, seq=101, ack=501)),
             (0, a_to_b("PA", sport, seq=101, ack=501, payload=b"q" * 100)),
             (1, b_to_a("PA", sport, seq=501, ack=201, payload=b"r" * 100)),
             (0, a_to_b("FA", sport, seq=201, ack=601)),
             (1, b_to_a("FA", sport, seq=601, ack=202)),
             (0, a_to_b("A", sport, seq=202, ack=602))]
    for port, frame in steps:
        assert process(dp, [(port, frame)]), "every segment is delivered"


def test_a_connection_between_two_pods_starts_and_ends_with_its_packets_and_bytes():
    dp, _ = new_dp()
    handshake_and_close(dp)
    start, end = drained(dp)
    assert (start["event"], start["verdict"], start["type"]) == ("start", "FORWARDED",
                                                                 "to-endpoint")
    assert start["source"]["pod_name"] == "web-1" and start["destination"]["pod_name"] == "web-2"
    assert start["l4"]["TCP"] == {"source_port": 40000, "destination_port": 80,
                                  "flags": {"SYN": True}}
    assert start["is_reply"] is False and start["Summary"] == "TCP Flags: SYN"
    # web-1's last ACK (after both FINs) moved the connection into TIME_WAIT: it ends there,
    # with everything counted (SYN, ACK, data, FIN, ACK -> and SYN-ACK, data, FIN <-)
    assert (end["event"], end["reason"], end["type"], end["is_reply"]) == \
        ("end", "closed", "ct-closed", False)
    assert end["l4"]["TCP"]["flags"] == {"ACK": True} and end["tcp_state"] == "TIME_WAIT"
    assert end["traffic"]["packets"] == [5, 3]
    assert end["traffic"]["bytes"] == [40 + 40 + 140 + 40 + 40, 40 + 140 + 40]
    assert "closed: 5 packets 300 B ->, 3 packets 220 B <-" in end["Summary"]


def test_established_traffic_logs_nothing_more():
    dp, _ = new_dp()
    handshake_and_close(dp)
    assert len(drained(dp)) == 2
    process(dp, [(0, a_to_b("A", seq=202, ack=602))] * 50)   # in TIME_WAIT: tracked, not logged
    assert drained(dp) == []


def test_a_service_connection_names_the_service_and_its_backend():
    dp, _ = new_dp()
    out = process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=VIP)
                                / TCP(sport=40001, dport=80, flags="S")))])
    assert out
    (start,) = drained(dp)
    assert (start["event"], start["verdict"]) == ("start", "TRANSLATED")
    assert start["destination_service"] == {"namespace": "default", "name": "web",
                                            "port_name": "tcp", "address": f"{VIP}:80"}
    backend = start["destination"]["pod_name"]
    assert backend in ("web-1", "web-2", "web-3")
    assert start["IP"]["destination"] != VIP and start["l4"]["TCP"]["destination_port"] == 8080
    assert f"Service default/web port tcp {VIP}:80" in start["Summary"]


def test_a_policy_drop_names_the_policies_that_isolate_the_pod_and_the_direction():
    deny = policy("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
                  name="deny-web")
    dp, _ = new_dp(SERVICE + deny)
    assert process(dp, [(0, a_to_b("S"))]) == []
    (drop,) = drained(dp)
    assert (drop["event"], drop["verdict"], drop["reason"]) == ("drop", "DROPPED",
                                                                "drop_policy_ingress")
    assert drop["traffic_direction"] == "INGRESS" and drop["type"] == "policy-verdict:INGRESS"
    assert drop["ingress_denied_by"] == [{"name": "deny-web", "namespace": "default",
                                          "kind": "NetworkPolicy"}]
    assert "ingress denied: isolated by default/deny-web" in drop["Summary"]
    # the refused first packet took its connection with it: a retry is judged (and logged) again
    assert dp.conntrack_fill()["entries"] == 0
    assert process(dp, [(0, a_to_b("S"))]) == []
    assert [f["event"] for f in drained(dp)] == ["drop"]


def test_a_service_without_endpoints_is_rejected_and_spoofing_dropped():
    dp, _ = new_dp()
    process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="10.96.0.11")
                          / TCP(sport=40002, dport=80, flags="S")))])
    process(dp, [(0, bytes(Ether(src=A_MAC, dst=B_MAC) / IP(src="10.244.1.99", dst=B_IP)
                          / UDP(sport=1, dport=2)))])
    reject, spoofed = drained(dp)
    assert (reject["verdict"], reject["reason"]) == ("REJECTED", "slow_service_reject")
    assert reject["destination_service"]["name"] == "empty"
    assert (spoofed["verdict"], spoofed["reason"]) == ("DROPPED", "drop_spoofed_ip")
    assert spoofed["IP"]["source"] == "10.244.1.99" and spoofed["protocol"] == "udp"


def test_a_connection_that_times_out_ends_at_the_sweep_and_echo_is_followed_too():
    dp, clock = new_dp()
    process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="10.244.2.3")
                          / ICMP(type=8, id=7) / b"ping"))])
    (start,) = drained(dp)
    assert (start["protocol"], start["type"], start["destination"]["pod_name"]) == \
        ("icmp", "to-overlay", "web-3")
    clock.now += 31   # ICMP: 30 s
    dp.sweep()
    (end,) = drained(dp)
    assert (end["event"], end["reason"], end["traffic"]["packets"]) == ("end", "timeout", [1, 0])


def test_a_full_ring_overwrites_the_oldest_and_counts_the_losses():
    dp, _ = new_dp(SERVICE + "\n", **{"cluster:\n": "cluster:\n  flowLogEvents: 16\n"})
    assert dp.tables.conntrack.flows.events.shape[0] == 16
    for sport in range(20000, 20040):   # 40 starts, 16 kept
        process(dp, [(0, a_to_b("S", sport))])
    log = FlowLog("node-a")
    got = drained(dp, log)
    assert len(got) == 16 and got[0]["l4"]["TCP"]["source_port"] == 20024
    assert log.stats()["lost_ring_full"] == 24


def test_the_flow_log_off_logs_nothing():
    dp, _ = new_dp(SERVICE + "\n", **{"cluster:\n": "cluster:\n  flowLogEvents: 0\n"})
    handshake_and_close(dp)
    assert drained(dp) == []


def test_a_trace_logs_no_flow():
    dp, _ = new_dp()
    tracer = Tracer(dp, [p.name for p in dp.peers], [50000] * 8)
    answer = tracer.answer({"from": "pod", "pod": "web-1", "dst": VIP, "proto": "tcp",
                            "sport": 40000, "dport": 80})
    assert answer["steps"]
    assert drained(dp) == []


def test_filters_select_what_observe_shows():
    deny = policy("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
                  name="deny-web")
    dp, _ = new_dp(SERVICE + deny)
    process(dp, [(0, a_to_b("S"))])
    process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="10.244.2.3")
                          / ICMP(type=8, id=7)))])
    log = FlowLog("node-a")
    drained(dp, log)
    assert [f["event"] for f in log.query(build({"verdict": ["dropped"]}), None)] == ["drop"]
    assert [f["protocol"] for f in log.query(build({"protocol": ["icmp"]}), None)] == ["icmp"]
    assert len(log.query(build({"to_pod": ["default/web-2"]}), None)) == 1
    assert len(log.query(build({"from_pod": ["web"]}), None)) == 2   # a name prefix
    assert log.query(build({"pod": ["shop/web-1"]}), None) == []
    assert len(log.query(build({"port": ["80"]}), None)) == 1
    assert len(log.query(build({}), 1)) == 1


def test_unobserved_flows_are_counted_without_naming_and_named_when_asked():
    deny = policy("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
                  name="deny-web")
    dp, _ = new_dp(SERVICE + deny)
    log = FlowLog("node-a", capacity=3)
    process(dp, [(0, a_to_b("S"))])                                  # a policy drop
    process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=VIP)
                          / TCP(sport=40001, dport=80, flags="S")))])   # a Service start
    process(dp, [(0, bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst="10.244.2.3")
                          / ICMP(type=8, id=7)))])                   # a plain start
    batch = collect(dp)
    log.add(batch)
    assert log.flows == collections.deque(maxlen=3) and log.pending_rows == 3   # not named
    named = name_batch(batch, "node-a")
    expected = collections.Counter((f["verdict"], f["event"]) for f in named)
    assert sorted(expected) == [("DROPPED", "drop"), ("FORWARDED", "start"),
                                ("TRANSLATED", "start")]
    stats = log.stats()
    assert {(v["verdict"], v["event"]): v["flows"] for v in stats["by_verdict"]} == expected
    assert stats["policy_drops"] == [{"policy": "default/deny-web", "direction": "ingress",
                                      "flows": 1}]
    assert stats["events"] == 3 and stats["kept"] == 3
    samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for family in flow_families(stats) for m in family.samples}
    assert samples[("vrouter_flows_total", (("event", "drop"), ("verdict", "DROPPED")))] == 1
    assert samples[("vrouter_flows_total", (("event", "start"), ("verdict", "TRANSLATED")))] == 1
    assert samples[("vrouter_flow_policy_drops_total", (("direction", "ingress"),
                                                        ("policy", "default/deny-web")))] == 1
    assert samples[("vrouter_flows_lost_total", (("why", "ring_full"),))] == 0
    assert log.query(build({}), None) == named and log.pending_rows == 0
    # beyond the capacity the oldest go, named or not
    process(dp, [(0, a_to_b("S", 20001))])
    process(dp, [(0, a_to_b("S", 20002))])
    log.add(collect(dp))
    assert log.stats()["kept"] == 3 and log.stats()["events"] == 5
    kept = log.query(build({}), None)
    assert [f["protocol"] for f in kept] == ["icmp", "tcp", "tcp"]
    assert [f["l4"]["TCP"]["source_port"] for f in kept[1:]] == [20001, 20002]


@pytest.mark.parametrize("values,message", [
    ({"verdict": ["MAYBE"]}, "--verdict 'MAYBE': one of FORWARDED, TRANSLATED, DROPPED, REJECTED"),
    ({"port": ["http"]}, "--port 'http': a port number"),
    ({"protocol": ["sctp"]}, "--protocol 'sctp': one of tcp, udp, icmp"),
    ({"pod": ["a/b/c"]}, "--pod 'a/b/c': expected NAMESPACE/NAME"),
    ({"since": "5 minutes"}, "--since '5 minutes': a duration"),
])
def test_filters_that_do_not_parse_name_the_filter(values, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        build(values)


def test_event_columns_fit_the_row():
    assert ring.EV_POLICY + ring.MAX_POLICIES <= ring.EV_COLS
