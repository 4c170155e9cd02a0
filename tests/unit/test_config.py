"""Config loading: the contract fields, deterministic allocation, and one clear error per problem."""
import textwrap
from ipaddress import IPv4Address

import pytest

from vrouter.model import config

BASE = """
cluster:
  podCIDR: 10.244.0.0/16
  serviceCIDR: 10.96.0.0/16
  overlay: {vni: 1, port: 4789, mtu: 1500}
nodes:
  - {name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}
  - {name: node-b, underlay: 127.0.0.12, podCIDR: 10.244.2.0/24}
pods:
  - {name: web-1, namespace: default, node: node-a, labels: {app: web}}
  - {name: web-2, node: node-a, ip: 10.244.1.20, labels: {app: web}}
  - {name: client, node: node-b}
"""


def parse(text, **kw):
    return config.parse(textwrap.dedent(text), "c.yaml", **kw)


def test_contract_example_loads():
    c = parse(BASE)
    assert [p.name for p in c.pods if not p.dns_server] == ["web-1", "web-2", "client"]
    assert c.pods[0].ip == IPv4Address("10.244.1.2")       # first free after the gateway
    assert c.pods[1].ip == IPv4Address("10.244.1.20")      # given
    assert c.pods[2].ip == IPv4Address("10.244.2.2")
    assert c.pods[1].namespace == "default"
    assert c.node("node-a").gateway == IPv4Address("10.244.1.1")
    assert c.overlay.pod_mtu == 1450
    assert c.pods[0].owns_netns and c.pods[0].netns == "web-1"
    assert c.name == "c"   # defaults to the file's stem


def test_allocation_is_deterministic_and_skips_given_addresses():
    text = BASE.replace("ip: 10.244.1.20", "ip: 10.244.1.2")
    a, b = parse(text), parse(text)
    assert [p.ip for p in a.pods] == [p.ip for p in b.pods]
    assert a.pods[0].ip == IPv4Address("10.244.1.3")   # .2 is web-2's
    assert len({p.mac for p in a.pods}) == len(a.pods) == 5   # 3 + a DNS server per node


def test_busy_polling_defaults_to_200_us_and_can_be_turned_off():
    assert parse(BASE).busy_poll_us == 200
    assert parse(BASE.replace("mtu: 1500}", "mtu: 1500}\n  busyPollMicroseconds: 0")).busy_poll_us == 0


def test_the_shipped_demo_config_is_valid():
    c = config.load("configs/demo.yaml", check_host=False)
    assert len(c.nodes) == 2
    assert all(len(c.pods_of(n.name)) >= 2 for n in c.nodes)


