"""vrouter trace, sans-IO: stage by stage on copies of the tables, agreeing with real forwarding."""
import numpy as np
import pytest
from scapy.layers.inet import IP, TCP

from vrouter.node.dataplane import Dataplane
from vrouter.node.trace import TraceError, Tracer

from tests.fastpath.test_services import A_IP, B_IP, REMOTE, VIP, inner, make_dp, to_vip
from tests.harness import OVERLAY_TARGET, process, still_clock


SOURCE_PORTS = [50001 + k for k in range(8)]   # one per overlay send socket


def tracer(dp: Dataplane) -> Tracer:
    return Tracer(dp, [p.name for p in dp.peers], SOURCE_PORTS)


def stages(result) -> list[str]:
    return [s["stage"] for s in result["steps"]]


def snapshot(dp: Dataplane):
    t = dp.tables
    return (dp.counters.copy(), t.bridge.fdb_keys.copy(), t.bridge.fdb_vals.copy(),
            t.conntrack.slots.copy(), t.conntrack.recs.copy(), t.conntrack.free.copy(),
            t.conntrack.stats.copy(), t.services.fe_new.copy())


def test_same_node_pod_to_pod_is_bridged():
    dp = make_dp()
    result = tracer(dp).from_pod("web-1", B_IP, "tcp", 40000, 8080)
    assert stages(result) == ["pod_in", "services", "policy", "switch", "bridge"]
    assert result["verdict"] == "forwarded_l2"
    assert result["to"] == {"pod": "web-2", "port": 1}
    assert result["steps"][0]["packet"] == f"tcp {A_IP}:40000 > {B_IP}:8080"


def test_remote_pod_leaves_over_the_overlay_and_the_peer_takes_it_up():
    dp = make_dp()
    result = tracer(dp).from_pod("web-1", REMOTE, "udp", 40000, 5353)
    assert stages(result)[-1] == "to_overlay"
    assert result["verdict"] == "to_overlay"
    assert result["to"]["node"] == "node-b"
    datagram = bytes.fromhex(result["to"]["datagram"])
    assert inner(OVERLAY_TARGET, datagram)[IP].dst == REMOTE
    outer = result["outer"]
    assert (outer["src"], outer["dst"]) == (result["to"]["source"], result["to"]["underlay"])
    assert outer["dport"] == dp.cluster.overlay.port and outer["vni"] == dp.cluster.overlay.vni
    assert outer["sport"] in SOURCE_PORTS and outer["inner_length"] == len(datagram) - 8

    peer = Dataplane(dp.cluster, "node-b", clock=still_clock())
    hop = tracer(peer).from_overlay(result["to"]["source"], datagram)
    assert stages(hop)[0] == "overlay_in"
    assert hop["verdict"] == "forwarded_routed"
    assert hop["to"]["pod"] == "web-3"


def test_cluster_ip_names_the_backend_a_real_connection_gets_and_changes_nothing():
    dp = make_dp()
    before = snapshot(dp)
    result = tracer(dp).from_pod("web-1", VIP, "tcp", 41000, 80)
    for old, new in zip(before, snapshot(dp)):
        np.testing.assert_array_equal(old, new)   # the trace left every table as it was
    (service_step,) = [s for s in result["steps"] if "service" in s]
    service = service_step["service"]
    assert service["service"] == "default/web" and service["frontend"] == f"{VIP}:80/TCP"
    assert service["connection"] == "new"

    ((target, frame),) = process(dp, [(0, bytes(to_vip(41000)))])   # the real SYN, same 5-tuple
    real = inner(target, frame)
    assert service["backend"] == f"{real[IP].dst}:{real[TCP].dport}"

    again = tracer(dp).from_pod("web-1", VIP, "tcp", 41000, 80)   # now it is in conntrack
    (step,) = [s for s in again["steps"] if "service" in s]
    assert step["service"]["connection"] == "established (conntrack)"
    assert step["service"]["backend"] == service["backend"]


def test_service_without_endpoints_goes_to_the_slow_path_to_be_refused():
    result = tracer(make_dp()).from_pod("web-1", "10.96.0.11", "tcp", 40000, 80)
    assert result["verdict"] == "slow_service_reject"
    assert result["kind"] == "slow"


def test_unknown_pod_and_unanswered_on_link_address_are_errors():
    t = tracer(make_dp())
    with pytest.raises(TraceError, match="no pod 'nobody'"):
        t.from_pod("nobody", VIP, "tcp", 1, 80)
    with pytest.raises(TraceError, match="ARP request would go unanswered"):
        t.from_pod("web-1", "10.244.1.200", "tcp", 1, 80)


def test_outside_to_node_port_is_translated():
    dp = make_dp(extra="""
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.100
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
""")
    result = tracer(dp).from_outside(str(dp.node.address), "tcp", 50000, 30080)
    assert stages(result)[0] == "outside_in"
    (step,) = [s for s in result["steps"] if "service" in s]
    assert step["service"]["snat"] is True
    assert result["kind"] == "forward"



def test_a_request_with_fields_of_the_wrong_kind_is_a_trace_error():
    t = tracer(make_dp())
    with pytest.raises(TraceError, match="proto"):
        t.answer({"from": "pod", "pod": "web-1", "dst": B_IP, "proto": ["tcp"]})
    with pytest.raises(TraceError, match="receive buffer"):
        t.answer({"from": "overlay", "source": "127.0.0.12", "datagram": "00" * 70000})


def test_a_policy_refusal_shows_in_the_policy_stage_and_counts_nothing():
    dp = make_dp("\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                 "metadata: {name: closed}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n")
    before = dp.policy.group.drops.copy(), dp.counters.copy()
    result = tracer(dp).from_pod("web-1", B_IP, "tcp", 40000, 8080)
    assert stages(result) == ["pod_in", "services", "policy"]
    assert result["verdict"] == "drop_policy_ingress"
    assert (dp.policy.group.drops == before[0]).all() and (dp.counters == before[1]).all()
