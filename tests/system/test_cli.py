"""Bad input and hostile environments: a clear message, the right exit code, nothing created."""
import subprocess
import sys

from tests.system.cluster import READY_TIMEOUT, Cluster, list_netns


def vrouter(*args, **kw):
    # a `run` that gets past its config compiles the fast path first in a fresh clone
    return subprocess.run([sys.executable, "-m", "vrouter", *args], capture_output=True, text=True,
                          timeout=READY_TIMEOUT, **kw)


def test_bad_config_exits_2_names_file_and_field_and_creates_nothing(tmp_path):
    cluster = Cluster(tmp_path)
    bad = cluster.path.read_text().replace("10.244.2.0/24", "10.245.2.0/24")
    cluster.path.write_text(bad)
    before = list_netns()
    for args in (["run", str(cluster.path), "--node", "node-a"], ["up", str(cluster.path)]):
        result = vrouter(*args)
        assert result.returncode == 2
        assert f"{cluster.path}: nodes[1].podCIDR: 10.245.2.0/24 is outside cluster.podCIDR" in result.stderr
    assert list_netns() == before


def test_unknown_node_exits_2(tmp_path):
    cluster = Cluster(tmp_path)
    result = vrouter("run", str(cluster.path), "--node", "node-z")
    assert result.returncode == 2 and "no node named 'node-z'" in result.stderr


def test_a_leftover_namespace_is_reported_and_kept(tmp_path):
    from pyroute2 import netns as pr_netns
    cluster = Cluster(tmp_path, pods_per_node=(2, 1))
    clash = cluster.pod("a2")
    pr_netns.create(clash)
    try:
        result = vrouter("run", str(cluster.path), "--node", "node-a")
        assert result.returncode == 1
        assert f"network namespace '{clash}' for pod '{clash}' already exists" in result.stderr
        assert clash in list_netns()                  # not ours: untouched
        assert cluster.pod("a1") not in list_netns()  # what it had created is rolled back
    finally:
        pr_netns.remove(clash)
    assert cluster.leftovers() == []


def test_kernel_node_outside_a_namespace_of_its_own_is_refused_and_creates_nothing(tmp_path):
    from pyroute2 import IPRoute
    cluster = Cluster(tmp_path, pods_per_node=(1, 1), kernel_nodes=[1])
    before = list_netns()
    unmarked = vrouter("kernel-node", str(cluster.path), "--node", "node-a")
    assert unmarked.returncode == 2 and "node 'node-a' is not marked `kernel: true`" \
        in unmarked.stderr, unmarked.stderr
    result = vrouter("kernel-node", str(cluster.path), "--node", "node-b")
    assert result.returncode == 1
    # either guard may fire first, depending on whether pid 1's namespace is visible to us
    assert ("network namespace of its own" in result.stderr
            or "no interface in this network namespace carries node 'node-b'" in result.stderr), \
        result.stderr
    assert list_netns() == before
    with IPRoute() as ipr:
        assert not ipr.link_lookup(ifname="vr-br0") and not ipr.link_lookup(ifname="vr-vx0")