@pytest.mark.parametrize("edit, field, words", [
    (("labels: {app: web}}\n  - {name: client", "labels: {app: web}, colour: red}\n  - {name: client"),
     "pods[1].colour", "unknown field"),
    (("podCIDR: 10.244.0.0/16", "podCIDR: 10.244.0.0/33"), "cluster.podCIDR", "not a valid IPv4 CIDR"),
    (("podCIDR: 10.244.0.0/16", "podCIDR: 10.244.0.1/16"), "cluster.podCIDR", "not a valid IPv4 CIDR"),
    (("ip: 10.244.1.20", "ip: 10.244.2.20"), "pods[1].ip", "outside node 'node-a'"),
    (("ip: 10.244.1.20", "ip: 10.244.1.1"), "pods[1].ip", "gateway"),
    (("ip: 10.244.1.20", "ip: 10.244.1.255"), "pods[1].ip", "broadcast"),
    (("name: client", "name: web-1"), "pods[2].name", "duplicate pod name"),
    (("{name: client, node: node-b}", "{name: client, node: node-a, ip: 10.244.1.20}"),
     "pods[2].ip", "duplicate pod IP"),
    (("podCIDR: 10.244.2.0/24", "podCIDR: 10.245.2.0/24"), "nodes[1].podCIDR", "outside cluster.podCIDR"),
    (("podCIDR: 10.244.2.0/24", "podCIDR: 10.244.1.128/25"), "nodes[1].podCIDR", "overlaps"),
    (("node: node-b}", "node: node-c}"), "pods[2].node", "unknown node 'node-c'"),
    (("{name: client, node: node-b}", "{name: client, node: node-b, netns: vt-no-such-netns}"),
     "pods[2].netns", "does not exist"),
    (("vni: 1,", "vni: 0,"), "cluster.overlay.vni", "out of range"),
    (("port: 4789", "port: 70000"), "cluster.overlay.port", "out of range"),
    (("mtu: 1500", "mtu: big"), "cluster.overlay.mtu", "must be an integer"),
    (("mtu: 1500}", "mtu: 1500}\n  busyPollMicroseconds: -5"), "cluster.busyPollMicroseconds",
     "out of range"),
    (("mtu: 1500}", "mtu: 1500}\n  busyPollMicroseconds: 2ms"), "cluster.busyPollMicroseconds",
     "must be an integer"),
    (("underlay: 127.0.0.12", "underlay: 127.0.0.11"), "nodes[1].underlay", "already node 'node-a'"),
    (("underlay: 127.0.0.12", "underlay: 127.0.0.300"), "nodes[1].underlay", "not a valid IPv4 address"),
    (("serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.240.0.0/12"), "cluster.serviceCIDR", "overlaps"),
    (("serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.96.0.0/16\n  nodeNetwork: 10.96.7.0/24"),
     "cluster.nodeNetwork", "overlaps cluster.serviceCIDR"),
    (("serviceCIDR: 10.96.0.0/16", "serviceCIDR: 10.96.0.0/16\n  nodeNetwork: 172.18.0.0/30"),
     "cluster.nodeNetwork", "no room for 2 nodes"),
    (("podCIDR: 10.244.2.0/24}", "podCIDR: 10.244.2.0/24, address: 172.19.0.3}"),
     "nodes[1].address", "outside cluster.nodeNetwork 172.18.0.0/24"),
    (("podCIDR: 10.244.2.0/24}", "podCIDR: 10.244.2.0/24, address: 172.18.0.1}"),
     "nodes[1].address", "outside host"),
    (("podCIDR: 10.244.2.0/24}", "podCIDR: 10.244.2.0/24, address: 172.18.0.2}"),
     "nodes[1].address", "already node 'node-a'"),
    (("podCIDR: 10.244.1.0/24}", "podCIDR: 10.244.1.0/24, address: 172.18.0.3}"),
     "nodes[1].address", "taken by an earlier node"),
    (("name: client", "name: c-outside"), "pods", "outside namespace"),
])
def test_bad_config_names_file_field_and_problem(edit, field, words):
    old, new = edit
    assert old in BASE
    with pytest.raises(config.ConfigError) as err:
        parse(BASE.replace(old, new, 1))
    assert err.value.path == "c.yaml"
    assert err.value.field_path == field
    assert words in err.value.problem
    assert str(err.value).startswith(f"c.yaml: {field}: ")


def test_node_addresses_default_to_config_order_on_the_node_network():
    c = parse(BASE)
    assert [n.address for n in c.nodes] == [IPv4Address("172.18.0.2"), IPv4Address("172.18.0.3")]
    assert c.node("node-a").mac == "02:76:ac:12:00:02"
    assert (c.outside_netns, c.outside_host) == ("c-outside", IPv4Address("172.18.0.1"))
    c = parse(BASE.replace("serviceCIDR: 10.96.0.0/16",
                           "serviceCIDR: 10.96.0.0/16\n  nodeNetwork: 192.168.50.0/24").replace(
        "podCIDR: 10.244.2.0/24}", "podCIDR: 10.244.2.0/24, address: 192.168.50.77}"))
    assert [str(n.address) for n in c.nodes] == ["192.168.50.2", "192.168.50.77"]


