"""NetworkPolicy with real connections between real pods, as the Kubernetes e2e NetworkPolicy
tests check it: namespaces x and y, pods a, b, c spread over two nodes, an echo server (TCP and
UDP) in each, and for each policy set the whole reachability matrix, TCP and UDP, same node and
across nodes. Policies are changed with `vrouter reload`, as a user would."""
import subprocess
import sys

import pytest

from tests.system.cluster import Cluster, new_prefix
from tests.system.reachability import assert_matrix
from tests.system.test_services import TCP_PORT, UDP_PORT, echo_servers

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
        with echo_servers(cluster, tuple(PODS)):
            yield cluster
    finally:
        cluster.stop()
        assert not cluster.leftovers()


def reload(cluster, *policies: str) -> subprocess.CompletedProcess:
    """The cluster file with these policies, reloaded as a user would."""
    cluster.path.write_text(cluster.base_text + "".join(policies))
    return subprocess.run([sys.executable, "-m", "vrouter", "reload", str(cluster.path)],
                          capture_output=True, text=True, timeout=60)


def apply(cluster, *policies: str) -> None:
    result = reload(cluster, *policies)
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


@pytest.mark.parametrize("name, policies, tcp, udp", CASES, ids=[c[0] for c in CASES])
def test_reachability(policy_cluster, name, policies, tcp, udp):
    apply(policy_cluster, *policies)
    pods = pods_of(policy_cluster)
    assert_matrix(pods, "tcp", TCP_PORT, tcp)
    assert_matrix(pods, "udp", UDP_PORT, udp or tcp)


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
