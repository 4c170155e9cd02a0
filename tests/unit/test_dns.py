"""Cluster DNS answers (vrouter.model.dns), sans-IO, with dnspython as the client."""
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from vrouter.model import config
from vrouter.model.dns import Resolver

SERVICES = "configs/services.yaml"


@pytest.fixture(scope="module")
def cluster():
    return config.load(SERVICES, check_host=False)


def ask(resolver, name, rdtype="A", limit=512, **kw):
    query = dns.message.make_query(name, rdtype, **kw)
    return dns.message.from_wire(resolver.answer(query.to_wire(), limit))


def records(reply):
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


def answers(reply, rdtype=None):
    """(name, ttl, type, rdata) of the answer section."""
    return sorted((rrset.name.to_text(), rrset.ttl, dns.rdatatype.to_text(rrset.rdtype),
                   rd.to_text()) for rrset in reply.answer for rd in rrset
                  if rdtype is None or dns.rdatatype.to_text(rrset.rdtype) == rdtype)


def web_pods(cluster):
    return sorted((p for p in cluster.pods if dict(p.labels).get("app") == "web"),
                  key=lambda p: p.ip)


# --- the specification, section by section (kubernetes/dns docs/specification.md, 1.1.0) --------

def test_2_2_the_schema_version_record(cluster):
    reply = ask(Resolver(cluster), "dns-version.cluster.local", "TXT")
    assert answers(reply) == [("dns-version.cluster.local.", 28800, "TXT", '"1.1.0"')]


def test_2_3_1_a_clusterip_service_has_an_a_record(cluster):
    reply = ask(Resolver(cluster), "web.default.svc.cluster.local")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert answers(reply) == [("web.default.svc.cluster.local.", 30, "A", "10.96.0.100")]
    assert records(ask(Resolver(cluster), "kube-dns.kube-system.svc.cluster.local")) == \
        ["10.96.0.10"]


def test_2_3_2_srv_for_each_named_port_and_the_target_as_additional(cluster):
    reply = ask(Resolver(cluster), "_http._tcp.web.default.svc.cluster.local", "SRV")
    assert records(reply) == ["0 100 80 web.default.svc.cluster.local."]
    extra = [(r.name.to_text(), rd.to_text()) for r in reply.additional for rd in r]
    assert extra == [("web.default.svc.cluster.local.", "10.96.0.100")]
    # an unnamed port has no _port._proto record
    text = open(SERVICES).read() + """
---
apiVersion: v1
kind: Service
metadata: {name: plain}
spec: {selector: {app: web}, ports: [{port: 81}]}
"""
    r = Resolver(config.parse(text, "s.yaml", check_host=False))
    assert ask(r, "_81._tcp.plain.default.svc.cluster.local", "SRV").rcode() == dns.rcode.NXDOMAIN
    # as CoreDNS adds: SRV on the Service's own name, every port
    assert records(ask(r, "plain.default.svc.cluster.local", "SRV")) == \
        ["0 100 81 plain.default.svc.cluster.local."]


def test_2_3_3_ptr_of_a_clusterip(cluster):
    reply = ask(Resolver(cluster), "100.0.96.10.in-addr.arpa", "PTR")
    assert records(reply) == ["web.default.svc.cluster.local."]


def test_2_4_1_a_headless_service_has_an_a_record_per_ready_endpoint_and_per_hostname(cluster):
    r = Resolver(cluster)
    web = [str(p.ip) for p in web_pods(cluster)]
    assert records(ask(r, "web-pods.default.svc.cluster.local")) == sorted(web)
    first = web[0].replace(".", "-")   # no spec.hostname: CoreDNS's dashed address
    assert records(ask(r, f"{first}.web-pods.default.svc.cluster.local")) == [web[0]]
    assert ask(r, "bogus.web-pods.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_2_4_1_a_headless_service_without_ready_endpoints_is_nxdomain():
    text = open(SERVICES).read() + """
---
apiVersion: v1
kind: Service
metadata: {name: lonely}
spec: {clusterIP: None, selector: {app: nobody}, ports: [{name: p, port: 80}]}
"""
    r = Resolver(config.parse(text, "s.yaml", check_host=False))
    reply = ask(r, "lonely.default.svc.cluster.local")
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.authority


def test_2_4_2_headless_srv_per_endpoint_and_port_with_coredns_weights(cluster):
    r = Resolver(cluster)
    web = [str(p.ip) for p in web_pods(cluster)]
    reply = ask(r, "_http._tcp.web-pods.default.svc.cluster.local", "SRV")
    weight = 100 // len(web)   # CoreDNS shares 100 among the records of a priority
    assert records(reply) == sorted(
        f"0 {weight} 8080 {ip.replace('.', '-')}.web-pods.default.svc.cluster.local." for ip in web)
    extra = sorted(rd.to_text() for rrset in reply.additional for rd in rrset)
    assert extra == sorted(web)


def test_2_4_3_ptr_of_an_endpoint_names_its_hostname(cluster):
    r = Resolver(cluster)
    pod = web_pods(cluster)[0]
    ptrs = records(ask(r, pod.ip.reverse_pointer, "PTR"))
    assert f"{str(pod.ip).replace('.', '-')}.web-pods.default.svc.cluster.local." in ptrs


def test_2_5_an_external_name_service_is_a_cname(cluster):
    reply = ask(Resolver(cluster), "docs.default.svc.cluster.local")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME]
    assert records(reply) == ["docs.example.org."]
    # its subdomains are not the external service (CoreDNS: NXDOMAIN)
    assert ask(Resolver(cluster), "x.docs.default.svc.cluster.local", "CNAME").rcode() == \
        dns.rcode.NXDOMAIN


