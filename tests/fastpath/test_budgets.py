"""Budgets for the slow path: one pod's flood spends its own port's budget only, and ICMP
errors are limited per destination and per node, before anything leaves compiled code."""
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from fastpath.budgets import DEST_BUDGET, NODE_BUDGET, PORT_BUDGET, icmp_allows
from fastpath.reasons import R_BUDGET_EVICTED
from tests.harness import process
from vrouter.model import config
from vrouter.node.dataplane import Dataplane

GW_MAC, GW_IP = "02:76:0a:f4:01:01", "10.244.1.1"
A_IP, A_MAC = "10.244.1.2", "0a:58:0a:f4:01:02"    # web-1, port 0
B_IP, B_MAC = "10.244.1.3", "0a:58:0a:f4:01:03"    # web-2, port 1


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def make():
    clock = Clock()
    cluster = config.parse(open("configs/demo.yaml").read(), "demo.yaml", check_host=False)
    return Dataplane(cluster, "node-a", clock=clock), clock


def arp_request(mac, ip, target=GW_IP):
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip,
                                                              pdst=target))


def test_an_arp_flood_from_one_pod_spends_its_own_budget_only():
    dp, clock = make()
    flood = [(0, arp_request(A_MAC, A_IP))] * (PORT_BUDGET + 500)
    answers = process(dp, flood)
    assert len(answers) == PORT_BUDGET
    assert dp.counter_dict()["drop_slow_path_budget"] == 500
    ((port, frame),) = process(dp, [(1, arp_request(B_MAC, B_IP))])   # the other pod: answered
    assert port == 1 and Ether(frame)[ARP].op == 2 and Ether(frame)[ARP].psrc == GW_IP
    clock.now += 1   # and a new second brings a new budget
    assert len(process(dp, [(0, arp_request(A_MAC, A_IP))])) == 1


def unroutable(src_mac=A_MAC, src=A_IP, dst="10.244.9.9", sport=1):
    return bytes(Ether(src=src_mac, dst=GW_MAC) / IP(src=src, dst=dst) / UDP(sport=sport, dport=9))


def test_icmp_errors_are_limited_per_destination():
    dp, clock = make()
    out = process(dp, [(0, unroutable(sport=k)) for k in range(100)])
    errors = [Ether(f) for _p, f in out]
    assert len(errors) == DEST_BUDGET
    assert all(e[ICMP].type == 3 and e[ICMP].code == 0 and e[IP].dst == A_IP for e in errors)
    assert dp.counter_dict()["drop_icmp_ratelimited"] == 100 - DEST_BUDGET
    assert len(process(dp, [(1, unroutable(B_MAC, B_IP))])) == 1   # another destination
    clock.now += 1
    assert len(process(dp, [(0, unroutable())])) == 1


def test_icmp_errors_are_limited_per_node_however_many_destinations():
    dp, _clock = make()
    budgets, counters = dp.tables.budgets, dp.counters
    allowed = [icmp_allows(budgets, 0x0A000000 + k, 1000, counters, R_BUDGET_EVICTED)
               for k in range(NODE_BUDGET + 500)]
    assert allowed.count(True) == NODE_BUDGET and not any(allowed[NODE_BUDGET:])
    assert icmp_allows(budgets, 0x0B000000, 1001, counters, R_BUDGET_EVICTED)   # next second


def test_a_flood_from_the_outside_costs_the_uplinks_budget_not_the_pods():
    dp, _clock = make()
    node = dp.node
    frames = [(dp.uplink, bytes(Ether(src="02:00:00:00:00:01", dst=node.mac)
                                / IP(src=f"172.18.0.{10 + k % 200}", dst="10.244.1.77")
                                / UDP(sport=k, dport=9))) for k in range(PORT_BUDGET + 300)]
    out = process(dp, frames)
    assert len(out) == PORT_BUDGET   # 200 sources: each within its own ICMP budget
    counts = dp.counter_dict()
    assert counts["slow_host_unreachable"] == PORT_BUDGET
    assert counts["drop_slow_path_budget"] == 300
    # the pods' budgets are untouched: their ARP is still answered (the node's ICMP budget
    # for this second, though, is spent, as Linux's icmp_msgs_per_sec would be)
    ((port, frame),) = process(dp, [(0, arp_request(A_MAC, A_IP))])
    assert port == 0 and Ether(frame)[ARP].op == 2
    assert process(dp, [(0, unroutable())]) == []
