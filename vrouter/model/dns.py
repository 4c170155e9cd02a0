"""Cluster DNS answers, sans-IO: what CoreDNS's kubernetes plugin (as kubeadm configures it)
answers, from the live cluster model, so a reload or an attached pod changes the records with the
Services.

Records, to the Kubernetes DNS specification (schema 1.1.0, kubernetes/dns docs/specification.md):
  dns-version.ZONE                TXT "1.1.0"
  SVC.NS.svc.ZONE                 A: the ClusterIP; headless: every ready endpoint;
                                  ExternalName: a CNAME (and the target's A when it is ours)
  HOST.SVC.NS.svc.ZONE            A: the endpoint with that hostname (the pod's spec.hostname
                                  when its spec.subdomain is the Service, else its dashed address)
  _PORT._PROTO.SVC.NS.svc.ZONE    SRV for each named port (headless: one per ready endpoint,
                                  targeting HOST.SVC...), the targets' A records as additional
  D.C.B.A.in-addr.arpa            PTR: a ClusterIP to its Service, an endpoint to HOST.SVC...
  A-B-C-D.NS.pod.ZONE             A: cluster.dns.pods insecure (the default, as kubeadm sets it):
                                  the address the name spells, in a namespace that exists;
                                  verified: only a pod of that namespace with that address;
                                  disabled: none
and, as CoreDNS adds: SRV on SVC.NS.svc.ZONE itself (every port), ns.dns.ZONE (A: the DNS address)
with the zone's NS. Names are case-insensitive (an answer keeps the question's case). A name of
the zone that does not exist gets NXDOMAIN, one that exists without records of the asked type (a
Service asked for AAAA, svc.ZONE, an existing namespace NS.svc.ZONE) NOERROR with no answer
(NODATA), both with the zone's SOA; names outside the zone and the reverse zones of podCIDR and
serviceCIDR get REFUSED (there is no upstream: nothing leaves the machine). A query that does not
parse gets FORMERR when its header can be read, and nothing otherwise.
"""
from __future__ import annotations

import ipaddress
import math
from collections import defaultdict

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from vrouter.model.config import Cluster
from vrouter.model.services import endpoints

SCHEMA_VERSION = "1.1.0"
VERSION_TTL = 28800   # as CoreDNS serves dns-version
UDP_LIMIT = 512       # without EDNS (RFC 1035); larger answers are truncated (TC) over UDP
HEADER = 12
ALWAYS_NAMESPACES = ("default", "kube-system")


def dashed(ip) -> str:
    return str(ip).replace(".", "-")


def endpoint_hostname(pod, service) -> str:
    """The _hostname_ of an endpoint (the specification's 2.1): its pod's spec.hostname when the
    pod's spec.subdomain names the Service (the endpoints controller then sets it), else a
    system-assigned name: the dashed address, as CoreDNS makes it."""
    hostname, subdomain = getattr(pod, "hostname", None), getattr(pod, "subdomain", None)
    if hostname and subdomain == service.name:
        return hostname
    return dashed(pod.ip)


