"""Nodes registering themselves (vrouter.node.registration) against a real etcd: a race for
podCIDRs, a pool that runs out, the remembered podCIDR asked for first."""
import ipaddress
import logging

import pytest
import trio

from vrouter.host import state
from vrouter.model import config
from vrouter.node.registration import Refused, Registration
from vrouter.store.etcdstore import EtcdStore


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """The memory files of this test's nodes in a directory of its own."""
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path / "state")
    return tmp_path / "state"


def cluster(etcd, pod_cidr="10.244.0.0/16", name="rg"):
    return config.parse(f"""
cluster: {{name: {name}, podCIDR: {pod_cidr},
           datastore: {{type: etcd, endpoints: ["{etcd.url}"], prefix: /rg}}}}
""", check_host=False)


def registration(file, k):
    return Registration(file, f"h{k}", underlay=f"192.0.2.{k}")


def test_nodes_that_race_for_podcidrs_all_get_one_of_their_own(etcd, state_dir, caplog):
    file = cluster(etcd)
    regs = [registration(file, k) for k in range(1, 9)]

    async def main():
        store = EtcdStore(file.datastore, file.name)
        try:
            async with trio.open_nursery() as nursery:
                for reg in regs:
                    nursery.start_soon(reg.register, store)
        finally:
            await store.aclose()
    with caplog.at_level(logging.INFO, logger="vrouter.node.registration"):
        trio.run(main)
    cidrs = [reg.node.pod_cidr for reg in regs]
    assert len(set(cidrs)) == 8 and all(c.prefixlen == 24 and c.subnet_of(file.pod_cidr)
                                        for c in cidrs)
    assert len({reg.node.address for reg in regs}) == 8
    if "went to another node" not in caplog.text:
        pytest.fail("the registrations did not race: nothing was tested")
    listed = etcd.etcdctl("get", "--prefix", "--keys-only", "/rg/rg/subnets/").stdout.split()
    assert sorted(listed) == sorted(f"/rg/rg/subnets/{c.network_address}-24" for c in cidrs)


def test_a_pool_that_ran_out_refuses_with_the_reason(etcd, state_dir):
    file = cluster(etcd, pod_cidr="10.244.0.0/23")   # two /24s

    async def main():
        store = EtcdStore(file.datastore, file.name)
        try:
            for k in (1, 2):
                await registration(file, k).register(store)
            with pytest.raises(Refused, match=r"no podCIDR of /24 is left in cluster.podCIDR "
                                              r"10.244.0.0/23 for node 'h3'"):
                await registration(file, 3).register(store)
        finally:
            await store.aclose()
    trio.run(main)


def test_the_remembered_podcidr_first_while_it_is_free(etcd, state_dir):
    file = cluster(etcd)

    async def main():
        store = EtcdStore(file.datastore, file.name)
        try:
            state.write_memory(file.name, "h1", {"podCIDR": "10.244.7.0/24",
                                                 "underlay": "192.0.2.1"})
            first = registration(file, 1)
            await first.register(store)
            assert first.node.pod_cidr == ipaddress.IPv4Network("10.244.7.0/24")
            await first.release(store)
            # another node took it meanwhile: h1 gets the lowest free one instead
            state.write_memory(file.name, "h2", {"podCIDR": "10.244.7.0/24",
                                                 "underlay": "192.0.2.2"})
            await registration(file, 2).register(store)
            again = registration(file, 1)
            await again.register(store)
            assert again.node.pod_cidr == ipaddress.IPv4Network("10.244.0.0/24")
            assert state.read_memory(file.name, "h1")["podCIDR"] == "10.244.0.0/24"
            # a memory of another underlay (another host's node of this name) is not asked for
            state.write_memory(file.name, "h3", {"podCIDR": "10.244.9.0/24",
                                                 "underlay": "192.0.2.99"})
            third = registration(file, 3)
            await third.register(store)
            assert third.node.pod_cidr == ipaddress.IPv4Network("10.244.1.0/24")
        finally:
            await store.aclose()
    trio.run(main)
