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


STATEFUL = """\
cluster: {name: sts, podCIDR: 10.244.0.0/16}
nodes:
  - {name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}
  - {name: node-b, underlay: 127.0.0.12, podCIDR: 10.244.2.0/24}
---
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: nginx}
  ports: [{name: web, port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: nginx
  replicas: 2
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      containers: [{name: nginx, image: nginx, ports: [{name: web, containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: busybox-subdomain}
spec:
  clusterIP: None
  selector: {name: busybox}
  ports: [{name: foo, port: 1234}]
---
apiVersion: v1
kind: Pod
metadata: {name: busybox1, labels: {name: busybox}}
spec:
  hostname: busybox-1
  subdomain: busybox-subdomain
  nodeName: node-b
  containers: [{name: busybox, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: busybox2, labels: {name: busybox}}
spec:
  hostname: busybox-2
  subdomain: other
  nodeName: node-b
  containers: [{name: busybox, image: busybox}]
"""


def test_hostname_and_subdomain_name_the_endpoints_of_a_headless_service():
    """The DNS specification's endpoint hostname: a StatefulSet's NAME-K.SERVICE, and the
    Kubernetes documentation's busybox-1.busybox-subdomain example."""
    cluster = config.parse(STATEFUL, "sts.yaml", check_host=False)
    r = Resolver(cluster)
    ip = {p.name: str(p.ip) for p in cluster.pods}
    zone = "default.svc.cluster.local"
    assert records(ask(r, f"web-0.nginx.{zone}")) == [ip["web-0"]]
    assert records(ask(r, f"web-1.nginx.{zone}")) == [ip["web-1"]]
    assert records(ask(r, f"nginx.{zone}")) == sorted([ip["web-0"], ip["web-1"]])
    assert records(ask(r, f"_web._tcp.nginx.{zone}", "SRV")) == sorted(
        f"0 100 80 web-{k}.nginx.{zone}." for k in (0, 1))
    assert f"web-0.nginx.{zone}." in records(ask(r, cluster.pod("web-0").ip.reverse_pointer,
                                                 "PTR"))
    # a hostname names its pod only in the Service its subdomain names
    assert records(ask(r, f"busybox-1.busybox-subdomain.{zone}")) == [ip["busybox1"]]
    dashed2 = ip["busybox2"].replace(".", "-")
    assert ask(r, f"busybox-2.busybox-subdomain.{zone}").rcode() == dns.rcode.NXDOMAIN
    assert records(ask(r, f"{dashed2}.busybox-subdomain.{zone}")) == [ip["busybox2"]]
    # with a hostname, the dashed address is no endpoint name any more
    dashed0 = ip["web-0"].replace(".", "-")
    assert ask(r, f"{dashed0}.nginx.{zone}").rcode() == dns.rcode.NXDOMAIN


def test_a_pod_that_is_not_ready_is_no_headless_endpoint_unless_published():
    import dataclasses
    cluster = config.parse(STATEFUL, "sts.yaml", check_host=False)
    pods = tuple(dataclasses.replace(p, ready=False) if p.name == "web-1" else p
                 for p in cluster.pods)
    live = dataclasses.replace(cluster, pods=pods)
    zone = "default.svc.cluster.local"
    r = Resolver(live)
    assert records(ask(r, f"nginx.{zone}")) == [str(cluster.pod("web-0").ip)]
    assert ask(r, f"web-1.nginx.{zone}").rcode() == dns.rcode.NXDOMAIN
    published = config.parse(STATEFUL.replace("  clusterIP: None\n  selector: {app: nginx}",
                                              "  clusterIP: None\n  publishNotReadyAddresses: true"
                                              "\n  selector: {app: nginx}"), "sts.yaml",
                             check_host=False)
    r = Resolver(dataclasses.replace(published, pods=pods))
    assert records(ask(r, f"web-1.nginx.{zone}")) == [str(cluster.pod("web-1").ip)]