class Records:
    """Every record of one cluster model: name (lowercase, absolute) -> [(type, rdata text)]."""

    def __init__(self, cluster: Cluster):
        d = cluster.dns.domain
        self.ttl = cluster.dns.ttl
        self.pod_mode = cluster.dns.pods
        self.zone = dns.name.from_text(d)
        self.soa = dns.rrset.from_text(
            self.zone, self.ttl, "IN", "SOA",
            f"ns.dns.{d}. hostmaster.{d}. 1 7200 1800 86400 {self.ttl}")
        self.reverse_networks = (cluster.pod_cidr, cluster.service_cidr)
        self.records: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.srv_targets: dict[str, list[str]] = {}    # SRV name -> its targets' names
        self.namespaces = set(ALWAYS_NAMESPACES) | {n.name for n in cluster.namespaces} \
            | {p.namespace for p in cluster.pods} | {s.namespace for s in cluster.services}
        self.pod_ips = {(p.namespace, str(p.ip)) for p in cluster.pods if not p.awaiting_cni}
        self._add(f"dns-version.{d}.", "TXT", f'"{SCHEMA_VERSION}"')
        self._add(f"{d}.", "NS", f"ns.dns.{d}.")
        if cluster.dns.address is not None:
            self._add(f"ns.dns.{d}.", "A", str(cluster.dns.address))
        pods = list(cluster.pods)
        for service in cluster.services:
            self._service(service, pods, d)
        self.names = set(self.records)
        for ns in self.namespaces:   # namespaces exist (NODATA), as their svc and pod subtrees
            self.names |= {f"{ns}.svc.{d}.".lower(), f"{ns}.pod.{d}.".lower()}
        for name in list(self.names):   # names between a record and its zone exist too
            n = dns.name.from_text(name)
            while len(n) > 1 and (n.is_subdomain(self.zone) or _is_reverse(n)):
                self.names.add(n.to_text().lower())
                n = n.parent()

    def _add(self, name: str, rdtype: str, text: str) -> None:
        if (rdtype, text) not in self.records[name.lower()]:
            self.records[name.lower()].append((rdtype, text))

    def _srv(self, name: str, port: int, target: str) -> None:
        self._add(name, "SRV", f"{port} {target}")   # priority and weight come per answer
        self.srv_targets.setdefault(name.lower(), [])
        if target not in self.srv_targets[name.lower()]:
            self.srv_targets[name.lower()].append(target)

    def _service(self, service, pods, d: str) -> None:
        base = f"{service.name}.{service.namespace}.svc.{d}."
        if service.external_name:
            self._add(base, "CNAME", service.external_name.rstrip(".") + ".")
            return
        # the endpoints, by hostname: ready ones (or every one: publishNotReadyAddresses)
        by_pod = {}
        for port in service.ports:
            for e in endpoints(service, port, pods, include_not_ready=service.publish_not_ready):
                by_pod[e.pod.name] = e.pod
                if service.cluster_ip is None:
                    target = f"{endpoint_hostname(e.pod, service)}.{base}"
                    if port.name:
                        self._srv(f"_{port.name}._{port.protocol.lower()}.{base}", e.port, target)
                    self._srv(base, e.port, target)
        if not service.ports and service.selector:   # headless and portless: its pods
            by_pod = {p.name: p for p in pods if (not p.awaiting_cni or service.publish_not_ready)
                      and p.namespace == service.namespace
                      and all(dict(p.labels).get(k) == v for k, v in service.selector)}
        for pod in sorted(by_pod.values(), key=lambda p: p.ip):
            host = f"{endpoint_hostname(pod, service)}.{base}"
            self._add(host, "A", str(pod.ip))
            self._add(_reverse(pod.ip), "PTR", host)
            if service.cluster_ip is None:
                self._add(base, "A", str(pod.ip))
        if service.cluster_ip is not None:
            self._add(base, "A", str(service.cluster_ip))
            self._add(_reverse(service.cluster_ip), "PTR", base)
            for port in service.ports:
                if port.name:
                    self._srv(f"_{port.name}._{port.protocol.lower()}.{base}", port.port, base)
                self._srv(base, port.port, base)

    def pod_record(self, name: dns.name.Name) -> str | None:
        """A-B-C-D.NS.pod.ZONE: the address it answers with, by cluster.dns.pods."""
        labels = name.relativize(self.zone).labels
        if self.pod_mode == "disabled" or len(labels) != 3 or labels[2].lower() != b"pod":
            return None
        namespace = labels[1].decode(errors="replace").lower()
        host = labels[0].decode(errors="replace")
        if namespace not in self.namespaces or host.count("-") != 3:
            return None
        try:
            ip = str(ipaddress.IPv4Address(host.replace("-", ".")))
        except ValueError:
            return None
        if self.pod_mode == "verified" and (namespace, ip) not in self.pod_ips:
            return None
        return ip

    def authoritative_for(self, name: dns.name.Name) -> bool:
        if name.is_subdomain(self.zone):
            return True
        if not _is_reverse(name):
            return False
        ip = _address_of_reverse(name)
        if ip is not None:
            return any(ip in n for n in self.reverse_networks)
        return self._covers_reverse_zone(name)

    def _covers_reverse_zone(self, name: dns.name.Name) -> bool:
        """A partial reverse name (1.244.10.in-addr.arpa.) inside a CIDR's reverse zone."""
        octets = [int(label) for label in reversed(name.labels[:-3]) if label.isdigit()]
        if len(octets) != len(name.labels) - 3 or not octets:
            return False
        return any(list(n.network_address.packed[:len(octets)]) == octets and
                   n.prefixlen <= 8 * len(octets) for n in self.reverse_networks)


