"""Kubernetes Services on real pods, Kubernetes e2e-style: every endpoint reached, replies from
the service address, affinity, hairpin, and immediate refusal without endpoints."""
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import yaml

from tests.system.cluster import Cluster, new_prefix, wait_for

SERVER = str(Path(__file__).with_name("echo_server.py"))
TCP_PORT, UDP_PORT = 8080, 5353
VIP, AFFINITY_VIP, EMPTY_VIP = "10.96.0.100", "10.96.0.12", "10.96.0.11"

SERVICES = f"""
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: {VIP}
  selector: {{app: web}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
    - {{name: echo, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  clusterIP: {AFFINITY_VIP}
  selector: {{app: web}}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}
  ports: [{{port: 80, targetPort: {TCP_PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  clusterIP: {EMPTY_VIP}
  selector: {{app: nobody}}
  ports: [{{name: t, port: 80}}, {{name: u, port: 80, protocol: UDP}}]
"""

# what the outside network sees: NodePorts (policy Cluster), a load-balancer address (policy
# Local), and a service port whose backends do not listen (their ICMP errors come back translated)
NODE_A, NODE_B, OUTSIDE_HOST, LB_IP, DEAD_VIP = (
    "172.18.0.2", "172.18.0.3", "172.18.0.1", "172.18.0.100", "10.96.0.13")
OUTSIDE_SERVICES = SERVICES + f"""
---
apiVersion: v1
kind: Service
metadata: {{name: web-nodeport}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
    - {{name: http, port: 80, targetPort: http, nodePort: 30080}}
    - {{name: echo, port: 53, protocol: UDP, targetPort: {UDP_PORT}, nodePort: 30053}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-lb}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30081}}]
status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: deaf}}
spec:
  clusterIP: {DEAD_VIP}
  selector: {{app: web}}
  ports: [{{port: 53, protocol: UDP, targetPort: 9999}}]
"""

CLIENT_SNIPPET = """
import socket, sys
proto, host, port, size, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=3)
    s.sendall(b"x" * size)
    print(s.recv(65536).decode().strip())
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sport:
        s.bind(("0.0.0.0", sport))
    s.settimeout(float(sys.argv[6]) if len(sys.argv) > 6 else 3)
    s.sendto(b"y" * size, (host, port))
    data = s.recv(65536)
    head, _, payload = data.partition(b" ")
    client, _, payload = payload.partition(b" ")
    print(head.decode(), client.decode(), len(payload), payload == b"y" * size)
"""


WEB = {"labels": {"app": "web"}, "ports": [{"name": "http", "containerPort": TCP_PORT}]}


def service_pods(prefix):
    return [{"name": f"{prefix}-a1", "node": "node-a", **WEB},
            {"name": f"{prefix}-a2", "node": "node-a", **WEB},
            {"name": f"{prefix}-b1", "node": "node-b", **WEB},
            {"name": f"{prefix}-b2", "node": "node-b", "labels": {"app": "client"}}]


@contextlib.contextmanager
def echo_servers(cluster, shorts=("a1", "a2", "b1")):
    servers = []
    try:
        for short in shorts:
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", cluster.pod(short), sys.executable, SERVER, short,
                 str(TCP_PORT), str(UDP_PORT)]))
        for short in shorts:
            wait_for(lambda: f":{TCP_PORT}" in cluster.sh(short, "ss", "-ltn").stdout,
                     what=f"server in {short}")
        yield
    finally:
        for server in servers:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def svc_cluster(tmp_path_factory):
    prefix = new_prefix()
    cluster = Cluster(tmp_path_factory.mktemp("svc"), pods_per_node=(0, 0),
                      extra_pods=service_pods(prefix), services=OUTSIDE_SERVICES, prefix=prefix)
    cluster.start()
    try:
        with echo_servers(cluster):
            yield cluster
    finally:
        cluster.stop()
        assert not cluster.leftovers()


