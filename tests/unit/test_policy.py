"""NetworkPolicy, Namespace and Pod manifests: what is accepted, what each error names, and the
reference decision (vrouter.model.policy.allows)."""
import pytest

from vrouter.model import config
from vrouter.model.policy import EGRESS, INGRESS, allows

BASE = open("configs/demo.yaml").read()


def parse(*docs, path="cluster.yaml", manifests=()):
    return config.parse(BASE + "".join(docs), path, check_host=False, manifests=list(manifests))


def netpol(spec: str, name="p", namespace="default") -> str:
    return (f"\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")


NAMESPACE = "\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: blue, labels: {team: blue}}\n"
POD = ("\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: api-1, namespace: blue, labels: {app: api}}\n"
       "spec:\n  nodeName: node-b\n  containers:\n  - name: api\n    image: busybox\n"
       "    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]\n")


def test_pod_and_namespace_manifests_join_the_pods_list():
    cluster = parse(NAMESPACE, POD)
    pod = cluster.pod("api-1")
    assert (pod.namespace, pod.node, dict(pod.labels)) == ("blue", "node-b", {"app": "api"})
    assert [(p.name, p.container_port, p.protocol) for p in pod.ports] == [
        ("http", 8080, "TCP"), ("dns", 53, "UDP")]
    assert str(pod.ip) == "10.244.2.4" and pod.owns_netns   # after the pods list's own
    assert [ns.name for ns in cluster.namespaces] == ["blue"]


def test_manifests_from_a_directory(tmp_path):
    (tmp_path / "pods.yaml").write_text(NAMESPACE + POD + netpol("  podSelector: {}\n",
                                                               namespace="blue"))
    cluster = config.parse(BASE, "cluster.yaml", check_host=False,
                           manifests=[(str(tmp_path / "pods.yaml"),
                                       (tmp_path / "pods.yaml").read_text())])
    assert [p.key for p in cluster.policies] == ["blue/p"]
    assert cluster.pod("api-1").namespace == "blue"


@pytest.mark.parametrize("doc, field, problem", [
    (POD.replace("nodeName: node-b", "nodeName: node-z"), "document 2.spec.nodeName",
     "unknown node 'node-z'"),
    (POD.replace("  nodeName: node-b\n", "  nodeName: node-b\n  hostNetwork: true\n"),
     "document 2.spec.hostNetwork", "unknown field"),
    (POD.replace("image: busybox", "image: busybox\n    env: []"),
     "document 2.spec.containers[0].env", "unknown field"),
    (POD.replace("name: api-1", "name: web-1"), "document 2.metadata.name",
     "duplicate pod name 'web-1'"),
    (NAMESPACE.replace("apiVersion: v1", "apiVersion: v2"), "document 2.apiVersion", "v1"),
])
def test_bad_pod_and_namespace_manifests_name_the_field(doc, field, problem):
    with pytest.raises(config.ConfigError, match=problem) as err:
        parse(doc)
    assert err.value.field_path == field and err.value.path == "cluster.yaml"


@pytest.mark.parametrize("spec, field, problem", [
    ("  podSelector: {matchExpressions: [{key: app, operator: Like, values: [web]}]}\n",
     "spec.podSelector.matchExpressions[0].operator", "'Like' is not a selector operator"),
    ("  podSelector: {matchExpressions: [{key: app, operator: In}]}\n",
     "spec.podSelector.matchExpressions[0].values", "must not be empty"),
    ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
     "spec.ingress[0].from[0].ipBlock.cidr", "not a valid IPv4 CIDR"),
    ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]\n",
     "spec.ingress[0].from[0].ipBlock.except[0]", "not strictly inside"),
    ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n",
     "spec.ingress[0].from[0].ipBlock", "cannot be combined"),
    ("  podSelector: {}\n  ingress: [{ports: [{endPort: 90}]}]\n",
     "spec.ingress[0].ports[0].endPort", "needs a port"),
    ("  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]\n",
     "spec.ingress[0].ports[0].endPort", "80 is below port 90"),
    ("  podSelector: {}\n  egress: [{ports: [{port: http, endPort: 80}]}]\n",
     "spec.egress[0].ports[0].endPort", "not allowed with a named port"),
    ("  podSelector: {}\n  ingress: [{ports: [{port: 53, protocol: ICMP}]}]\n",
     "spec.ingress[0].ports[0].protocol", "'ICMP' is not a protocol"),
    ("  podSelector: {}\n  policyTypes: [Inbound]\n",
     "spec.policyTypes", "Ingress and/or Egress"),
    ("  podSelector: {}\n  ingress: [{sources: []}]\n", "spec.ingress[0].sources", "unknown field"),
])
def test_invalid_policies_name_the_file_the_field_and_the_problem(spec, field, problem):
    with pytest.raises(config.ConfigError, match=problem) as err:
        parse(netpol(spec))
    assert err.value.path == "cluster.yaml"
    assert err.value.field_path == f"document 2.{field}"


