"""Services as the Kubernetes e2e suites check them (test/e2e/network/service.go, conntrack.go),
with real clients in real pods: both protocols on one port number, protocols and ports changed by
a reload, external IPs no node holds, Services another proxy owns, health-check node ports, and
the conntrack e2e tests' fixed-source-port UDP client through every way an endpoint goes away.
Every change must be in effect within 1 s (upstream allows minutes)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.system.cluster import Cluster, new_prefix, wait_for
from tests.system.test_hostile import LOAD, in_background
from tests.system.test_services import SERVER, TCP_PORT, UDP_PORT, client

VIP, EXTERNAL, LB_IP = "10.96.0.100", "203.0.113.10", "172.18.0.100"
NODE_A, NODE_B = "172.18.0.2", "172.18.0.3"
HEALTH_PORT = 31999
CHANGE_DEADLINE = 1.0


def services(*, udp=True, tcp_port=53, proxy_label=False) -> str:
    ports = [f"{{name: t, port: {tcp_port}, targetPort: {TCP_PORT}}}"]
    if udp:
        ports.append(f"{{name: u, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}")
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: both}}
spec:
  clusterIP: {VIP}
  externalIPs: [{EXTERNAL}]
  selector: {{app: web}}
  ports: [{", ".join(ports)}]
---
apiVersion: v1
kind: Service
metadata: {{name: other-proxy{', labels: {"service.kubernetes.io/service-proxy-name": elsewhere}' if proxy_label else ''}}}
spec:
  clusterIP: 10.96.0.101
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: {TCP_PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: {HEALTH_PORT}
  selector: {{app: lb}}
  ports: [{{port: 80, targetPort: {TCP_PORT}}}]
status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}
"""


def pods(prefix):
    """a1: the client; a2, b1: web; a3: a spare (web later); b2: lb's only endpoint."""
    # fixed addresses: deleting a2 from the file must not re-address a3 (allocation follows the
    # file's order)
    return [{"name": f"{prefix}-a1", "node": "node-a", "ip": "10.244.1.2"},
            {"name": f"{prefix}-a2", "node": "node-a", "ip": "10.244.1.3", "labels": {"app": "web"}},
            {"name": f"{prefix}-a3", "node": "node-a", "ip": "10.244.1.4",
             "labels": {"app": "spare"}},
            {"name": f"{prefix}-b1", "node": "node-b", "ip": "10.244.2.2", "labels": {"app": "web"}},
            {"name": f"{prefix}-b2", "node": "node-b", "ip": "10.244.2.3", "labels": {"app": "lb"}}]


SERVED = ("a2", "a3", "b1", "b2")


@pytest.fixture
def e2e(make_cluster):
    prefix = new_prefix()
    cluster = make_cluster(pods_per_node=(0, 0), extra_pods=pods(prefix), services=services(),
                           prefix=prefix)
    servers = [subprocess.Popen(["ip", "netns", "exec", cluster.pod(s), sys.executable, SERVER, s,
                                 str(TCP_PORT), str(UDP_PORT)]) for s in SERVED]
    try:
        for s in SERVED:
            wait_for(lambda: f":{TCP_PORT}" in cluster.sh(s, "ss", "-ltn").stdout,
                     what=f"server in {s}")
        yield cluster
    finally:
        for server in servers:
            server.kill()
            server.wait()


def rewrite(cluster, *, pods_list=None, services_text=None) -> float:
    """Rewrite the cluster file and reload it; returns when the reload was answered."""
    head, _, rest = cluster.path.read_text().partition("\n---")
    doc = yaml.safe_load(head)
    if pods_list is not None:
        doc["pods"] = pods_list
    text = yaml.safe_dump(doc, sort_keys=False) + (services_text if services_text is not None
                                                   else "\n---" + rest)
    cluster.path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "vrouter", "reload", str(cluster.path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic()


def attempt(cluster, short, proto, host, port, wait=0.5) -> list[str] | None:
    """One try: the echo server's answer, or None when nothing (or a refusal) came back."""
    result = cluster.sh(short, sys.executable, "-c", CLIENT_ONCE, proto, host, str(port),
                        str(wait), timeout=30)
    return result.stdout.split() if result.returncode == 0 else None


CLIENT_ONCE = """
import socket, sys
proto, host, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=wait)
    s.sendall(b"x")
    print(s.recv(1000).decode())
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(wait)
    s.sendto(b"x", (host, port))
    print(s.recv(1000).decode())
"""


def until(check, deadline: float, what: str):
    """check() until it is truthy, at most `deadline` seconds from now; its value."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {deadline:g} s")


def test_one_port_number_serves_tcp_and_udp_and_a_removed_protocol_stops(e2e):
    c = e2e
    assert attempt(c, "a1", "tcp", VIP, 53) and attempt(c, "a1", "udp", VIP, 53)
    rewrite(c, services_text=services(udp=False))
    until(lambda: attempt(c, "a1", "udp", VIP, 53, wait=0.2) is None, CHANGE_DEADLINE,
          "UDP 53 no longer served")
    assert attempt(c, "a1", "tcp", VIP, 53)


def test_a_changed_service_port_moves_the_service(e2e):
    c = e2e
    rewrite(c, services_text=services(tcp_port=54))
    until(lambda: attempt(c, "a1", "tcp", VIP, 54, wait=0.3), CHANGE_DEADLINE, "port 54 served")
    assert attempt(c, "a1", "tcp", VIP, 53, wait=0.3) is None


def test_external_ips_no_node_holds_are_reached_from_pods_on_every_node(e2e):
    c = e2e
    for short in ("a1", "b2"):
        answer = attempt(c, short, "tcp", EXTERNAL, 53)
        assert answer and answer[0] in ("a2", "b1"), answer


def test_a_service_another_proxy_owns_is_not_proxied_but_resolves(e2e):
    c = e2e
    assert attempt(c, "a1", "tcp", "10.96.0.101", 80)
    rewrite(c, services_text=services(proxy_label=True))
    until(lambda: attempt(c, "a1", "tcp", "10.96.0.101", 80, wait=0.3) is None, CHANGE_DEADLINE,
          "the Service left alone")
    dig = c.sh("a1", "dig", "+short", "other-proxy.default.svc.cluster.local")
    assert dig.stdout.split() == ["10.96.0.101"]


def healthz(cluster, node_address):
    """A load balancer's health check from the outside network: (HTTP status, JSON body)."""
    result = subprocess.run(["ip", "netns", "exec", f"{cluster.prefix}-outside", "curl", "-s",
                             "-m", "2", "-w", "\n%{http_code}",
                             f"http://{node_address}:{HEALTH_PORT}/healthz"],
                            capture_output=True, text=True, timeout=30)
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), (json.loads(body) if body.strip() else None)