def client(cluster, short, proto, host, port, size=10, sport=0, wait=3.0):
    result = cluster.sh(short, sys.executable, "-c", CLIENT_SNIPPET, proto, host, str(port),
                        str(size), str(sport), str(wait), timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("client_pod", ["a2", "b2"], ids=["same-node", "other-node"])
@pytest.mark.parametrize("proto, port", [("tcp", 80), ("udp", 53)])
def test_clusterip_reaches_every_endpoint_and_keeps_the_client_address(svc_cluster, client_pod,
                                                                      proto, port):
    seen = set()
    for _ in range(40):
        backend, source = client(svc_cluster, client_pod, proto, VIP, port)[:2]
        seen.add(backend)
        if backend != client_pod:   # hairpin is SNATed (own test)
            assert source == svc_cluster.ip(client_pod)   # pod -> ClusterIP keeps the pod's IP
        if seen == {"a1", "a2", "b1"}:
            break
    assert seen == {"a1", "a2", "b1"}


def test_large_udp_payload_through_the_clusterip_comes_back_intact(svc_cluster):
    backend, _source, length, intact = client(svc_cluster, "b2", "udp", VIP, 53, size=2000)
    assert length == "2000" and intact == "True"


def test_client_ip_affinity_sends_one_client_to_one_backend(svc_cluster):
    backends = {client(svc_cluster, "b2", "tcp", AFFINITY_VIP, 80)[0] for _ in range(15)}
    assert len(backends) == 1


def test_hairpin_a_backend_reaches_itself_through_its_service(svc_cluster):
    for _ in range(60):
        backend, source = client(svc_cluster, "a1", "tcp", VIP, 80)[:2]
        if backend == "a1":
            assert source == "10.244.1.1"   # SNAT to the gateway, or the reply would skip us
            return
    pytest.fail("Maglev never chose the client itself in 60 connections")


def test_service_without_endpoints_refuses_at_once(svc_cluster):
    tcp = svc_cluster.sh("b2", sys.executable, "-c",
                         f"import socket; socket.create_connection(('{EMPTY_VIP}', 80), timeout=5)")
    assert tcp.returncode != 0 and "ConnectionRefusedError" in tcp.stderr
    udp = svc_cluster.sh("b2", sys.executable, "-c", (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); "
        f"s.connect(('{EMPTY_VIP}', 80)); s.send(b'x'); s.recv(10)"))
    assert udp.returncode != 0 and "ConnectionRefusedError" in udp.stderr   # ICMP port unreachable


def test_udp_to_a_backend_that_does_not_listen_is_refused_through_the_service(svc_cluster):
    # the backend's ICMP port unreachable quotes the translated datagram; only once translated
    # back (from the service address, quoting the VIP) does the client's socket accept it
    udp = svc_cluster.sh("b2", sys.executable, "-c", (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); "
        f"s.connect(('{DEAD_VIP}', 53)); s.send(b'x'); s.recv(10)"))
    assert udp.returncode != 0 and "ConnectionRefusedError" in udp.stderr
    assert sum(svc_cluster.counters(n)["ct_icmp_translated"] for n in ("node-a", "node-b")) >= 1


# --- from outside the cluster ----------------------------------------------------------------

def outside(cluster):
    return f"{cluster.prefix}-outside"


@pytest.mark.parametrize("proto, port", [("tcp", 30080), ("udp", 30053)])
@pytest.mark.parametrize("node, gateway", [(NODE_A, "10.244.1.1"), (NODE_B, "10.244.2.1")])
def test_nodeport_from_outside_reaches_every_endpoint_and_hides_the_client(svc_cluster, proto,
                                                                          port, node, gateway):
    seen = set()
    for _ in range(40):
        backend, source = client(svc_cluster, outside(svc_cluster), proto, node, port)[:2]
        assert source == gateway   # externalTrafficPolicy Cluster: SNAT to the entry node
        seen.add(backend)
        if seen == {"a1", "a2", "b1"}:
            break
    assert seen == {"a1", "a2", "b1"}


def test_load_balancer_address_with_policy_local_keeps_the_client_address(svc_cluster):
    announcer = [n for n in ("node-a", "node-b")
                 if LB_IP in svc_cluster.status(n)["outside"]["announced"]]
    assert len(announcer) == 1   # one node answers ARP for it, as MetalLB's layer-2 mode
    local = {"node-a": {"a1", "a2"}, "node-b": {"b1"}}[announcer[0]]
    seen = set()
    for _ in range(20):
        backend, source = client(svc_cluster, outside(svc_cluster), "tcp", LB_IP, 80)[:2]
        assert source == OUTSIDE_HOST and backend in local
        seen.add(backend)
    assert seen == local
    for node, pods in ((NODE_A, {"a1", "a2"}), (NODE_B, {"b1"})):   # its NodePort, per node
        backend, source = client(svc_cluster, outside(svc_cluster), "tcp", node, 30081)[:2]
        assert source == OUTSIDE_HOST and backend in pods


