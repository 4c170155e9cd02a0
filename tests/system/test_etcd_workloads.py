"""Workloads with the etcd datastore (issue 21): a Deployment and a Service written by `vrouter
apply` become pods on nodes that registered themselves (none is in the cluster file), spread
over them, running their programs and answering through the Service; `vrouter get` shows the
Deployment and each pod's owner; applying other replicas scales it, `vrouter delete` removes
its pods and the controllers' record. Two hosts around a real etcd (tests/system/etcdcluster.py).
"""
from __future__ import annotations

import json

import pytest

from tests.system.cluster import wait_for
from tests.system.etcdcluster import EtcdCluster
from tests.system.test_workloads import SERVER, programs_with

TTL = 6


def deployment(c: EtcdCluster, replicas: int) -> str:
    name = c.pod("web")
    return f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: server
        image: python:3.12
        command: [python3, {SERVER}, "8080", {name}]
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def client(c: EtcdCluster) -> str:
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {c.pod('client')}}}
spec: {{nodeName: n1, containers: [{{name: c, image: busybox}}]}}
"""


@pytest.fixture
def cluster(tmp_path):
    c = EtcdCluster(tmp_path, hosts=2, lease_ttl=TTL)
    try:
        c.start().start_all()
        yield c
    finally:
        c.stop()
        left = c.leftovers()
        assert not left, left


def web_pods(c: EtcdCluster) -> list[dict]:
    return [p for p in c.get("pods")["items"]
            if p["metadata"]["name"].startswith(c.pod("web") + "-")]


def ready_pods(c: EtcdCluster) -> dict[str, str]:
    """Web pods every node serves as ready: pod -> node."""
    found = {}
    for node in c.names:
        for p in c.status(node)["ports"]:
            if p["pod"].startswith(c.pod("web") + "-") and p["ready"]:
                found[p["pod"]] = node
    return found


def answers(c: EtcdCluster, count: int) -> set[str]:
    """Which pods answer `count` connections through the Service's name from the client."""
    seen = set()
    for _ in range(count):
        out = c.sh("client", "curl", "-s", "-m", "3", "http://web/").stdout.split()
        if not out:
            pytest.fail("a connection through the Service failed")
        seen.add(out[0])
    return seen


def test_an_applied_deployment_becomes_pods_that_scale_and_go_with_it(cluster):
    c = cluster
    c.apply(client(c) + deployment(c, 2))
    try:
        wait_for(lambda: len(ready_pods(c)) == 2, timeout=60, what="2 ready web pods")
    except AssertionError:   # what each node made of it, for the failure's report
        for n in c.names:
            print(n, [(p["pod"], p["ready"]) for p in c.status(n)["ports"]], c.log(n))
        raise
    placed = ready_pods(c)
    assert sorted(placed.values()) == ["n1", "n2"], placed   # spread: one per node
    wait_for(lambda: c.sh("client", "true").returncode == 0, what="the client pod")
    assert answers(c, 12) == set(placed)
    (dep,) = c.get("deployments")["items"]
    assert dep["status"]["availableReplicas"] == 2
    owners = {p["metadata"]["ownerReferences"][0]["name"] for p in web_pods(c)}
    assert len(owners) == 1 and owners.pop().startswith(c.pod("web") + "-")   # its ReplicaSet
    # the controllers' record is a store key
    keys = c.etcd.etcdctl("get", "--prefix", "--keys-only", "/vrouter/").stdout.split()
    assert f"/vrouter/{c.prefix}/workloads/Deployment/default/{c.pod('web')}" in keys, keys

    c.apply(client(c) + deployment(c, 3))   # scaled by apply
    wait_for(lambda: len(ready_pods(c)) == 3, timeout=60, what="3 ready web pods")
    assert len(programs_with(f"{SERVER} 8080 {c.pod('web')}")) == 3
    wait_for(lambda: answers(c, 3) and set(ready_pods(c)) <= answers(c, 15), timeout=30,
             what="every pod answering")

    result = c.vrouter("delete", "deployment", c.pod("web"), "--cluster", str(c.path))
    assert result.returncode == 0, result.stderr
    assert "deployment.apps" in result.stdout
    wait_for(lambda: not web_pods(c) and not programs_with(f"{SERVER} 8080 {c.pod('web')}"),
             timeout=30, what="the Deployment's pods and programs to go")
    wait_for(lambda: not any("workloads/" in k for k in c.etcd.etcdctl(
        "get", "--prefix", "--keys-only", "/vrouter/").stdout.split()), timeout=10,
        what="the controllers' record to go")
    assert json.loads(c.vrouter("get", "deployments", "-o", "json", "--cluster",
                                str(c.path)).stdout)["items"] == []
