"""Nodes as separate machines: each in a network namespace of its own with a veth underlay, served
by vrouter (`vrouter run` under `ip netns exec`) or by the Linux kernel (`vrouter kernel-node`)."""
import pytest

from tests.system.cluster import SplitCluster, iperf3, netns_exec
from tests.system.test_pods import ping


@pytest.fixture
def split_cluster(tmp_path):
    started = []

    def make(kinds) -> SplitCluster:
        cluster = SplitCluster(tmp_path, kinds=kinds)
        started.append(cluster)
        return cluster.start()

    yield make
    problems = []
    for cluster in started:
        cluster.stop()
        problems += cluster.leftovers()
        problems += [f"netns {h}" for h in cluster.hosts if h in netns_list()]
    assert not problems, f"left behind: {problems}"


def netns_list():
    from tests.system.cluster import list_netns
    return list_netns()


def both_ways(cluster):
    for src, dst in (("a1", "b1"), ("b1", "a1")):
        result = ping(cluster, src, cluster.ip(dst), count=2)
        assert result.returncode == 0, f"{src} -> {dst}: {result.stdout}{result.stderr}"
        assert "ttl=62" in result.stdout   # routed by both gateways
        report = iperf3(cluster.pod(dst), cluster.ip(dst), cluster.pod(src))
        assert report["end"]["sum_received"]["bytes"] > 100_000, f"{src} -> {dst}"


def test_vrouter_nodes_in_namespaces_of_their_own(split_cluster):
    cluster = split_cluster(("vrouter", "vrouter"))
    both_ways(cluster)
    # the pods are visible machine-wide although the nodes run under `ip netns exec`
    assert netns_exec(cluster.pod("a1"), "true").returncode == 0


def test_mixed_cluster_vrouter_and_kernel_node(split_cluster):
    cluster = split_cluster(("vrouter", "kernel"))
    both_ways(cluster)
    # the vrouter node's keepalives are answered by the kernel's VTEP address
    (peer,) = cluster.status("node-a")["peers"]
    assert peer["up"]
    kernel_side = netns_exec(cluster.hosts[1], "ip", "-d", "link", "show", "vr-vx0").stdout
    assert "vxlan id 1" in kernel_side and "dstport 4789" in kernel_side