def test_2_5_an_external_name_inside_the_cluster_is_followed():
    text = open(SERVICES).read() + """
---
apiVersion: v1
kind: Service
metadata: {name: alias}
spec: {type: ExternalName, externalName: web.default.svc.cluster.local}
"""
    reply = ask(Resolver(config.parse(text, "s.yaml", check_host=False)),
                "alias.default.svc.cluster.local")
    assert answers(reply) == [("alias.default.svc.cluster.local.", 30, "CNAME",
                               "web.default.svc.cluster.local."),
                              ("web.default.svc.cluster.local.", 30, "A", "10.96.0.100")]


# --- where the specification leaves a choice: CoreDNS's kubernetes plugin, as kubeadm sets it ---

def with_dns(**dns_options):
    opts = ", ".join(f"{k}: {v}" for k, v in dns_options.items())
    text = open(SERVICES).read().replace("cluster:\n", f"cluster:\n  dns: {{{opts}}}\n", 1)
    return config.parse(text, "s.yaml", check_host=False)


def test_pod_records_insecure_answer_any_address_of_an_existing_namespace(cluster):
    r = Resolver(cluster)   # kubeadm's Corefile: pods insecure
    assert records(ask(r, "1-2-3-4.default.pod.cluster.local")) == ["1.2.3.4"]
    assert ask(r, "1-2-3-4.nosuchns.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert ask(r, "not-an-ip.default.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_pod_records_verified_answer_only_pods_of_that_namespace():
    cluster = with_dns(pods="verified")
    r = Resolver(cluster)
    pod = cluster.pods[0]
    name = f"{str(pod.ip).replace('.', '-')}.{pod.namespace}.pod.cluster.local."
    assert records(ask(r, name)) == [str(pod.ip)]
    assert ask(r, "1-2-3-4.default.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert ask(r, name.replace(f".{pod.namespace}.", ".kube-system.")).rcode() == \
        dns.rcode.NXDOMAIN


def test_pod_records_disabled():
    r = Resolver(with_dns(pods="disabled"))
    assert ask(r, "1-2-3-4.default.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_the_ttl_is_kubeadms_and_configurable(cluster):
    assert answers(ask(Resolver(cluster), "web.default.svc.cluster.local"))[0][1] == 30
    r = Resolver(with_dns(ttl=5))
    assert answers(ask(r, "web.default.svc.cluster.local"))[0][1] == 5
    soa = ask(r, "nope.default.svc.cluster.local").authority[0]
    assert soa.ttl == 5 and soa[0].minimum == 5


def test_publish_not_ready_addresses_puts_pods_not_yet_attached_in_dns():
    text = open(SERVICES).read().replace(
        "pods:\n", "pods:\n  - {name: late, node: node-a, netns: cni, labels: {app: peer}}\n", 1)
    for publish, expected in (("false", dns.rcode.NXDOMAIN), ("true", dns.rcode.NOERROR)):
        doc = text + f"""
---
apiVersion: v1
kind: Service
metadata: {{name: peers}}
spec: {{clusterIP: None, publishNotReadyAddresses: {publish}, selector: {{app: peer}},
        ports: [{{name: p, port: 80}}]}}
"""
        r = Resolver(config.parse(doc, "s.yaml", check_host=False))
        assert ask(r, "peers.default.svc.cluster.local").rcode() == expected, publish


@pytest.mark.parametrize("name, rdtype, rcode, soa", [
    ("nope.default.svc.cluster.local", "A", dns.rcode.NXDOMAIN, True),
    ("nope.nosuchns.svc.cluster.local", "A", dns.rcode.NXDOMAIN, True),
    ("web.default.svc.cluster.local", "AAAA", dns.rcode.NOERROR, True),    # NODATA
    ("web.default.svc.cluster.local", "TXT", dns.rcode.NOERROR, True),
    ("web.default.svc.cluster.local", "SOA", dns.rcode.NOERROR, True),
    ("default.svc.cluster.local", "A", dns.rcode.NOERROR, True),           # a namespace
    ("kube-system.svc.cluster.local", "A", dns.rcode.NOERROR, True),
    ("svc.cluster.local", "A", dns.rcode.NOERROR, True),
    ("pod.cluster.local", "A", dns.rcode.NOERROR, True),
    ("default.pod.cluster.local", "A", dns.rcode.NOERROR, True),
    ("svc.cluster.local", "NS", dns.rcode.NOERROR, True),
    ("foo.cluster.local", "NS", dns.rcode.NXDOMAIN, True),
    ("foo.svc.cluster.local", "NS", dns.rcode.NXDOMAIN, True),
    ("9.9.244.10.in-addr.arpa", "PTR", dns.rcode.NXDOMAIN, True),          # in the pod CIDR
    ("example.org", "A", dns.rcode.REFUSED, False),                        # no upstream
    ("8.8.8.8.in-addr.arpa", "PTR", dns.rcode.REFUSED, False),
])
def test_negative_answers_as_coredns_gives_them(cluster, name, rdtype, rcode, soa):
    reply = ask(Resolver(cluster), name, rdtype)
    assert reply.rcode() == rcode and not reply.answer
    assert bool(reply.authority) == soa
    if soa:
        assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_the_zone_has_its_soa_and_ns(cluster):
    r = Resolver(cluster)
    assert [rr.rdtype for rr in ask(r, "cluster.local", "SOA").answer] == [dns.rdatatype.SOA]
    assert records(ask(r, "cluster.local", "NS")) == ["ns.dns.cluster.local."]
    assert records(ask(r, "ns.dns.cluster.local")) == ["10.96.0.10"]


def test_names_are_case_insensitive_and_keep_the_question_case(cluster):
    reply = ask(Resolver(cluster), "WEB.Default.SVC.cluster.local")
    assert records(reply) == ["10.96.0.100"]
    assert reply.answer[0].name.to_text() == "WEB.Default.SVC.cluster.local."


def test_malformed_queries_get_formerr_or_are_dropped(cluster):
    r = Resolver(cluster)
    assert r.answer(b"\x12\x34\x01") is None                       # no header: dropped
    reply = r.answer(b"\x12\x34\x01\x00\x00\x01" + bytes(6) + b"\xff\xff")   # question cut short
    assert reply[:2] == b"\x12\x34" and reply[2] & 0x80 and reply[3] & 0xF == dns.rcode.FORMERR
    response = dns.message.make_response(dns.message.make_query("web.default.svc.cluster.local",
                                                                "A"))
    assert r.answer(response.to_wire()) is None                   # a response: dropped
    assert r.counts["FORMERR"] == 1 and r.counts["dropped"] == 2


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp(cluster):
    pods = "\n".join(f"  - {{name: w{k}, node: node-a, labels: {{app: many}}}}" for k in range(60))
    text = open(SERVICES).read().replace("pods:\n", f"pods:\n{pods}\n", 1) + """
---
apiVersion: v1
kind: Service
metadata: {name: many}
spec: {clusterIP: None, selector: {app: many}, ports: [{port: 80}]}
"""
    r = Resolver(config.parse(text, "s.yaml", check_host=False))
    udp = ask(r, "many.default.svc.cluster.local")
    assert udp.flags & dns.flags.TC and not udp.answer
    assert len(records(ask(r, "many.default.svc.cluster.local", limit=None))) == 60
    assert len(records(ask(r, "many.default.svc.cluster.local", use_edns=0, payload=4096))) == 60


def test_records_follow_the_model(cluster):
    r = Resolver(cluster)
    assert ask(r, "late.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    text = open(SERVICES).read() + """
---
apiVersion: v1
kind: Service
metadata: {name: late}
spec: {selector: {app: web}, ports: [{port: 80}]}
"""
    r.update(config.parse(text, "s.yaml", check_host=False))
    assert ask(r, "late.default.svc.cluster.local").rcode() == dns.rcode.NOERROR
