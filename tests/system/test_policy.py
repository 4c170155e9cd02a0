"""NetworkPolicy with real connections between real pods, as the Kubernetes e2e NetworkPolicy
tests check it: namespaces x and y, pods a, b, c spread over two nodes, echo servers (TCP and UDP,
on two ports each) in each, and for each policy set the whole reachability matrix, TCP and UDP,
same node and across nodes. Policies, pod labels and namespace labels are changed with
`vrouter reload`, as a user would."""
import contextlib
import subprocess
import sys

import yaml

import pytest

from tests.system.cluster import Cluster, new_prefix, wait_for
from tests.system.reachability import assert_matrix
from tests.system.test_services import SERVER, TCP_PORT, UDP_PORT, echo_servers

TCP_PORT2, UDP_PORT2 = TCP_PORT + 1, UDP_PORT + 1   # the second port of each protocol

PODS = {  # short name: namespace, node, pod label
    "xa": ("x", "node-a", "a"), "xb": ("x", "node-b", "b"), "xc": ("x", "node-a", "c"),
    "ya": ("y", "node-b", "a"), "yb": ("y", "node-a", "b"),
}
PORTS = [{"name": "serve-tcp", "containerPort": TCP_PORT},
         {"name": "serve-udp", "containerPort": UDP_PORT, "protocol": "UDP"}]
NAMESPACES = """---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: x}
spec:
  clusterIP: 10.96.0.200
  selector: {pod: a}
  ports: [{name: http, port: 8000, targetPort: serve-tcp}]
"""


def netpol(name: str, spec: str, namespace: str = "x") -> str:
    return (f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")


@pytest.fixture(scope="module")
def policy_cluster(tmp_path_factory):
    prefix = new_prefix()
    pods = [{"name": f"{prefix}-{short}", "namespace": ns, "node": node, "labels": {"pod": label},
             "ports": PORTS} for short, (ns, node, label) in PODS.items()]
    cluster = Cluster(tmp_path_factory.mktemp("policy"), pods_per_node=(0, 0), extra_pods=pods,
                      services=NAMESPACES, prefix=prefix)
    cluster.base_text = cluster.path.read_text()
    cluster.start()
    try:
        with echo_servers(cluster, tuple(PODS)), second_servers(cluster):
            yield cluster
    finally:
        cluster.stop()
        assert not cluster.leftovers()


@contextlib.contextmanager
def second_servers(cluster):
    """Each pod serves TCP_PORT2 and UDP_PORT2 too."""
    servers = [subprocess.Popen(["ip", "netns", "exec", cluster.pod(short), sys.executable, SERVER,
                                 short, str(TCP_PORT2), str(UDP_PORT2)]) for short in PODS]
    try:
        for short in PODS:
            wait_for(lambda: f":{TCP_PORT2}" in cluster.sh(short, "ss", "-ltn").stdout,
                     what=f"second server in {short}")
        yield
    finally:
        for server in servers:
            server.kill()
            server.wait()


def relabelled(cluster, pods: dict | None = None, namespaces: dict | None = None) -> str:
    """The base file with pod labels (short name -> labels) and namespace labels changed."""
    head, sep, rest = cluster.base_text.partition("\n---")
    doc = yaml.safe_load(head)
    for pod in doc["pods"]:
        short = pod["name"][len(cluster.prefix) + 1:]
        if pods and short in pods:
            pod["labels"] = pods[short]
    text = yaml.safe_dump(doc, sort_keys=False) + sep + rest
    for ns, labels in (namespaces or {}).items():
        text = text.replace(f"metadata: {{name: {ns}, labels: {{ns: {ns}}}}}",
                            f"metadata: {{name: {ns}, labels: {yaml.safe_dump(labels, default_flow_style=True).strip()}}}")
    return text


def reload(cluster, *policies: str, base: str | None = None) -> subprocess.CompletedProcess:
    """The cluster file (`base`: another version of it) with these policies, reloaded as a
    user would."""
    cluster.path.write_text((base or cluster.base_text) + "".join(policies))
    return subprocess.run([sys.executable, "-m", "vrouter", "reload", str(cluster.path)],
                          capture_output=True, text=True, timeout=60)


def apply(cluster, *policies: str, base: str | None = None) -> None:
    result = reload(cluster, *policies, base=base)
    assert result.returncode == 0, result.stderr


def pods_of(cluster) -> dict:
    return {short: (cluster.pod(short), cluster.ip(short)) for short in PODS}


ALL_OPEN = """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  .  .  .  .  .
xc  .  .  .  .  .
ya  .  .  .  .  .
yb  .  .  .  .  .
"""
X_CLOSED = """
    xa xb xc ya yb
xa  .  X  X  .  .
xb  X  .  X  .  .
xc  X  X  .  .  .
ya  X  X  X  .  .
yb  X  X  X  .  .
"""   # default deny for ingress in namespace x

# name, policies, expected TCP matrix, expected UDP matrix (None: the same)
CASES = [
    ("no-policy", [], ALL_OPEN, None),
    ("default-deny-ingress-in-x", [netpol("deny", "  podSelector: {}\n  ingress: []\n")],
     X_CLOSED, None),
    ("pod-selector-same-namespace", [netpol("a-from-b", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
""")], """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  .  .  .  .  .
xc  X  .  .  .  .
ya  X  .  .  .  .
yb  X  .  .  .  .
""", None),
    ("namespace-and-pod-selector-in-one-peer", [netpol("a-from-y-b", """  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
""")], """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  X  .  .  .  .
ya  X  .  .  .  .
yb  .  .  .  .  .
""", None),
    ("namespace-or-pod-selector-as-two-peers", [netpol("a-from-y-or-c", """  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}},
           {podSelector: {matchLabels: {pod: c}}}]
""")], """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  .  .  .  .  .
ya  .  .  .  .  .
yb  .  .  .  .  .
""", None),
    ("ip-block-with-except", [netpol("a-from-node-a", """  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}}]