def test_an_external_address_may_not_be_a_node_address():
    text = BASE + textwrap.dedent("""
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {selector: {app: web}, externalIPs: [172.18.0.3], ports: [{port: 80}]}
        """)
    with pytest.raises(config.ConfigError, match="172.18.0.3 is the address of node 'node-b'") \
            as err:
        parse(text)
    assert err.value.field_path == "document 2.spec.externalIPs[0]"
    assert "Service default/web" in err.value.problem and "nodes[1].address" in err.value.problem


def test_other_kubernetes_kinds_are_refused():
    text = BASE + "---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: web}\n"
    with pytest.raises(config.ConfigError, match="unsupported Kubernetes kind 'CronJob'") as err:
        parse(text)
    assert err.value.field_path == "document 2.kind"


def test_invalid_yaml_reports_the_line():
    with pytest.raises(config.ConfigError, match="invalid YAML") as err:
        parse(BASE + "pods: [\n")
    assert err.value.field_path.startswith("line ")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read file"):
        config.load(tmp_path / "nope.yaml")


def test_podcidr_exhaustion_is_reported():
    text = BASE.replace("podCIDR: 10.244.1.0/24", "podCIDR: 10.244.1.0/30").replace(
        "ip: 10.244.1.20", "ip: 10.244.1.2").replace("mtu: 1500}", "mtu: 1500}\n  dns: {enabled: false}")
    with pytest.raises(config.ConfigError, match="no free address") as err:
        parse(text)
    assert err.value.field_path == "pods[0]"


def test_every_node_gets_a_dns_server_pod_at_the_top_of_its_pod_cidr():
    c = parse(BASE)
    dns = [p for p in c.pods if p.dns_server]
    assert [(p.name, p.node, str(p.ip), p.namespace) for p in dns] == [
        ("c-dns-node-a", "node-a", "10.244.1.254", "kube-system"),
        ("c-dns-node-b", "node-b", "10.244.2.254", "kube-system")]
    assert dict(dns[0].labels) == {"k8s-app": "kube-dns"}
    assert str(c.dns.address) == "10.96.0.10" and c.dns.domain == "cluster.local"
    service = next(s for s in c.services if s.key == "kube-system/kube-dns")
    assert str(service.cluster_ip) == "10.96.0.10" and service.internal_policy == "Local"
    assert {(p.port, p.protocol) for p in service.ports} == {(53, "UDP"), (53, "TCP")}
    assert c.dns.resolv_conf("shop") == ("nameserver 10.96.0.10\nsearch shop.svc.cluster.local "
                                         "svc.cluster.local cluster.local\noptions ndots:5\n")


def test_dns_can_be_turned_off_or_moved():
    off = parse(BASE.replace("mtu: 1500}", "mtu: 1500}\n  dns: {enabled: false}"))
    assert not any(p.dns_server for p in off.pods) and not off.services
    moved = parse(BASE.replace("mtu: 1500}", "mtu: 1500}\n  dns: {address: 10.96.0.53, "
                                             "domain: k8s.example}"))
    assert str(moved.dns.address) == "10.96.0.53" and moved.dns.domain == "k8s.example"


@pytest.mark.parametrize("edit, field, words", [
    (("ip: 10.244.1.20", "ip: 10.244.1.254"), "pods[1].ip", "cluster DNS server"),
    (("mtu: 1500}", "mtu: 1500}\n  dns: {address: 10.97.0.1}"), "cluster.dns.address",
     "not a usable address"),
    (("mtu: 1500}", "mtu: 1500}\n  dns: {domain: 'Bad_Domain'}"), "cluster.dns.domain",
     "not a DNS domain"),
    (("mtu: 1500}", "mtu: 1500}\n  dns: {enabled: 'yes'}"), "cluster.dns.enabled",
     "not true or false"),
    (("mtu: 1500}", "mtu: 1500}\n  dns: {upstream: 8.8.8.8}"), "cluster.dns.upstream", "unknown"),
])
def test_bad_dns_settings_name_the_field(edit, field, words):
    with pytest.raises(config.ConfigError, match=words) as err:
        parse(BASE.replace(*edit))
    assert err.value.field_path == field
