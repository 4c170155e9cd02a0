"""Cluster DNS answers, sans-IO: what kube-dns (CoreDNS's kubernetes plugin) answers, from the
live cluster model, so a reload or an attached pod changes the records with the Services.

Records (the Kubernetes DNS specification, https://github.com/kubernetes/dns/blob/master/docs/specification.md):
  SVC.NS.svc.DOMAIN              A: the ClusterIP; headless: every ready endpoint's address;
                                 ExternalName: a CNAME to the external name
  HOST.SVC.NS.svc.DOMAIN         A: an endpoint of a headless Service, by its hostname: a pod's
                                 spec.hostname when its spec.subdomain names the Service (a
                                 StatefulSet's pods: NAME-K.SERVICE), else its dashed address
  _PORT._PROTO.SVC.NS.svc.DOMAIN SRV for each named port (headless: one per endpoint)
  A-B-C-D.NS.pod.DOMAIN          A: a pod of that namespace with that address
  D.C.B.A.in-addr.arpa           PTR: Service and pod addresses
Names inside the domain (or the reverse zones of the pod and service CIDRs) that do not exist get
NXDOMAIN, names that exist without records of the asked type an empty answer (NODATA), both with
the zone's SOA; names outside get REFUSED (there is no upstream). A query that does not parse gets
FORMERR when its header can be read, and nothing otherwise.
"""
from __future__ import annotations

import ipaddress
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

TTL = 5            # seconds, as CoreDNS's kubernetes plugin
UDP_LIMIT = 512    # without EDNS (RFC 1035); larger answers are truncated (TC) over UDP
HEADER = 12


def dashed(ip) -> str:
    return str(ip).replace(".", "-")


def endpoint_hostname(pod, service) -> str:
    """An endpoint's hostname (the DNS specification's): as the endpoints controller sets it,
    the pod's spec.hostname when its spec.subdomain is the Service's name (in the Service's
    namespace); else an identifier of vrouter's choosing, the dashed address."""
    if pod.hostname and pod.subdomain == service.name and pod.namespace == service.namespace:
        return pod.hostname
    return dashed(pod.ip)


class Records:
    """Every record of one cluster model: name (lowercase, absolute) -> [(type, rdata text)]."""

    def __init__(self, cluster: Cluster):
        d = cluster.dns.domain
        self.zone = dns.name.from_text(d)
        self.soa = dns.rrset.from_text(
            self.zone, TTL, "IN", "SOA",
            f"ns.dns.{d}. hostmaster.{d}. 1 7200 1800 86400 {TTL}")
        self.reverse_networks = (cluster.pod_cidr, cluster.service_cidr)
        self.records: dict[str, list[tuple[str, str]]] = defaultdict(list)
        pods = [p for p in cluster.pods if not p.awaiting_cni]
        for pod in pods:
            name = f"{dashed(pod.ip)}.{pod.namespace}.pod.{d}."
            self._add(name, "A", str(pod.ip))
            self._add(_reverse(pod.ip), "PTR", name)
        for service in cluster.services:
            self._service(service, pods, d)
        self.names = set(self.records)
        for name in list(self.records):   # names between a record and its zone exist too
            n = dns.name.from_text(name)
            while len(n) > 1 and (n.is_subdomain(self.zone) or _is_reverse(n)):
                self.names.add(n.to_text().lower())
                n = n.parent()

    def _add(self, name: str, rdtype: str, text: str) -> None:
        if (rdtype, text) not in self.records[name.lower()]:
            self.records[name.lower()].append((rdtype, text))

    def _service(self, service, pods, d: str) -> None:
        base = f"{service.name}.{service.namespace}.svc.{d}."
        if service.external_name:
            self._add(base, "CNAME", service.external_name + ".")
            return
        if service.cluster_ip is not None:
            self._add(base, "A", str(service.cluster_ip))
            self._add(_reverse(service.cluster_ip), "PTR", base)
            for port in service.ports:
                if port.name:
                    self._add(f"_{port.name}._{port.protocol.lower()}.{base}", "SRV",
                              f"0 100 {port.port} {base}")
            return
        # headless: the endpoints themselves (ready ones, unless publishNotReadyAddresses)
        selected = {}
        for port in service.ports:
            for e in endpoints(service, port, pods):
                selected[e.pod.name] = e.pod
                if port.name:
                    self._add(f"_{port.name}._{port.protocol.lower()}.{base}", "SRV",
                              f"0 100 {e.port} {endpoint_hostname(e.pod, service)}.{base}")
        if not service.ports and service.selector:
            selected = {p.name: p for p in pods if p.namespace == service.namespace
                        and (p.ready or service.publish_not_ready)
                        and all(dict(p.labels).get(k) == v for k, v in service.selector)}
        for pod in sorted(selected.values(), key=lambda p: p.ip):
            host = endpoint_hostname(pod, service)
            self._add(base, "A", str(pod.ip))
            self._add(f"{host}.{base}", "A", str(pod.ip))
            self._add(_reverse(pod.ip), "PTR", f"{host}.{base}")

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

    def _fill(self, question, response) -> None:
        r = self.records
        name, qtype = question.name, question.rdtype
        if question.rdclass != dns.rdataclass.IN or not r.authoritative_for(name):
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        key = name.to_text().lower()
        if key not in r.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(r.soa)
            return
        found = defaultdict(list)
        for rdtype, text in r.records.get(key, ()):
            found[rdtype].append(text)
        if name == r.zone and qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            response.answer.append(r.soa)
        wanted = dns.rdatatype.to_text(qtype)
        for rdtype, texts in found.items():
            # a CNAME answers every type (its target is outside the zone: the client follows)
            if qtype == dns.rdatatype.ANY or rdtype == wanted or rdtype == "CNAME":
                response.answer.append(dns.rrset.from_text(name, TTL, "IN", rdtype, *texts))
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
