"""The outside network: a namespace that plays the hosts outside the cluster, and each node's
interface on it (what a node's eth0 on the data-centre LAN is in a real cluster).

The namespace CLUSTER-outside holds a bridge `br0` with the first address of cluster.nodeNetwork
(172.18.0.1 by default). Every vrouter node adds one TAP to that bridge: the TAP's kernel end is a
bridge port, and the node answers on it as the host with its node address (172.18.0.2, .3, ...),
so `ip netns exec CLUSTER-outside curl 172.18.0.2:NODEPORT` reaches a NodePort. The namespace also
routes each node's podCIDR via the node's address, as a cloud VPC route table would.

Nodes start and stop independently, so the namespace is shared: the first node to attach creates
it and the last one to leave removes it, both under one lock; `vrouter down` removes one that
nodes killed with SIGKILL left behind (their TAPs vanished with them, so its bridge is empty).
"""
from __future__ import annotations

import contextlib
import fcntl
import os

from pyroute2.netlink.exceptions import NetlinkError
from pytun import TunTapDevice

from vrouter.host import netns, state
from vrouter.model.config import Cluster, Node
from vrouter.host.tap import HostError, TapPort, move_tap, open_tap

BRIDGE = "br0"


class UplinkPort(TapPort):
    """A node's TAP on the outside bridge, named `ifname` there."""

    def __init__(self, tap: TunTapDevice, uso: bool, ifname: str):
        super().__init__(tap, uso)
        self.ifname = ifname


@contextlib.contextmanager
def _locked():
    """One machine-wide lock for creating, joining and removing outside namespaces."""
    state.STATE_ROOT.mkdir(parents=True, exist_ok=True)
    fd = os.open(state.STATE_ROOT, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def interface_name(node: Node) -> str:
    """The node's bridge port as seen in the outside namespace (interface names: 15 chars)."""
    return node.name if len(node.name) <= 15 else f"node{node.index}"


def attach(cluster: Cluster, node: Node, stack: contextlib.ExitStack) -> UplinkPort:
    """Create the node's TAP on the outside bridge (and the namespace, if it is the first)."""
    with _locked():
        _ensure_namespace(cluster)
        try:
            tap, uso = open_tap("vru")
        except Exception:
            _remove_if_unused(cluster)
            raise
        port = UplinkPort(tap, uso, interface_name(node))
        stack.callback(detach, cluster, node, port)
        path = _path(cluster)
        move_tap(tap, path, port.ifname,
                 taken=f"{cluster.outside_netns} already has an interface {port.ifname!r}: "
                       f"is node {node.name!r} running already?")
        with netns.route_socket(path) as ipr:
            bridge = ipr.link_lookup(ifname=BRIDGE)[0]
            index = ipr.link_lookup(ifname=port.ifname)[0]
            ipr.link("set", index=index, master=bridge, mtu=cluster.overlay.pod_mtu, state="up")
            ipr.route("replace", dst=str(node.pod_cidr), gateway=str(node.address))
        return port


def detach(cluster: Cluster, node: Node, port: UplinkPort) -> None:
    with _locked():
        port.close()   # the TAP, and with it the bridge port, vanishes
        path = _path(cluster)
        if not os.path.exists(path):
            return
        with netns.route_socket(path) as ipr:
            with contextlib.suppress(NetlinkError):
                ipr.route("del", dst=str(node.pod_cidr), gateway=str(node.address))
        _remove_if_unused(cluster)


def release(cluster: Cluster) -> bool:
    """Remove the outside namespace if no node is attached any more (`vrouter down`)."""
    with _locked():
        return _remove_if_unused(cluster)


def _path(cluster: Cluster) -> str:
    return os.path.join(netns.NETNS_DIR, cluster.outside_netns)


def _remove_if_unused(cluster: Cluster) -> bool:
    path = _path(cluster)
    if not os.path.exists(path):
        return False
    with netns.route_socket(path) as ipr:
        found = ipr.link_lookup(ifname=BRIDGE)
        if not found:
            return False   # not ours: never delete a namespace we did not make
        if any(link.get("master") == found[0] for link in ipr.get_links()):
            return False
    netns.remove(cluster.outside_netns)
    return True


def _ensure_namespace(cluster: Cluster) -> None:
    path = _path(cluster)
    if os.path.exists(path):
        with netns.route_socket(path) as ipr:
            if not ipr.link_lookup(ifname=BRIDGE):
                raise HostError(f"network namespace {cluster.outside_netns!r} exists but is not "
                                "a vrouter outside network (no br0); remove or rename it")
        return
    try:
        netns.create(cluster.outside_netns)
    except OSError as exc:
        raise HostError(f"cannot create network namespace {cluster.outside_netns!r}: {exc}") \
            from None
    try:
        _quiet_ipv6(path)
        with netns.route_socket(path) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname=BRIDGE, kind="bridge")
            bridge = ipr.link_lookup(ifname=BRIDGE)[0]
            ipr.link("set", index=bridge, address=cluster.outside_host_mac,
                     mtu=cluster.overlay.pod_mtu, state="up")
            ipr.addr("add", index=bridge, address=str(cluster.outside_host),
                     prefixlen=cluster.node_network.prefixlen)
    except Exception:
        netns.remove(cluster.outside_netns)
        raise


def _quiet_ipv6(path: str) -> None:
    """IPv4 only, as the pods: no router solicitations or MLD reports on the bridge."""
    with netns.entered(path):
        for scope in ("all", "default"):
            with contextlib.suppress(OSError), \
                    open(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", "w") as f:
                f.write("1")
