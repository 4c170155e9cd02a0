"""Nodes as separate machines: each in a network namespace of its own with a veth underlay, served
by vrouter (`vrouter run` under `ip netns exec`) or by the Linux kernel (`vrouter kernel-node`)."""
import subprocess
import sys

from pyroute2 import netns as pr_netns

from tests.system.cluster import SplitCluster, iperf3, list_netns, netns_exec, new_prefix, wait_for
from tests.system.test_pods import ping


def both_ways(cluster):
    for src, dst in (("a1", "b1"), ("b1", "a1")):
        result = ping(cluster, src, cluster.ip(dst), count=2)
        assert result.returncode == 0, f"{src} -> {dst}: {result.stdout}{result.stderr}"
        assert "ttl=62" in result.stdout   # routed by both gateways
        report = iperf3(cluster.pod(dst), cluster.ip(dst), cluster.pod(src))
        assert report["end"]["sum_received"]["bytes"] > 100_000, f"{src} -> {dst}"


def test_vrouter_nodes_in_namespaces_of_their_own(make_cluster):
    cluster = make_cluster(SplitCluster, kinds=("vrouter", "vrouter"))
    both_ways(cluster)
    # the pods are visible machine-wide although the nodes run under `ip netns exec`
    assert netns_exec(cluster.pod("a1"), "true").returncode == 0


def test_mixed_cluster_vrouter_and_kernel_node(make_cluster):
    cluster = make_cluster(SplitCluster, kinds=("vrouter", "kernel"))
    # the kernel's VXLAN device keeps its default checksum offload: over a veth underlay its
    # pods' TCP/UDP checksums arrive partial, and vrouter completes them
    features = netns_exec(cluster.hosts[1], "ethtool", "-k", "vr-vx0").stdout
    assert "tx-checksumming: on" in features, features
    both_ways(cluster)
    assert cluster.counters("node-a")["csum_partial_completed"] > 0
    # the vrouter node's keepalives are answered by the kernel's VTEP address
    (peer,) = cluster.status("node-a")["peers"]
    assert peer["up"]
    kernel_side = netns_exec(cluster.hosts[1], "ip", "-d", "link", "show", "vr-vx0").stdout
    assert "vxlan id 1" in kernel_side and "dstport 4789" in kernel_side


def test_pod_namespaces_are_published_even_when_the_caller_has_exited(tmp_path):
    """`(ip netns exec HOST vrouter run ... &)` from a shell: the parent is gone at once, so the
    node finds the mount namespace to publish in by /run/netns's peer group, not its parent."""
    host, pod = new_prefix() + "-host", new_prefix() + "-pod"
    out = tmp_path / "out"
    helper = tmp_path / "helper.py"
    helper.write_text(
        "import os, sys, time\n"
        "while os.getppid() == int(sys.argv[1]): time.sleep(0.01)   # until our shell has exited\n"
        "from vrouter.host import netns\n"
        f"netns.create({pod!r})\n"
        f"open({str(out)!r}, 'w').write('x')\n")
    pr_netns.create(host)
    try:
        subprocess.run(["sh", "-c", f"ip netns exec {host} {sys.executable} {helper} $$ &"],
                       check=True, timeout=30)
        wait_for(out.exists, timeout=30, what="the orphaned helper")
        assert netns_exec(pod, "true").returncode == 0
    finally:
        pr_netns.remove(host)
        if pod in list_netns():
            pr_netns.remove(pod)