class Resolver:
    """Answers queries from the latest cluster model (`update` on every change)."""

    def __init__(self, cluster: Cluster):
        self.records = Records(cluster)
        self.counts = defaultdict(int)   # rcode names, and "dropped"

    def update(self, cluster: Cluster) -> None:
        self.records = Records(cluster)

    def answer(self, wire: bytes, limit: int | None = UDP_LIMIT) -> bytes | None:
        """The reply to one query (`limit`: the UDP size limit, None over TCP), or None to
        drop it (too short to answer, or itself a response)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return self._formerr(wire)
        if query.flags & dns.flags.QR:
            self.counts["dropped"] += 1
            return None
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._fill(query.question[0], response)
        self.counts[dns.rcode.to_text(response.rcode())] += 1
        if limit is not None and query.edns >= 0:
            limit = max(UDP_LIMIT, min(query.payload, 65535))
        try:
            return response.to_wire(max_size=limit or 65535)
        except dns.exception.TooBig:
            response.answer, response.authority, response.additional = [], [], []
            response.flags |= dns.flags.TC   # the client asks again over TCP
            return response.to_wire()

    def _rrset(self, name, rdtype: str, texts: list[str]) -> dns.rrset.RRset:
        r = self.records
        ttl = VERSION_TTL if rdtype == "TXT" else r.ttl
        if rdtype == "SRV":   # priority 0, weights as CoreDNS shares 100 among the records
            weight = max(1, math.floor(100 / len(texts)))
            texts = [f"0 {weight} {t}" for t in texts]
        return dns.rrset.from_text(name, ttl, "IN", rdtype, *texts)

    def _fill(self, question, response) -> None:
        r = self.records
        name, qtype = question.name, question.rdtype
        if question.rdclass != dns.rdataclass.IN or not r.authoritative_for(name):
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        key = name.to_text().lower()
        found = defaultdict(list)
        for rdtype, text in r.records.get(key, ()):
            found[rdtype].append(text)
        pod_ip = r.pod_record(name) if name.is_subdomain(r.zone) else None
        if pod_ip is not None:
            found["A"].append(pod_ip)
        if key not in r.names and not found:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(r.soa)
            return
        if name == r.zone and qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            response.answer.append(r.soa)
        wanted = dns.rdatatype.to_text(qtype)
        for rdtype, texts in found.items():
            # a CNAME answers every type; a target inside the zone is answered too
            if qtype == dns.rdatatype.ANY or rdtype == wanted or rdtype == "CNAME":
                response.answer.append(self._rrset(name, rdtype, texts))
            if rdtype == "CNAME" and qtype in (dns.rdatatype.A, dns.rdatatype.ANY):
                target = texts[0].lower()
                for t_type, t_text in r.records.get(target, ()):
                    if t_type == "A":
                        response.answer.append(self._rrset(dns.name.from_text(target), "A",
                                                           [t_text]))
        if qtype == dns.rdatatype.SRV and found.get("SRV"):   # the targets' addresses
            for target in r.srv_targets.get(key, ()):
                addresses = [t for t_type, t in r.records.get(target.lower(), ()) if t_type == "A"]
                if addresses:
                    response.additional.append(self._rrset(dns.name.from_text(target), "A",
                                                           addresses))
        if not response.answer:
            response.authority.append(r.soa)   # NODATA

    def _formerr(self, wire: bytes) -> bytes | None:
        if len(wire) < HEADER or wire[2] & 0x80:   # no header to answer, or a response
            self.counts["dropped"] += 1
            return None
        self.counts["FORMERR"] += 1
        opcode = wire[2] & 0x78
        # the query's id and opcode, QR set, no sections, rcode FORMERR (RFC 1035 4.1.1)
        return wire[:2] + bytes([0x80 | opcode, dns.rcode.FORMERR]) + bytes(8)


def _reverse(ip) -> str:
    return dns.name.from_text(ipaddress.IPv4Address(ip).reverse_pointer).to_text()


def _is_reverse(name: dns.name.Name) -> bool:
    return name.is_subdomain(dns.name.from_text("in-addr.arpa."))


def _address_of_reverse(name: dns.name.Name):
    if not _is_reverse(name) or len(name.labels) != 7:
        return None
    try:
        return ipaddress.IPv4Address(".".join(
            label.decode() for label in reversed(name.labels[:4])))
    except ValueError:
        return None
