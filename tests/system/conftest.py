import os

import pytest

from tests.system.cluster import Cluster


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        skip = pytest.mark.skip(reason="system tests need root and /dev/net/tun")
        for item in items:
            item.add_marker(skip)


@pytest.fixture
def make_cluster(tmp_path):
    """Start clusters on demand; each is stopped and checked for leftovers, even on failure."""
    started = []

    def make(cls=Cluster, **kw) -> Cluster:
        cluster = cls(tmp_path, **kw)
        started.append(cluster)
        return cluster.start()

    yield make
    problems = []
    for cluster in started:
        cluster.stop()
        problems += cluster.leftovers()
    assert not problems, f"left behind: {problems}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One shared 2x2 cluster for the tests that only look."""
    cluster = Cluster(tmp_path_factory.mktemp("demo")).start()
    yield cluster
    cluster.stop()
    assert not cluster.leftovers()


@pytest.fixture(scope="session")
def policies_demo(tmp_path_factory):
    """configs/policies.yaml running with unique names and its web servers (tests/system/
    policies_demo.py), shared by the tests of `vrouter observe` and of the page."""
    from tests.system.policies_demo import PoliciesCluster, web_servers
    cluster = PoliciesCluster(tmp_path_factory.mktemp("policies"))
    cluster.start()
    try:
        with web_servers(cluster):
            yield cluster
    finally:
        cluster.stop()
        assert not cluster.leftovers()