def test_health_check_node_port_answers_only_where_an_endpoint_is_local(e2e):
    c = e2e
    code_a, body_a = healthz(c, NODE_A)
    code_b, body_b = healthz(c, NODE_B)
    assert code_a == 503 and body_a["localEndpoints"] == 0, body_a   # lb's only pod is b2
    assert code_b == 200 and body_b == {"service": {"namespace": "default", "name": "lb"},
                                        "localEndpoints": 1, "serviceProxyHealthy": True}
    # b2 leaves the Service: node-b has no local endpoint any more
    prefix = c.prefix
    changed = pods(prefix)
    changed[4]["labels"] = {"app": "gone"}
    rewrite(c, pods_list=changed)
    until(lambda: healthz(c, NODE_B)[0] == 503, CHANGE_DEADLINE, "node-b unhealthy for lb")


# --- the conntrack e2e tests: a UDP client with a fixed source port ------------------------------

@contextlib.contextmanager
def udp_client(cluster, seconds=40):
    with in_background(cluster.pod("a1"), sys.executable, LOAD, "udp", VIP, "53", "41234",
                       str(seconds)) as result:
        yield result


def test_udp_flows_follow_every_way_an_endpoint_goes_away(e2e):
    """Each change takes away the backend the client is on; from a second after the change
    is in effect, every answer comes from a live backend: the backend relabelled, deleted from
    the file, and its node gone silent (the conntrack e2e tests' cases)."""
    c = e2e
    current = pods(c.prefix)
    a2, a3, b1 = current[1], current[2], current[3]
    a2["labels"] = {"app": "other"}
    rewrite(c, pods_list=current)   # b1 alone serves: the client starts there
    events = []
    with udp_client(c, seconds=30) as result:
        wait_for(lambda: c.status("node-a")["conntrack"]["entries"] >= 1, what="the client")
        time.sleep(1)
        b1["labels"], a2["labels"] = {"app": "elsewhere"}, {"app": "web"}   # 1. relabelled
        events.append(("relabelled away", rewrite(c, pods_list=current), {"a2"}))
        time.sleep(2.5)
        b1["labels"] = {"app": "web"}
        rewrite(c, pods_list=current)   # the client stays on a2
        time.sleep(1)
        current.remove(a2)   # 2. deleted (its namespace with it)
        events.append(("deleted", rewrite(c, pods_list=current), {"b1"}))
        time.sleep(2.5)
        a3["labels"] = {"app": "web"}
        rewrite(c, pods_list=current)   # the client stays on b1
        time.sleep(1)
        pid = c.status("node-b")["pid"]
        os.kill(pid, signal.SIGSTOP)   # 3. its node goes silent
        try:
            wait_for(lambda: not c.status("node-a")["peers"][0]["up"], timeout=10,
                     what="node-a to see node-b down")
            events.append(("node gone", time.monotonic(), {"a3"}))
            time.sleep(2.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        answers = [(when - time.time() + time.monotonic(), who)
                   for when, who in result()["answers"]]
    misses = []
    for k, (what, when, live) in enumerate(events):
        until_next = events[k + 1][1] if k + 1 < len(events) else when + 2.5
        after = [who for t, who in answers if when + CHANGE_DEADLINE < t < until_next - 0.2]
        if not after or set(after) - live:
            misses.append((what, sorted(set(after))))
    assert not misses, f"answers from a second after each change on: {misses}"
