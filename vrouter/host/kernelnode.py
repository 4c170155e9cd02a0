"""Serve one node of a cluster with the Linux kernel instead of vrouter, the way flannel does.

In the network namespace it runs in (its own, e.g. under `ip netns exec`), it programs:
- bridge `vr-br0` with the node's gateway MAC and address, the pods on veth pairs (eth0 inside);
- VXLAN device `vr-vx0`: the config's VNI and port, `local` = the node's underlay address, no
  learning, MAC = the node's vtepMAC, address = the node's VTEP address (podCIDR network address /32);
- per remote node: an onlink route to its podCIDR via its VTEP address, a permanent neighbour
  entry (VTEP address -> vtepMAC) and an FDB entry (vtepMAC -> underlay address).
That is exactly the addressing vrouter uses on the wire, so vrouter and kernel nodes interoperate.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from vrouter.model import addressing
from vrouter.model.config import Cluster, Node, Pod
from vrouter.host.tap import HostError, check_host, configure_pod_side, create_netns, \
    netns_exists, remove_netns

BRIDGE = "vr-br0"
VXLAN = "vr-vx0"


def veth_name(pod: Pod) -> str:
    """The host end of a pod's veth: stable (so `down` finds it) and within IFNAMSIZ."""
    return "vrk" + hashlib.sha1(pod.name.encode()).hexdigest()[:10]


def _preflight(cluster: Cluster, node: Node) -> None:
    """Everything that can be checked before changing anything (a rollback then removes only
    what we created)."""
    port = cluster.overlay.port
    if _in_init_netns():
        raise HostError("a kernel node needs a network namespace of its own (it enables IP "
                        f"forwarding and its VXLAN device binds UDP port {port} on every address); "
                        "run it under `ip netns exec NS`, where an interface carries the node's "
                        f"underlay address {node.underlay}")
    with IPRoute() as ipr:
        if not ipr.addr("dump", address=str(node.underlay)):
            raise HostError(f"no interface in this network namespace carries node {node.name!r}'s "
                            f"underlay address {node.underlay}")
        if ipr.link_lookup(ifname=BRIDGE) or ipr.link_lookup(ifname=VXLAN):
            raise HostError(f"{BRIDGE}/{VXLAN} already exist here: `vrouter kernel-node --down` "
                            "removes an earlier setup")
    for pod in _pods(cluster, node.name):
        if pod.owns_netns and netns_exists(pod):
            raise HostError(f"network namespace {pod.netns!r} for pod {pod.name!r} already exists")
        if not pod.owns_netns and not netns_exists(pod):
            raise HostError(f"network namespace {pod.netns!r} of pod {pod.name!r} does not exist")


def _in_init_netns() -> bool:
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:   # pid 1 hidden from us (a container): then we are not in its namespace
        return False


def up(cluster: Cluster, node_name: str) -> None:
    """Program the node; on any failure undo every step already taken."""
    check_host()
    node = cluster.node(node_name)
    _preflight(cluster, node)
    with contextlib.ExitStack() as undo:
        undo.callback(down, cluster, node_name)
        _enable_forwarding()
        with IPRoute() as ipr:
            bridge = _add_bridge(ipr, node, cluster.overlay.pod_mtu)
            for pod in _pods(cluster, node_name):
                _add_pod(ipr, cluster, pod, bridge)
            _add_vxlan(ipr, cluster, node)
        undo.pop_all()


def down(cluster: Cluster, node_name: str) -> None:
    """Remove what `up` created; safe to run on a partial or absent setup."""
    with IPRoute() as ipr:
        for name in [BRIDGE, VXLAN] + [veth_name(p) for p in _pods(cluster, node_name)]:
            for index in ipr.link_lookup(ifname=name):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=index)
    for pod in _pods(cluster, node_name):
        if pod.owns_netns:
            remove_netns(pod.netns)


def _enable_forwarding() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:   # this namespace's copy
        f.write("1")


def _add_bridge(ipr: IPRoute, node: Node, mtu: int) -> int:
    ipr.link("add", ifname=BRIDGE, kind="bridge")
    index = ipr.link_lookup(ifname=BRIDGE)[0]
    ipr.link("set", index=index, address=node.gateway_mac, mtu=mtu, state="up")
    ipr.addr("add", index=index, address=str(node.gateway), prefixlen=node.pod_cidr.prefixlen)
    return index


def _add_pod(ipr: IPRoute, cluster: Cluster, pod: Pod, bridge: int) -> None:
    if pod.owns_netns:
        create_netns(pod.netns)
    host_end = veth_name(pod)
    ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": host_end + "p"})
    peer = ipr.link_lookup(ifname=host_end + "p")[0]
    nsfd = os.open(pod.netns_path, os.O_RDONLY)
    try:
        try:
            ipr.link("set", index=peer, net_ns_fd=nsfd, ifname=pod.ifname)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise HostError(f"network namespace {pod.netns!r} already has an {pod.ifname}") \
                    from None
            raise
    finally:
        os.close(nsfd)
    index = ipr.link_lookup(ifname=host_end)[0]
    ipr.link("set", index=index, mtu=cluster.overlay.pod_mtu, master=bridge, state="up")
    node = cluster.node(pod.node)
    configure_pod_side(pod, cluster.overlay.pod_mtu, node.gateway, node.pod_cidr.prefixlen)


def vtep_address(node: Node) -> str:
    return str(addressing.vtep_address(node.pod_cidr))


def _add_vxlan(ipr: IPRoute, cluster: Cluster, node: Node) -> None:
    overlay = cluster.overlay
    ipr.link("add", ifname=VXLAN, kind="vxlan", vxlan_id=overlay.vni, vxlan_port=overlay.port,
             vxlan_local=str(node.underlay), vxlan_learning=0)
    index = ipr.link_lookup(ifname=VXLAN)[0]
    ipr.link("set", index=index, address=node.vtep_mac, mtu=overlay.pod_mtu)
    try:
        ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        if exc.code == errno.EADDRINUSE:
            raise HostError(f"UDP port {overlay.port} is already in use in this network namespace "
                            "(another node here?): a kernel node needs a namespace of its own") \
                from None
        raise
    ipr.addr("add", index=index, address=vtep_address(node), prefixlen=32)
    for peer in cluster.nodes:
        if peer.name == node.name:
            continue
        ipr.route("add", dst=str(peer.pod_cidr), gateway=vtep_address(peer), oif=index,
                  flags=["onlink"])
        ipr.neigh("add", dst=vtep_address(peer), lladdr=peer.vtep_mac, ifindex=index,
                  state=ndmsg.states["permanent"])
        ipr.fdb("append", ifindex=index, lladdr=peer.vtep_mac, dst=str(peer.underlay))


def _pods(cluster, node_name: str):
    """The node's pods; a kernel node serves no Services, so it has no cluster DNS server pod."""
    return [p for p in cluster.local_pods(node_name) if not p.dns_server]