def test_sctp_rules_and_rules_of_a_type_policy_types_leaves_out_are_valid():
    cluster = parse(netpol("  podSelector: {}\n  policyTypes: [Ingress]\n"
                           "  ingress: [{ports: [{port: 9000, protocol: SCTP}]}]\n"
                           "  egress: [{}]\n"))
    (p,) = cluster.policies
    assert p.types == ("Ingress",) and p.ingress[0].ports[0].protocol == "SCTP"
    pod = cluster.pods[0]
    # the SCTP rule opens SCTP 9000 and nothing else; the egress rule means nothing
    assert allows(cluster, pod, INGRESS, "10.244.2.2", "SCTP", 9000)
    assert not allows(cluster, pod, INGRESS, "10.244.2.2", "TCP", 9000)
    assert not allows(cluster, pod, INGRESS, "10.244.2.2", "UDP", 9000)
    assert allows(cluster, pod, EGRESS, "10.244.2.2", "TCP", 1)   # not isolated for egress


def test_a_policy_defined_twice_is_refused():
    with pytest.raises(config.ConfigError, match="NetworkPolicy 'default/p' is defined twice"):
        parse(netpol("  podSelector: {}\n"), netpol("  podSelector: {}\n"))


def test_policy_types_default_to_ingress_plus_egress_when_it_has_egress_rules():
    cluster = parse(netpol("  podSelector: {}\n"), netpol("  podSelector: {}\n  egress: [{}]\n",
                                                          name="q"))
    assert [p.types for p in cluster.policies] == [(INGRESS,), (INGRESS, EGRESS)]


def test_reference_decision_follows_kubernetes_semantics():
    cluster = parse(NAMESPACE, POD, netpol(
        "  podSelector: {matchLabels: {app: api}}\n  ingress:\n"
        "  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}},\n"
        "            podSelector: {matchLabels: {app: client}}},\n"
        "           {ipBlock: {cidr: 172.18.0.0/24, except: [172.18.0.0/28]}}]\n"
        "    ports: [{port: http}]\n", namespace="blue"))
    api, client, web = cluster.pod("api-1"), cluster.pod("client-1"), cluster.pod("web-1")
    assert allows(cluster, api, INGRESS, client.ip, "TCP", 8080)
    assert not allows(cluster, api, INGRESS, client.ip, "TCP", 8081)      # not the named port
    assert not allows(cluster, api, INGRESS, client.ip, "UDP", 8080)
    assert not allows(cluster, api, INGRESS, web.ip, "TCP", 8080)         # not app=client
    assert allows(cluster, api, INGRESS, "172.18.0.100", "TCP", 8080)
    assert not allows(cluster, api, INGRESS, "172.18.0.5", "TCP", 8080)   # the except
    assert allows(cluster, api, EGRESS, web.ip, "TCP", 1)                 # egress not isolated
    assert allows(cluster, web, INGRESS, api.ip, "TCP", 1)                # web not selected


def test_masquerade_option():
    assert parse().masquerade is True
    assert parse_text("  masquerade: false").masquerade is False
    with pytest.raises(config.ConfigError, match="'no' is not true or false"):
        parse_text("  masquerade: 'no'")


def parse_text(line):
    text = BASE.replace("mtu: 1500}", "mtu: 1500}\n" + line, 1)
    return config.parse(text, "cluster.yaml", check_host=False)


@pytest.mark.parametrize("path", sorted(str(p) for p in __import__("pathlib").Path("configs").glob("*.yaml")))
def test_every_shipped_config_is_valid(path):
    cluster = config.load(path, check_host=False)
    # nodes listed, or (etcd) nodes that register themselves
    assert cluster.nodes or cluster.datastore.type == "etcd"


def test_the_policies_example_means_what_its_comments_say():
    c = config.load("configs/policies.yaml", check_host=False)
    frontend, api, db, debug = (c.pod(n) for n in ("pol-frontend", "pol-api", "pol-db", "pol-debug"))
    dns = c.dns_pod("node-a")
    assert allows(c, api, INGRESS, frontend.ip, "TCP", 8080)
    assert not allows(c, api, INGRESS, debug.ip, "TCP", 8080)
    assert allows(c, db, INGRESS, api.ip, "TCP", 5432)
    assert not allows(c, frontend, EGRESS, db.ip, "TCP", 5432)
    assert allows(c, frontend, EGRESS, dns.ip, "UDP", 53)
    assert allows(c, frontend, EGRESS, "172.18.0.1", "TCP", 80)
