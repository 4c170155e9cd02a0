"""Cluster DNS answers (vrouter.model.dns), sans-IO, with dnspython as the client."""
import dns.flags
import dns.message
import dns.rcode
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


def test_service_a_srv_and_ptr(cluster):
    r = Resolver(cluster)
    reply = ask(r, "web.default.svc.cluster.local")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert records(reply) == ["10.96.0.100"]
    assert records(ask(r, "_http._tcp.web.default.svc.cluster.local", "SRV")) == [
        "0 100 80 web.default.svc.cluster.local."]
    assert records(ask(r, "100.0.96.10.in-addr.arpa", "PTR")) == ["web.default.svc.cluster.local."]
    assert records(ask(r, "kube-dns.kube-system.svc.cluster.local")) == ["10.96.0.10"]


def test_headless_service_answers_with_its_endpoints(cluster):
    r = Resolver(cluster)
    web = sorted(str(p.ip) for p in cluster.pods if dict(p.labels).get("app") == "web")
    assert records(ask(r, "web-pods.default.svc.cluster.local")) == web
    srv = records(ask(r, "_http._tcp.web-pods.default.svc.cluster.local", "SRV"))
    assert srv == sorted(f"0 100 8080 {ip.replace('.', '-')}.web-pods.default.svc.cluster.local."
                         for ip in web)
    first = web[0].replace(".", "-")
    assert records(ask(r, f"{first}.web-pods.default.svc.cluster.local")) == [web[0]]


def test_pod_records_and_their_ptr(cluster):
    r = Resolver(cluster)
    pod = cluster.pods[0]
    name = f"{str(pod.ip).replace('.', '-')}.{pod.namespace}.pod.cluster.local."
    assert records(ask(r, name)) == [str(pod.ip)]
    assert name in records(ask(r, pod.ip.reverse_pointer, "PTR"))
    # an address that is no pod of that namespace does not exist
    assert ask(r, name.replace(".default.", ".prod.")).rcode() == dns.rcode.NXDOMAIN


def test_external_name_is_a_cname(cluster):
    reply = ask(Resolver(cluster), "docs.default.svc.cluster.local")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME]
    assert records(reply) == ["docs.example.org."]


@pytest.mark.parametrize("name, rdtype, rcode, soa", [
    ("nope.default.svc.cluster.local", "A", dns.rcode.NXDOMAIN, True),
    ("web.default.svc.cluster.local", "AAAA", dns.rcode.NOERROR, True),    # NODATA
    ("default.svc.cluster.local", "A", dns.rcode.NOERROR, True),           # an empty non-terminal
    ("9.9.244.10.in-addr.arpa", "PTR", dns.rcode.NXDOMAIN, True),          # in the pod CIDR
    ("example.org", "A", dns.rcode.REFUSED, False),                        # no upstream
    ("8.8.8.8.in-addr.arpa", "PTR", dns.rcode.REFUSED, False),
])
def test_negative_answers(cluster, name, rdtype, rcode, soa):
    reply = ask(Resolver(cluster), name, rdtype)
    assert reply.rcode() == rcode and not reply.answer
    assert bool(reply.authority) == soa


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
