"""Overlay peers that come and go (nodes registering in the store, leases expiring): the data
plane's peers, routes, neighbours and keepalives follow a reload, between batches."""
import dataclasses
import ipaddress

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from vrouter.model import config
from tests.harness import OVERLAY_TARGET, process
from vrouter.node.dataplane import Dataplane

GW_MAC = "02:76:0a:f4:01:01"
A_IP, A_MAC = "10.244.1.2", "0a:58:0a:f4:01:02"


def demo():
    return config.load("configs/demo.yaml", check_host=False)


def with_node(cluster, name, underlay, cidr, address):
    cidr = ipaddress.IPv4Network(cidr)
    node = config.Node(name=name, index=len(cluster.nodes),
                       underlay=ipaddress.IPv4Address(underlay), pod_cidr=cidr,
                       vtep_mac=config.mac_from_ip("0e:76", cidr.network_address),
                       address=ipaddress.IPv4Address(address))
    return dataclasses.replace(cluster, nodes=cluster.nodes + (node,))


def to(dst):
    return bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=dst) / UDP(sport=1, dport=2)
                 / b"x")


def test_a_node_that_joins_is_routed_to_and_one_that_leaves_is_net_unreachable():
    cluster = demo()
    dp = Dataplane(cluster, "node-a")
    (port, out), = process(dp, [(0, to("10.244.9.3"))])   # no node has 10.244.9.0/24 yet
    assert (Ether(out)[ICMP].type, Ether(out)[ICMP].code) == (3, 0)

    joined = with_node(cluster, "node-x", "127.0.0.19", "10.244.9.0/24", "172.18.0.9")
    summary = dp.reload(joined)
    assert summary["peers_changed"] and [p.name for p in dp.peers] == ["node-b", "node-x"]
    (target, datagram), = process(dp, [(0, to("10.244.9.3"))])
    assert target == OVERLAY_TARGET + 1
    inner = Ether(bytes(VXLAN(datagram).payload))
    assert inner.dst == "0e:76:0a:f4:09:00" and inner[IP].dst == "10.244.9.3"
    assert len(dp.keepalive_frames) == 2
    # node-b is still heard from as before; the same model again changes nothing
    assert not dp.reload(joined)["peers_changed"]
    (target, _), = process(dp, [(0, to("10.244.2.3"))])
    assert target == OVERLAY_TARGET + 0

    left = dataclasses.replace(joined, nodes=tuple(n for n in joined.nodes if n.name != "node-x"))
    assert dp.reload(left)["peers_changed"]
    (port, out), = process(dp, [(0, to("10.244.9.3"))])
    assert port == 0 and (Ether(out)[ICMP].type, Ether(out)[ICMP].code) == (3, 0)


def test_the_node_itself_cannot_change_under_a_reload():
    cluster = demo()
    dp = Dataplane(cluster, "node-a")
    moved = dataclasses.replace(cluster, nodes=(dataclasses.replace(
        cluster.nodes[0], underlay=ipaddress.IPv4Address("127.0.0.99")),) + cluster.nodes[1:])
    try:
        dp.reload(moved)
    except ValueError as exc:
        assert "this node" in str(exc)
    else:
        raise AssertionError("a reload moved the node itself")
    assert [p.name for p in dp.peers] == ["node-b"]
