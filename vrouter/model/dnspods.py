"""Cluster DNS as the cluster file declares it: cluster.dns, and one DNS server pod per vrouter
node (namespace kube-system, the kube-dns labels, the last usable address of its podCIDR) that
the kube-dns Service points at. What the server answers is vrouter.model.dns."""
from __future__ import annotations

import ipaddress

from vrouter.model import addressing
from vrouter.model.names import DNS_LABEL
from vrouter.model.netnsnames import NETNS_NAME, dns_pod_name
from vrouter.model.types import DEFAULT_DNS_DOMAIN, ClusterDNS, Node, Pod, mac_from_ip

DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
DNS_LABELS = (("k8s-app", "kube-dns"),)


def dns_pod_ip(node: Node) -> ipaddress.IPv4Address:
    return addressing.dns_pod_ip(node.pod_cidr)


def build_dns(reader, raw, service_cidr) -> ClusterDNS:
    d = reader.mapping(raw, "cluster.dns", {"enabled", "address", "domain", "ttl", "pods"})
    ttl = reader.integer(d.get("ttl", ClusterDNS.ttl), "cluster.dns.ttl", 0, 3600)
    pods = d.get("pods", ClusterDNS.pods)
    if pods not in ("insecure", "verified", "disabled"):
        reader.fail("cluster.dns.pods", f"{pods!r} is not insecure, verified or disabled "
                    "(CoreDNS's pod record modes)")
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        reader.fail("cluster.dns.enabled", f"{enabled!r} is not true or false")
    address = (reader.address(d["address"], "cluster.dns.address") if "address" in d
               else service_cidr.network_address + 10)
    if address not in service_cidr or address in (service_cidr.network_address,
                                                   service_cidr.broadcast_address):
        reader.fail("cluster.dns.address", f"{address} is not a usable address of "
                    f"cluster.serviceCIDR {service_cidr}")
    domain = reader.string(d.get("domain", DEFAULT_DNS_DOMAIN), "cluster.dns.domain")
    labels = domain.rstrip(".").split(".")
    if not all(DNS_LABEL.match(label) for label in labels) or len(domain) > 200:
        reader.fail("cluster.dns.domain", f"{domain!r} is not a DNS domain (e.g. cluster.local)")
    return ClusterDNS(enabled=enabled, address=address, domain=".".join(labels), ttl=ttl,
                      pods=pods)


def dns_pods(reader, cluster_name: str, nodes, pods) -> list[Pod]:
    """One DNS server pod per node, in kube-system with the kube-dns labels, at the last
    usable address of the node's podCIDR."""
    made = []
    for node in nodes:
        name = dns_pod_name(cluster_name, node.name)
        if any(p.name == name for p in pods):
            reader.fail("pods", f"pod name {name!r} is the name of node {node.name!r}'s cluster "
                        "DNS server pod")
        if len(name) > 63 or not NETNS_NAME.match(name):
            reader.fail("cluster.name", f"{name!r} (node {node.name!r}'s DNS server pod) is too "
                        "long a pod name: shorten the cluster or node name")
        ip = dns_pod_ip(node)
        made.append(Pod(name=name, namespace=DNS_NAMESPACE, node=node.name, ip=ip,
                        mac=mac_from_ip("0a:58", ip), netns=name, owns_netns=True,
                        labels=DNS_LABELS, dns_server=True))
    return made