""")], """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  .  .  .  .  .
ya  X  .  .  .  .
yb  .  .  .  .  .
""", None),
    ("named-port-tcp-only", [netpol("a-tcp-by-name", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-tcp}]}]
""")], ALL_OPEN, """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  X  .  .  .  .
ya  X  .  .  .  .
yb  X  .  .  .  .
"""),
    ("end-port-range-udp", [netpol("a-udp-range", f"""  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{ports: [{{protocol: UDP, port: {UDP_PORT - 3}, endPort: {UDP_PORT}}}]}}]
""")], """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  X  .  .  .  .
ya  X  .  .  .  .
yb  X  .  .  .  .
""", ALL_OPEN),
    ("egress-to-y-only-replies-pass", [netpol("a-egress-y", """  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
""")], """
    xa xb xc ya yb
xa  .  X  X  .  .
xb  .  .  .  .  .
xc  .  .  .  .  .
ya  .  .  .  .  .
yb  .  .  .  .  .
""", None),
    ("ingress-and-egress-deny-all-in-y", [netpol("y-closed", "  podSelector: {}\n"
                                                 "  policyTypes: [Ingress, Egress]\n", "y")], """
    xa xb xc ya yb
xa  .  .  .  X  X
xb  .  .  .  X  X
xc  .  .  .  X  X
ya  X  X  X  .  X
yb  X  X  X  X  .
""", None),
]


A_CLOSED = """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  X  .  .  .  .
ya  X  .  .  .  .
yb  X  .  .  .  .
"""   # nothing gets into xa

# the second port of each protocol, where a case's rules name ports: name -> (TCP_PORT2, UDP_PORT2)
SECOND_PORTS = {
    "named-port-tcp-only": (A_CLOSED, A_CLOSED),     # serve-tcp names TCP_PORT only
    "end-port-range-udp": (A_CLOSED, A_CLOSED),      # the range ends at UDP_PORT
}
CASES += [
    ("stacked-policies-by-port", [
        netpol("a-from-y-on-1", f"""  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: {TCP_PORT}}}]}}]
"""),
        netpol("a-from-c-on-2", f"""  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: c}}}}}}], ports: [{{port: {TCP_PORT2}}}]}}]
""")], """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  X  .  .  .  .
ya  .  .  .  .  .
yb  .  .  .  .  .
""", A_CLOSED),
    ("sctp-rule-opens-no-tcp-or-udp", [netpol("a-sctp", f"""  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{ports: [{{port: {TCP_PORT}, protocol: SCTP}}, {{port: {UDP_PORT}, protocol: SCTP}}]}}]
""")], A_CLOSED, None),
]
SECOND_PORTS["stacked-policies-by-port"] = ("""
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  .  .  .  .  .
ya  X  .  .  .  .
yb  X  .  .  .  .
""", A_CLOSED)
SECOND_PORTS["sctp-rule-opens-no-tcp-or-udp"] = (A_CLOSED, A_CLOSED)


@pytest.mark.parametrize("name, policies, tcp, udp", CASES, ids=[c[0] for c in CASES])
def test_reachability(policy_cluster, name, policies, tcp, udp):
    apply(policy_cluster, *policies)
    pods = pods_of(policy_cluster)
    assert_matrix(pods, "tcp", TCP_PORT, tcp)
    assert_matrix(pods, "udp", UDP_PORT, udp or tcp)
    if name in SECOND_PORTS:   # two ports of each protocol, as the upstream suite probes 80/81
        tcp2, udp2 = SECOND_PORTS[name]
        assert_matrix(pods, "tcp", TCP_PORT2, tcp2)
        assert_matrix(pods, "udp", UDP_PORT2, udp2)


def test_ingress_from_a_namespace_relabelled_after_the_policy(policy_cluster):
    """The e2e test "should allow ingress access from updated namespace"."""
    c = policy_cluster
    pods = pods_of(c)
    from_team = netpol("a-from-team-blue", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]