def test_a_pod_reaches_another_nodes_nodeport_over_the_outside_network(svc_cluster):
    before = svc_cluster.counters("node-b")["to_outside"]
    backend, source = client(svc_cluster, "b2", "tcp", NODE_A, 30080)[:2]
    assert backend in {"a1", "a2", "b1"} and source == "10.244.1.1"
    assert svc_cluster.counters("node-b")["to_outside"] > before


def test_the_outside_host_pings_nodes_and_pods(svc_cluster):
    for target in (NODE_A, NODE_B, svc_cluster.ip("a1"), svc_cluster.ip("b2")):
        ping = svc_cluster.sh(outside(svc_cluster), "ping", "-c", "1", "-W", "2", target)
        assert ping.returncode == 0, ping.stdout


HOLD_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
for line in sys.stdin:
    s.sendall(b"hold " + line.encode())
    print(s.recv(1000).decode().strip(), flush=True)
"""


@pytest.mark.parametrize("sport", [41001, 41002, 41003])
def test_trace_names_the_backend_a_real_flow_then_reaches(svc_cluster, sport):
    def trace():
        result = subprocess.run([sys.executable, "-m", "vrouter", "trace", svc_cluster.prefix,
                                 "--from", svc_cluster.pod("b2"), "--to", f"{VIP}:53",
                                 "--proto", "udp", "--sport", str(sport), "--json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["hops"]

    hops = trace()
    (service,) = [s["service"] for s in hops[0]["steps"] if "service" in s]
    assert service["connection"] == "new" and service["service"] == "default/web"
    last = hops[-1]
    assert last["verdict"] in ("forwarded_routed", "forwarded_l2")
    assert last["to"]["pod"] == service["backend_pod"]
    assert [h["node"] for h in hops] == (["node-b"] if service["backend_node"] == "node-b"
                                         else ["node-b", "node-a"])
    backend = client(svc_cluster, "b2", "udp", VIP, 53, sport=sport)[0]   # the real flow
    assert svc_cluster.pod(backend) == service["backend_pod"]
    (again,) = [s["service"] for s in trace()[0]["steps"] if "service" in s]
    assert again["connection"] == "established (conntrack)"
    assert again["backend_pod"] == service["backend_pod"]


def test_trace_errors_name_the_problem(svc_cluster):
    cases = [(["--from", "nobody", "--to", VIP], "no such pod"),
             (["--from", svc_cluster.pod("b2"), "--to", "nothing-here"],
              "neither an IPv4 address, a pod nor a Service")]
    for args, words in cases:
        result = subprocess.run([sys.executable, "-m", "vrouter", "trace", svc_cluster.prefix,
                                 *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and words in result.stderr, result.stderr


def test_reload_removes_a_backend_udp_moves_on_tcp_survives(make_cluster, tmp_path):
    prefix = new_prefix()
    cluster = make_cluster(pods_per_node=(0, 0), extra_pods=service_pods(prefix),
                           services=SERVICES, prefix=prefix)
    with echo_servers(cluster):
        # a long-lived TCP connection from b2 through the VIP, and its backend
        hold = subprocess.Popen(["ip", "netns", "exec", cluster.pod("b2"), sys.executable, "-c",
                                 HOLD_CLIENT, VIP, "80"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            hold.stdin.write("1\n")
            hold.stdin.flush()
            tcp_backend = hold.stdout.readline().split()[0]
            # a UDP client with a fixed source port whose flow lands on another backend
            for sport in range(40000, 40100):
                udp_backend = client(cluster, "b2", "udp", VIP, 53, sport=sport)[0]
                if udp_backend != tcp_backend:
                    break
            else:
                pytest.fail(f"100 UDP source ports all landed on {tcp_backend}")
            # remove the UDP flow's backend from the service (its label changes) and reload
            text = cluster.path.read_text()
            doc_end = text.index("---")
            head = yaml.safe_load(text[:doc_end])
            for pod in head["pods"]:
                if pod["name"] == cluster.pod(udp_backend):
                    pod["labels"] = {"app": "retired"}
            cluster.path.write_text(yaml.safe_dump(head, sort_keys=False) + text[doc_end:])
            result = subprocess.run([sys.executable, "-m", "vrouter", "reload", str(cluster.path)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            # the pod was a backend twice (TCP 8080, UDP 5353); b2's node had one flow to it
            # (kube-dns adds two frontends and the node's DNS server pod as a backend)
            assert "node-b: reloaded: 7 frontends, 5 backends, 2 removed, 1 UDP flows flushed" \
                in result.stdout
            # the next datagram of the same flow gets an answer from a live backend within 1 s
            answer = client(cluster, "b2", "udp", VIP, 53, sport=sport, wait=1.0)[0]
            assert answer not in (udp_backend,) and answer in {"a1", "a2", "b1"}
            # the established TCP connection still talks to its backend
            hold.stdin.write("2\n")
            hold.stdin.flush()
            assert hold.stdout.readline().split()[0] == tcp_backend
        finally:
            hold.kill()
            hold.wait()


def test_a_bad_reload_is_refused_and_the_old_state_keeps_serving(make_cluster):
    prefix = new_prefix()
    cluster = make_cluster(pods_per_node=(0, 0), extra_pods=service_pods(prefix),
                           services=SERVICES, prefix=prefix)
    good = cluster.path.read_text()
    cluster.path.write_text(good.replace("sessionAffinity: ClientIP", "sessionAffinity: Sticky"))
    status = subprocess.run([sys.executable, "-m", "vrouter", "reload", str(cluster.path)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 2 and "sessionAffinity" in status.stderr
    os_kill_hup(cluster)   # the same file through SIGHUP: the node refuses it and keeps going
    with echo_servers(cluster):
        assert client(cluster, "b2", "tcp", VIP, 80)[0] in {"a1", "a2", "b1"}
    frontends = cluster.status("node-a")["services"]
    assert any(f["frontend"] == f"{AFFINITY_VIP}:80/TCP" for f in frontends)


def os_kill_hup(cluster):
    """SIGHUP each node with the (bad) file; wait until each has refused that reload."""
    import os
    import signal
    before = {n: cluster.status(n)["reloads"]["refused"] for n in ("node-a", "node-b")}
    for node in before:
        os.kill(cluster.status(node)["pid"], signal.SIGHUP)
    for node, refused in before.items():
        wait_for(lambda: cluster.status(node)["reloads"]["refused"] == refused + 1,
                 what=f"{node} to refuse the reload")
        status = cluster.status(node)
        assert status["ready"] and "sessionAffinity" in status["reloads"]["last_error"]


# --- egress to the outside: masquerade -------------------------------------------------------

@pytest.fixture
def outside_server(svc_cluster):
    """The echo server on the outside host (172.18.0.1), which names the address it sees."""
    ns = outside(svc_cluster)
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, SERVER, "outside",
                               str(TCP_PORT), str(UDP_PORT)])
    try:
        wait_for(lambda: f":{TCP_PORT}" in subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-ltn"], capture_output=True, text=True).stdout,
            what="the outside server")
        yield
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("client_pod, node_address", [("a2", NODE_A), ("b2", NODE_B)])
@pytest.mark.parametrize("proto, port", [("tcp", TCP_PORT), ("udp", UDP_PORT)])
def test_pods_reach_the_outside_host_as_their_node(svc_cluster, outside_server, client_pod,
                                                   node_address, proto, port):
    answer = client(svc_cluster, client_pod, proto, OUTSIDE_HOST, port)
    assert answer[:2] == ["outside", node_address]   # the reply came back to the pod, too
    ping = svc_cluster.sh(client_pod, "ping", "-c", "1", "-W", "3", OUTSIDE_HOST)
    assert ping.returncode == 0, ping.stdout


def test_masquerade_off_shows_the_pod_address(svc_cluster, outside_server):
    c = svc_cluster
    text = c.path.read_text()
    off = text.replace("  podCIDR: 10.244.0.0/16\n", "  podCIDR: 10.244.0.0/16\n  masquerade: false\n", 1)
    assert off != text
    try:
        c.path.write_text(off)
        result = subprocess.run([sys.executable, "-m", "vrouter", "reload", str(c.path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        # the outside network routes each podCIDR to its node, as a VPC route table would
        assert client(c, "b2", "tcp", OUTSIDE_HOST, TCP_PORT)[:2] == ["outside", c.ip("b2")]
    finally:
        c.path.write_text(text)
        subprocess.run([sys.executable, "-m", "vrouter", "reload", str(c.path)],
                       capture_output=True, timeout=60)
    assert client(c, "b2", "tcp", OUTSIDE_HOST, TCP_PORT)[:2] == ["outside", NODE_B]
