"""Readiness in the fast path's Service tables: a pod that turns unready (its program exited,
its probe fails) or leaves (a workload scaled down) stops being a backend on the next table
swap, and its UDP flows are flushed, as for any backend that leaves a Service port."""
import dataclasses

from scapy.layers.inet import IP

from tests.fastpath.test_conntrack import local_flow
from tests.harness import process
from tests.fastpath.test_services import B_IP, inner, make_dp, to_vip


def with_pod(cluster, name, **change):
    return dataclasses.replace(cluster, pods=tuple(
        dataclasses.replace(p, **change) if p.name == name else p for p in cluster.pods))


def test_an_unready_backend_leaves_the_service_and_loses_its_udp_flows():
    dp = make_dp()
    sport, _ = local_flow(dp, range(49000, 49100), "udp")   # a flow that web-2 (B) serves
    unready = with_pod(dp.cluster, "web-2", ready=False)
    summary = dp.reload(unready)
    assert summary["flushed_udp_flows"] == 1 and summary["removed_backends"] == 2
    ((target, frame),) = process(dp, [(0, bytes(to_vip(sport, "udp")))])
    assert inner(target, frame)[IP].dst != B_IP   # the next datagram finds a live backend
    frontends = {f["frontend"]: f["backends"] for f in dp.frontends()}
    assert not any(b.startswith(f"{B_IP}:") for b in frontends["10.96.0.100:53/UDP"])
    # ready again: a backend again
    dp.reload(with_pod(unready, "web-2", ready=True))
    frontends = {f["frontend"]: f["backends"] for f in dp.frontends()}
    assert f"{B_IP}:5353" in frontends["10.96.0.100:53/UDP"]


def test_a_removed_backend_loses_its_udp_flows():
    dp = make_dp()
    sport, _ = local_flow(dp, range(49000, 49100), "udp")
    gone = dataclasses.replace(dp.cluster, pods=tuple(p for p in dp.cluster.pods
                                                      if p.name != "web-2"))
    assert dp.reload(gone)["flushed_udp_flows"] == 1
    ((target, frame),) = process(dp, [(0, bytes(to_vip(sport, "udp")))])
    assert inner(target, frame)[IP].dst != B_IP