""")
    apply(c, from_team)
    assert_matrix(pods, "tcp", TCP_PORT, A_CLOSED)
    apply(c, from_team, base=relabelled(c, namespaces={"y": {"ns": "y", "team": "blue"}}))
    assert_matrix(pods, "tcp", TCP_PORT, """
    xa xb xc ya yb
xa  .  .  .  .  .
xb  X  .  .  .  .
xc  X  .  .  .  .
ya  .  .  .  .  .
yb  .  .  .  .  .
""")


def test_ingress_from_a_pod_relabelled_after_the_policy_and_to_one_relabelled_into_it(
        policy_cluster):
    """The e2e tests "should allow ingress access from updated pod" and "should deny ingress
    access to updated pod"."""
    c = policy_cluster
    pods = pods_of(c)
    from_updated = netpol("a-from-updated", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {updated: "yes"}}}]}]
""")
    isolate = netpol("deny-isolated", """  podSelector: {matchLabels: {isolated: "yes"}}
  ingress: []
""")
    apply(c, from_updated, isolate)
    assert_matrix(pods, "tcp", TCP_PORT, A_CLOSED)
    apply(c, from_updated, isolate, base=relabelled(c, pods={
        "xc": {"pod": "c", "updated": "yes"}, "xb": {"pod": "b", "isolated": "yes"}}))
    assert_matrix(pods, "tcp", TCP_PORT, """
    xa xb xc ya yb
xa  .  X  .  .  .
xb  X  .  .  .  .
xc  .  X  .  .  .
ya  X  X  .  .  .
yb  X  X  .  .  .
""")


def test_an_updated_policy_is_enforced_and_a_deleted_one_no_longer(policy_cluster):
    """The e2e tests "should enforce updated policy" and "should stop enforcing policies after
    they are deleted"."""
    c = policy_cluster
    pods = pods_of(c)
    apply(c, netpol("p", "  podSelector: {}\n  ingress: [{}]\n"))
    assert_matrix(pods, "tcp", TCP_PORT, ALL_OPEN)
    apply(c, netpol("p", "  podSelector: {}\n  ingress: []\n"))
    assert_matrix(pods, "tcp", TCP_PORT, X_CLOSED)
    apply(c)
    assert_matrix(pods, "tcp", TCP_PORT, ALL_OPEN)


def test_service_traffic_is_judged_against_its_backend(policy_cluster):
    """x/a's Service listens on 8000 and sends to the pod's 8080: only a policy allowing 8080
    lets it through."""
    c = policy_cluster
    pods = pods_of(c)
    vip = {"svc-a": "10.96.0.200"}
    apply(c, netpol("a-8000", "  podSelector: {matchLabels: {pod: a}}\n"
                              "  ingress: [{ports: [{port: 8000}]}]\n"))
    assert_matrix(pods, "tcp", 8000, "svc-a\nxa X\nxb X\nxc X\nya X\nyb X", vip)
    apply(c, netpol("a-8080", f"  podSelector: {{matchLabels: {{pod: a}}}}\n"
                              f"  ingress: [{{ports: [{{port: {TCP_PORT}}}]}}]\n"))
    assert_matrix(pods, "tcp", 8000, "svc-a\nxa .\nxb .\nxc .\nya .\nyb .", vip)


def test_drops_are_counted_per_policy_and_a_bad_reload_keeps_the_running_policies(policy_cluster):
    c = policy_cluster
    deny = netpol("deny", "  podSelector: {}\n  ingress: []\n")
    apply(c, deny)
    pods = pods_of(c)
    blocked = X_CLOSED
    def dropped():
        return {n: {p["policy"]: p["dropped"] for p in c.status(n)["policies"]}["x/deny"]
                for n in ("node-a", "node-b")}

    def counted():
        return {n: c.counters(n)["drop_policy_ingress"] for n in ("node-a", "node-b")}

    before, counted_before = dropped(), counted()
    assert_matrix(pods, "tcp", TCP_PORT, blocked)
    after, counted_after = dropped(), counted()
    # node-a isolates xa and xc (4 senders each), node-b xb (4): every refused SYN is counted,
    # once per try, for the one policy that isolates the pod
    assert after["node-a"] - before["node-a"] >= 8 and after["node-b"] - before["node-b"] >= 4
    for n in after:
        assert after[n] - before[n] == counted_after[n] - counted_before[n]
    result = reload(c, deny, netpol("bad", "  podSelector: {matchExpressions: "
                                   "[{key: a, operator: Near, values: [b]}]}\n"))
    assert result.returncode != 0
    assert "matchExpressions[0].operator" in result.stderr and "'Near'" in result.stderr
    assert_matrix(pods, "tcp", TCP_PORT, blocked)
    assert [p["policy"] for p in c.status("node-a")["policies"]] == ["x/deny"]
