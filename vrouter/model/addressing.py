"""The layout of a node's podCIDR, in one place: which address is what, and who gets which.

    .0           the node's VTEP address (the overlay device's /32, as flannel gives it)
    .1           the gateway (its MAC: 02:76 + the address)
    .2 ...       pods, the lowest free address first: the cluster file's pods in config order,
                 then pods made at runtime (`vrouter attach`, CNI, Pods applied to the store)
    upper half   a delegated IPAM plugin's range (`vrouter cni-conf --ipam`), up to ...
    last usable  the node's cluster DNS server pod (broadcast - 1), when cluster DNS is on

and how cluster.podCIDR is cut into node podCIDRs of cluster.nodeCIDRMaskSize for nodes that
register themselves (flannel's subnet leases).
"""
from __future__ import annotations

import ipaddress
from typing import Iterator

FIRST_POD = 2   # the offset of the first pod address (.0 VTEP, .1 gateway)
DEFAULT_NODE_MASK = 24   # cluster.nodeCIDRMaskSize, as kube-controller-manager's default


def vtep_address(cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return cidr.network_address


def gateway(cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return cidr.network_address + 1


def dns_pod_ip(cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The last usable address: pods are allocated from the bottom, so it stays free longest."""
    return cidr.broadcast_address - 1


def pod_address_problem(ip: ipaddress.IPv4Address, cidr: ipaddress.IPv4Network,
                        node_name: str) -> str | None:
    """Why `ip` cannot be a pod address of the node with `cidr`, or None."""
    if ip not in cidr:
        return f"{ip} is outside node {node_name!r}'s podCIDR {cidr}"
    if ip == gateway(cidr):
        return f"{ip} is node {node_name!r}'s gateway address"
    if ip in (cidr.network_address, cidr.broadcast_address):
        return f"{ip} is the network or broadcast address of {cidr}"
    return None


def lowest_free(cidr: ipaddress.IPv4Network, taken, start: int = FIRST_POD
                ) -> ipaddress.IPv4Address | None:
    """The lowest pod address from .`start` up that is not in `taken` (None: none left)."""
    first = int(cidr.network_address)
    for offset in range(start, cidr.num_addresses - 1):
        ip = ipaddress.IPv4Address(first + offset)
        if ip not in taken:
            return ip
    return None


class Allocator:
    """Deterministic allocation in config order: each node's lowest free address from .2 up.
    A cursor per node keeps it linear (what it passed was taken, and stays taken)."""

    def __init__(self, taken: dict):
        self.taken = taken        # address -> whose (shared with the caller)
        self.cursor: dict[str, int] = {}

    def next(self, node_name: str, cidr: ipaddress.IPv4Network, whose: str
             ) -> ipaddress.IPv4Address | None:
        start = self.cursor.get(node_name, FIRST_POD)
        ip = lowest_free(cidr, self.taken, start)
        if ip is None:
            self.cursor[node_name] = cidr.num_addresses - 1
            return None
        self.cursor[node_name] = int(ip) - int(cidr.network_address) + 1
        self.taken[ip] = whose
        return ip


def ipam_range(cidr: ipaddress.IPv4Network, dns_enabled: bool
               ) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """(first, last) of a delegated IPAM plugin's range: the upper half of the podCIDR (the
    lower one is where vrouter's own allocation starts), short of the DNS server pod."""
    hosts = list(cidr.hosts())
    last = hosts[-2] if dns_enabled else hosts[-1]
    return hosts[len(hosts) // 2], last


def node_subnets(cluster_cidr: ipaddress.IPv4Network, mask: int
                 ) -> Iterator[ipaddress.IPv4Network]:
    """The node podCIDRs a registering node may take, lowest first."""
    return cluster_cidr.subnets(new_prefix=mask)


def subnet_key(cidr: ipaddress.IPv4Network) -> str:
    """A podCIDR as a store key's last part, flannel-style: 10.244.3.0-24."""
    return f"{cidr.network_address}-{cidr.prefixlen}"


def subnet_from_key(part: str) -> ipaddress.IPv4Network:
    """The inverse of subnet_key (ValueError if it is not one)."""
    address, sep, length = part.partition("-")
    if not sep:
        raise ValueError(f"{part!r} is not ADDRESS-PREFIXLEN")
    return ipaddress.IPv4Network(f"{address}/{length}")
