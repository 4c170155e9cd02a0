"""Service manifests: what is accepted, what is allocated, which endpoints result, what is refused."""
import textwrap
from ipaddress import IPv4Address

import pytest

from vrouter.model import config, services

CLUSTER = """
cluster:
  podCIDR: 10.244.0.0/16
  serviceCIDR: 10.96.0.0/16
nodes:
  - {name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}
  - {name: node-b, underlay: 127.0.0.12, podCIDR: 10.244.2.0/24}
pods:
  - {name: web-1, node: node-a, labels: {app: web}, ports: [{name: http, containerPort: 8080}]}
  - {name: web-2, node: node-b, labels: {app: web}, ports: [{name: http, containerPort: 8081}]}
  - {name: web-3, node: node-b, labels: {app: web}}
  - {name: other, node: node-a, namespace: prod, labels: {app: web}}
"""


def user_services(c):
    """The file's Services, without the cluster DNS Service every cluster has."""
    return [s for s in c.services if s.key != "kube-system/kube-dns"]


def load(*docs, **kw):
    text = CLUSTER + "".join("---\n" + textwrap.dedent(d) for d in docs)
    return config.parse(text, "c.yaml", check_host=False, **kw)


WEB = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: raw, port: 81, targetPort: 9000, protocol: UDP}
"""


def test_endpoints_follow_selector_namespace_and_named_ports():
    c = load(WEB)
    (svc,) = user_services(c)
    http, raw = svc.ports
    assert [(e.pod.name, e.port) for e in services.endpoints(svc, http, c.pods)] == \
        [("web-1", 8080), ("web-2", 8081)]          # web-3 has no port named http; other: prod
    assert [(e.pod.name, e.port) for e in services.endpoints(svc, raw, c.pods)] == \
        [("web-1", 9000), ("web-2", 9000), ("web-3", 9000)]


def test_cluster_ip_and_node_ports_are_allocated_deterministically():
    np_svc = WEB.replace("name: web}", "name: web-np}").replace("spec:", "spec:\n  type: NodePort")
    a, b = load(WEB, np_svc), load(np_svc, WEB)
    ips = {s.name: s.cluster_ip for s in a.services}
    assert ips == {s.name: s.cluster_ip for s in b.services}      # independent of order
    assert all(IPv4Address("10.96.0.1") <= ip <= IPv4Address("10.96.255.254") for ip in ips.values())
    ports = [p.node_port for p in a.service_by_key("default/web-np").ports]
    assert all(30000 <= p <= 32767 for p in ports) and len(set(ports)) == 2
    assert [p.node_port for p in a.service_by_key("default/web").ports] == [None, None]


def test_given_values_are_kept_and_headless_has_no_address():
    c = load("""
        apiVersion: v1
        kind: Service
        metadata: {name: fixed}
        spec:
          type: LoadBalancer
          clusterIP: 10.96.0.100
          sessionAffinity: ClientIP
          externalTrafficPolicy: Local
          ports: [{port: 80, nodePort: 30080}]
          selector: {app: web}
        status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
        """, """
        apiVersion: v1
        kind: Service
        metadata: {name: hl}
        spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
        """)
    fixed, hl = user_services(c)
    assert fixed.cluster_ip == IPv4Address("10.96.0.100")
    assert fixed.ports[0].node_port == 30080 and fixed.ports[0].target_port == 80
    assert fixed.affinity_timeout == 10800 and fixed.external_policy == "Local"
    assert fixed.external_ips == (IPv4Address("192.0.2.10"),)
    assert hl.cluster_ip is None


@pytest.mark.parametrize("edit, field, words", [
    (("spec:", "spec:\n  type: ExternalName"), "document 2.spec.externalName", "not a DNS name"),
    (("spec:", "spec:\n  type: ExternalName\n  externalName: db.example.org"),
     "document 2.spec.selector", "not valid for type ExternalName"),
    (("spec:", "spec:\n  externalName: db.example.org"), "document 2.spec.externalName",
     "only valid for type ExternalName"),
    (("spec:", "spec:\n  loadBalancerSourceRanges: [10.0.0.0/8]"),
     "document 2.spec.loadBalancerSourceRanges", "not supported"),
    (("spec:", "spec:\n  sessionAffinity: Sticky"), "document 2.spec.sessionAffinity", "not None or"),
    (("spec:", "spec:\n  ipFamilies: [IPv6]"), "document 2.spec.ipFamilies", "IPv4-only"),
    (("spec:", "spec:\n  clusterIP: 10.97.0.1"), "document 2.spec.clusterIP", "outside"),
    (("spec:", "spec:\n  bogus: 1"), "document 2.spec.bogus", "unknown field"),
    (("protocol: UDP", "protocol: SCTP"), "document 2.spec.ports[1].protocol", "not supported"),
    (("{name: raw, ", "{"), "document 2.spec.ports[1].name", "several ports"),
    (("port: 81, targetPort: 9000, protocol: UDP", "port: 80"), "document 2.spec.ports[1].port",
     "TCP port 80 appears twice"),
])
def test_bad_service_names_field_and_problem(edit, field, words):
    bad = WEB.replace(*edit)
    with pytest.raises(config.ConfigError) as err:
        load(bad)
    assert err.value.field_path == field, err.value
    assert words in err.value.problem


def service(name, spec, status=""):
    """One Service document (flow-style spec)."""
    return f"""
    apiVersion: v1
    kind: Service
    metadata: {{name: {name}}}
    spec: {spec}
    """ + (f"status: {status}\n" if status else "")


def refused(*docs):
    with pytest.raises(config.ConfigError) as err:
        load(*docs)
    return err.value


NODE_PORT = "{type: NodePort, selector: {app: web}, ports: [{port: 80, nodePort: 30001%s}]}"


@pytest.mark.parametrize("second", ["", ", protocol: UDP"], ids=["same-protocol", "other-protocol"])
def test_a_given_node_port_belongs_to_one_service(second):
    err = refused(service("a", NODE_PORT % ""), service("b", NODE_PORT % second))
    assert (err.path, err.field_path) == ("c.yaml", "document 3.spec.ports[0].nodePort")
    assert "Service default/b" in err.problem and "Service default/a's" in err.problem
    assert "document 2.spec.ports[0].nodePort" in err.problem     # where the first one is


def test_one_service_may_use_a_node_port_for_tcp_and_udp():
    (svc,) = user_services(load(service("dns", "{type: NodePort, ports: ["
                                               "{name: u, port: 53, protocol: UDP, nodePort: 30053},"
                                               "{name: t, port: 53, nodePort: 30053}]}")))
    assert [(p.protocol, p.node_port) for p in svc.ports] == [("UDP", 30053), ("TCP", 30053)]
    err = refused(service("dns", "{type: NodePort, ports: [{name: u, port: 53, nodePort: 30053},"
                                 "{name: t, port: 54, nodePort: 30053}]}"))
    assert err.field_path == "document 2.spec.ports[1].nodePort" and "default/dns" in err.problem


def test_an_exhausted_node_port_range_is_an_error():
    low, high = services.NODE_PORT_RANGE
    ports = ", ".join(f"{{name: p{k}, port: {k + 1}}}" for k in range(high - low + 1))
    full = service("full", f"{{type: NodePort, ports: [{ports}]}}")
    c = load(full)          # every nodePort of the range, each once
    assert len({p.node_port for p in c.service_by_key("default/full").ports}) == high - low + 1
    err = refused(full, service("late", "{type: NodePort, ports: [{port: 80}]}"))
    assert err.field_path == "document 3.spec.ports[0].nodePort"
    assert "Service default/late" in err.problem and f"no nodePort is left in {low}-{high}" \
        in err.problem


EXTERNAL = "{selector: {app: web}, externalIPs: [%s], ports: [{port: %d%s}]}"


def test_one_external_address_port_and_protocol_is_one_services():
    first = service("a", EXTERNAL % ("192.0.2.7", 80, ""))
    err = refused(first, service("b", EXTERNAL % ("192.0.2.9, 192.0.2.7", 80, "")))
    assert (err.path, err.field_path) == ("c.yaml", "document 3.spec.externalIPs[1]")
    assert "192.0.2.7:80/TCP of Service default/b" in err.problem
    assert "already served by Service default/a (c.yaml: document 2.spec.externalIPs[0]" \
        in err.problem
    lb = service("lb", "{type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}",
                 "{loadBalancer: {ingress: [{ip: 192.0.2.7}]}}")
    err = refused(first, lb)
    assert err.field_path == "document 3.status.loadBalancer.ingress[0].ip"
    assert "default/lb" in err.problem and "default/a" in err.problem
    # another port, or another protocol, of the same address is another frontend
    c = load(first, service("b", EXTERNAL % ("192.0.2.7", 81, "")),
             service("c", EXTERNAL % ("192.0.2.7", 80, ", protocol: UDP")))
    assert len(user_services(c)) == 3


@pytest.mark.parametrize("spec, status, field, words", [
    (EXTERNAL % ("10.244.1.9", 80, ""), "", "document 2.spec.externalIPs[0]",
     "10.244.1.9 is inside cluster.podCIDR 10.244.0.0/16"),
    ("{type: LoadBalancer, loadBalancerIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80}]}",
     "", "document 2.spec.loadBalancerIP", "10.96.0.1 is inside cluster.serviceCIDR 10.96.0.0/16"),
    ("{type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}",
     "{loadBalancer: {ingress: [{ip: 10.244.2.2}]}}", "document 2.status.loadBalancer.ingress[0].ip",
     "10.244.2.2 is inside cluster.podCIDR"),
    (EXTERNAL % ("172.18.0.2", 80, ""), "", "document 2.spec.externalIPs[0]",
     "172.18.0.2 is the address of node 'node-a' on cluster.nodeNetwork (nodes[0].address)"),
    (EXTERNAL % ("172.18.0.1", 80, ""), "", "document 2.spec.externalIPs[0]",
     "the outside host's address"),
])
def test_an_external_address_may_not_take_over_cluster_addresses(spec, status, field, words):
    """CVE-2020-8554: an externalIP inside the podCIDR (or serviceCIDR, or a node's address)
    would capture the traffic of the pod (Service, node) that has it."""
    err = refused(service("hijack", spec, status))
    assert (err.path, err.field_path) == ("c.yaml", field)
    assert "Service default/hijack" in err.problem and words in err.problem


@pytest.mark.parametrize("address, words", [
    ("127.0.0.5", "loopback"), ("169.254.169.254", "link-local"), ("0.0.0.0", "unspecified"),
    ("224.0.0.9", "link-local multicast")])
def test_special_external_addresses_are_refused_as_kubernetes_does(address, words):
    err = refused(service("odd", EXTERNAL % (address, 80, "")))
    assert err.field_path == "document 2.spec.externalIPs[0]"
    assert f"may not be in the {words} range" in err.problem


def test_cluster_ips_are_inside_service_cidr_and_given_once():
    err = refused(service("a", "{clusterIP: 10.97.0.1, ports: [{port: 80}]}"))
    assert err.field_path == "document 2.spec.clusterIP"
    assert "Service default/a: 10.97.0.1 is outside cluster.serviceCIDR 10.96.0.0/16" in err.problem
    err = refused(service("a", "{clusterIP: 10.96.0.77, ports: [{port: 80}]}"),
                  service("b", "{clusterIP: 10.96.0.77, ports: [{port: 81}]}"))
    assert err.field_path == "document 3.spec.clusterIP"
    assert "Service default/b: 10.96.0.77 is already taken by Service default/a (c.yaml: " \
           "document 2.spec.clusterIP)" in err.problem


def test_manifests_directory_errors_name_the_manifest_file(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text(CLUSTER)
    manifests = tmp_path / "svc"
    manifests.mkdir()
    (manifests / "web.yaml").write_text(textwrap.dedent(WEB))
    c = config.load(cluster, check_host=False, manifests=manifests)
    assert [s.name for s in user_services(c)] == ["web"]
    (manifests / "bad.yaml").write_text(textwrap.dedent(WEB).replace("name: web}", "name: Bad}"))
    with pytest.raises(config.ConfigError) as err:
        config.load(cluster, check_host=False, manifests=manifests)
    assert err.value.path == str(manifests / "bad.yaml")
    assert err.value.field_path == "document 1.metadata.name"


def test_kubectl_list_output_is_accepted():
    listing = """
    apiVersion: v1
    kind: List
    items:
      - apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: default, uid: abc, resourceVersion: "1"}
        spec:
          clusterIP: 10.96.0.20
          clusterIPs: [10.96.0.20]
          ipFamilies: [IPv4]
          ipFamilyPolicy: SingleStack
          internalTrafficPolicy: Cluster
          sessionAffinity: None
          type: ClusterIP
          selector: {app: web}
          ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
        status: {loadBalancer: {}}
    """
    (svc,) = user_services(load(listing))
    assert svc.cluster_ip == IPv4Address("10.96.0.20")


def test_maglev_table_size_must_be_prime():
    with pytest.raises(config.ConfigError, match="not a prime") as err:
        config.parse(CLUSTER.replace("serviceCIDR: 10.96.0.0/16",
                                     "serviceCIDR: 10.96.0.0/16\n  services: {maglevTableSize: 1000}"),
                     "c.yaml", check_host=False)
    assert err.value.field_path == "cluster.services.maglevTableSize"


def test_external_name_is_a_dns_name_only():
    (svc,) = user_services(load("""
    apiVersion: v1
    kind: Service
    metadata: {name: db, namespace: prod}
    spec: {type: ExternalName, externalName: DB.Example.org.}
    """))
    assert (svc.type, svc.external_name, svc.cluster_ip, svc.ports) == (
        "ExternalName", "db.example.org", None, ())


def test_the_dns_address_is_not_given_to_another_service():
    with pytest.raises(config.ConfigError, match="taken by cluster DNS") as err:
        load(WEB.replace("spec:", "spec:\n  clusterIP: 10.96.0.10"))
    assert err.value.field_path == "document 2.spec.clusterIP"
    for k in range(300):   # allocated addresses skip it
        c = load(WEB.replace("name: web}", f"name: web-{k}}}"))
        assert user_services(c)[0].cluster_ip != c.dns.address


# --- host ports -----------------------------------------------------------------------------------

HOST_PORTS = """
pods:
  - {name: web-1, node: node-a, ports: [{containerPort: 80, hostPort: 8080},
                                        {containerPort: 53, hostPort: 5353, protocol: UDP}]}
  - {name: web-2, node: node-b, ports: [{containerPort: 80, hostPort: 8080}]}
