"""Metrics and logs: the Prometheus endpoint scraped with curl moves under traffic; `vrouter
metrics` reads the same through the control socket; logs are JSON lines when not on a terminal."""
import json
import socket
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vrouter.node.metrics import SNAPSHOT_MAX_AGE
from tests.system.cluster import Cluster, new_prefix

VIP = "10.96.0.50"
SERVICE = f"""
---
apiVersion: v1
kind: Service
metadata: {{name: probe}}
spec:
  clusterIP: {VIP}
  selector: {{app: probe}}
  ports: [{{port: 80, targetPort: 8080}}]
"""
PINGS = 5
CONNECTIONS = 3


def free_port_pair() -> int:
    """A port p with p and p+1 free on loopback (node-a serves on p, node-b on p+1)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    pytest.fail("no two adjacent free ports on loopback")


def samples(text: str) -> dict:
    """{(name, sorted label items): value} of a Prometheus exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def scrape(port: int) -> dict:
    result = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return samples(result.stdout)


def scrape_fresh(port: int, before: dict, key, by: int) -> dict:
    """A scrape in which `key` grew by `by` over `before`: a node serves scrapes from a snapshot
    up to SNAPSHOT_MAX_AGE old, so one taken right after the traffic may predate it."""
    deadline = time.monotonic() + 10 * SNAPSHOT_MAX_AGE
    while True:
        found = scrape(port)
        if found.get(key, 0) - before.get(key, 0) >= by or time.monotonic() > deadline:
            return found
        time.sleep(SNAPSHOT_MAX_AGE / 4)   # the snapshot's age is the readiness; nothing to wait on


def test_metrics_move_under_traffic_and_logs_are_json(make_cluster):
    port = free_port_pair()
    prefix = new_prefix()
    backend = {"name": f"{prefix}-web", "node": "node-b", "labels": {"app": "probe"}}
    cluster = make_cluster(pods_per_node=(1, 0), extra_pods=[backend], services=SERVICE,
                           options={"metricsPort": port}, prefix=prefix)
    assert cluster.status("node-a")["metrics"] == f"http://127.0.0.1:{port}/metrics"
    a1, b_port = cluster.pod("a1"), port + 1
    before_a, before_b = scrape(port), scrape(b_port)

    ping = cluster.sh("a1", "ping", "-c", str(PINGS), "-i", "0.2", "-W", "2", "10.244.1.1")
    assert ping.returncode == 0, ping.stdout
    for _ in range(CONNECTIONS):   # refused by the backend's kernel (nothing listens): still a flow
        cluster.sh("a1", sys.executable, "-c", f"import socket\ntry:\n socket.create_connection(("
                   f"'{VIP}', 80), timeout=3)\nexcept OSError:\n pass")
    pod = (("interface", a1), ("kind", "pod"))
    after_a = scrape_fresh(port, before_a, ("vrouter_port_rx_packets_total", pod),
                           PINGS + CONNECTIONS)

    def grew(key, by):
        assert after_a.get(key, 0) - before_a.get(key, 0) >= by, (key, before_a.get(key),
                                                                  after_a.get(key))
    grew(("vrouter_port_rx_packets_total", pod), PINGS + CONNECTIONS)
    grew(("vrouter_port_tx_packets_total", pod), PINGS + CONNECTIONS)
    grew(("vrouter_port_rx_bytes_total", pod), PINGS * 98)
    grew(("vrouter_events_total", (("event", "echo_answered"),)), PINGS)
    grew(("vrouter_batch_frames_count", ()), PINGS)
    connections = [k for k in after_a if k[0] == "vrouter_service_connections_total"
                   and ("frontend", f"{VIP}:80/TCP") in k[1]]
    assert len(connections) == 1, connections
    grew(connections[0], CONNECTIONS)
    assert after_a[("vrouter_peer_up", (("peer", "node-b"),))] == 1

    # the control socket serves the same exposition
    result = subprocess.run([sys.executable, "-m", "vrouter", "metrics", cluster.prefix, "--node",
                             "node-a"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    via_socket = samples(result.stdout)
    assert via_socket[connections[0]] >= after_a[connections[0]]

    # node-b's endpoint is its own (port + 1); its overlay port received what a1 sent it
    overlay = ("vrouter_port_rx_packets_total", (("interface", "overlay"), ("kind", "overlay")))
    after_b = scrape_fresh(b_port, before_b, overlay, 1)
    assert after_b[overlay] - before_b.get(overlay, 0) >= 1

    output = cluster.stop()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    up = [entry for entry in lines if entry["message"].startswith("node node-a up")]
    assert up and up[0]["level"] == "INFO" and up[0]["logger"] == "vrouter.node"


def test_metrics_port_in_use_is_a_clear_error_and_leaves_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = Cluster(tmp_path, pods_per_node=(1,), options={"metricsPort": port})
        result = subprocess.run([sys.executable, "-m", "vrouter", "run", str(cluster.path),
                                 "--node", "node-a"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port} (cluster.metricsPort)" in result.stderr
    assert not cluster.leftovers()