"""


def host_port_cluster(pods=HOST_PORTS, *docs):
    head = CLUSTER.split("pods:")[0]
    text = head + textwrap.dedent(pods) + "".join("---\n" + textwrap.dedent(d) for d in docs)
    return config.parse(text, "c.yaml", check_host=False)


def test_host_ports_are_frontends_of_their_own_node_only():
    from vrouter.node import servicetables
    c = host_port_cluster()
    for node, expected in (("node-a", {("10.244.1.2:80", "TCP", 8080), ("10.244.1.2:53", "UDP",
                                                                        5353)}),
                           ("node-b", {("10.244.2.2:80", "TCP", 8080)})):
        tables = servicetables.build(c, node)
        hosts = [f for f in tables.frontends if f.port_name == "hostPort"]
        assert {(f.backends[0], f.protocol, f.port) for f in hosts} == expected
        address = str(c.node(node).address)
        assert all(f.address == address and not f.snat and f.scope == "node-local"
                   for f in hosts)          # the client's address is kept, as portmap keeps it
        assert tables.shadowed == []


def test_a_service_node_port_on_the_same_port_wins_and_the_host_port_is_reported():
    from vrouter.node import servicetables
    nodeport = """
    apiVersion: v1
    kind: Service
    metadata: {name: np}
    spec:
      type: NodePort
      selector: {app: none}
      ports: [{port: 80, nodePort: 30080}]
    """
    pods = HOST_PORTS.replace("hostPort: 8080}", "hostPort: 30080}")
    c = host_port_cluster(pods, nodeport)
    tables = servicetables.build(c, "node-a")
    assert [f.service for f in tables.frontends if f.port == 30080] == ["default/np"]
    assert tables.shadowed == [f"{c.node('node-a').address}:30080/TCP of pod default/web-1"]


@pytest.mark.parametrize("pods, field, words", [
    ("""
     pods:
       - {name: a, node: node-a, ports: [{containerPort: 80, hostPort: 8080}]}
       - {name: b, node: node-a, ports: [{containerPort: 81, hostPort: 8080}]}
     """, "pods[1].ports", "hostPort 8080/TCP is taken on node 'node-a' by pod 'a'"),
    ("""
     pods:
       - {name: a, node: node-a, ports: [{containerPort: 80, hostPort: 0}]}
     """, "pods[0].ports[0].hostPort", "0"),
    ("""
     pods:
       - {name: a, node: node-a, ports: [{containerPort: 80, hostPort: 80, protocol: SCTP}]}
     """, "pods[0].ports[0].hostPort", "not SCTP"),
])
def test_bad_host_ports_name_the_field(pods, field, words):
    with pytest.raises(config.ConfigError) as err:
        host_port_cluster(pods)
    assert err.value.field_path == field and words in str(err.value), str(err.value)


def test_one_host_port_for_tcp_and_udp_and_on_two_nodes_is_fine():
    c = host_port_cluster("""
    pods:
      - {name: a, node: node-a, ports: [{containerPort: 80, hostPort: 8080}]}
      - {name: b, node: node-a, ports: [{containerPort: 80, hostPort: 8080, protocol: UDP}]}
      - {name: c, node: node-b, ports: [{containerPort: 80, hostPort: 8080}]}
    """)
    assert sorted(cp.host_port for p in c.pods for cp in p.ports) == [8080, 8080, 8080]
