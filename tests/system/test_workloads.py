"""Workloads on a real cluster: a tutorial's Deployment and Service come up spread over the
nodes and answer through the ClusterIP and the DNS name; a DaemonSet has one pod per node;
pods' programs are restarted, reported when they cannot start, and leave nothing behind;
scaling and rolling updates under a client loop lose no connection; a StatefulSet's pod keeps
its DNS name and address across its node's restart."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.system.cluster import Cluster, list_netns, new_prefix, wait_for
from tests.system.test_live_pods import vrouter
from vrouter.host import state
from vrouter.ops import control

HERE = Path(__file__).resolve().parent
SERVER = str(HERE / "podserver.py")
LOOP = str(HERE / "webloop.py")
TUTORIAL = HERE.parents[1] / "configs" / "tutorial.yaml"


def tutorial(prefix: str) -> str:
    """The shipped tutorial's Deployment and Service, the Deployment renamed for this run (its
    pods name network namespaces, which the whole machine shares)."""
    docs = list(yaml.safe_load_all(TUTORIAL.read_text()))[1:]
    docs[0]["metadata"]["name"] = f"{prefix}-web"
    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)


def server_deployment(name: str, replicas: int, version: str = "1", tag: str = "") -> str:
    """A Deployment of podserver.py (it answers with its pod's name and $VERSION), ready once
    it accepts connections, as a tutorial with a readinessProbe writes it."""
    return f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: server
        image: python:3.12
        command: [python3, {SERVER}, "8080", {tag or name}]
        env: [{{name: VERSION, value: "{version}"}}]
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def all_ports(cluster) -> list[dict]:
    return [dict(p, node=n["name"]) for n in cluster.nodes
            for p in cluster.status(n["name"])["ports"]]


def pods_of(cluster, owner_prefix: str) -> list[dict]:
    return [p for p in all_ports(cluster) if (p.get("owner") or "").startswith(owner_prefix)]


def programs_with(text: str) -> list[str]:
    """Processes whose command line has `text` (pgrep -f)."""
    return subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout.split()


def alive_in_group(pgid: int) -> list[str]:
    """Processes of a process group that still run (not zombies waiting for init)."""
    ps = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True,
                        text=True).stdout.split("\n")
    return [line for line in ps if line.strip() and "Z" not in line.split()[1]]


def http(cluster, client: str, url: str) -> str:
    out = cluster.sh(client, "curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
                     url)
    return out.stdout


class Loop:
    """webloop.py in a client pod: a new connection to the Service every 20 ms."""

    def __init__(self, cluster, client: str, host: str, port: int, tmp: Path):
        self.stop_file, self.progress_file = tmp / "loop.stop", tmp / "loop.progress"
        self.proc = subprocess.Popen(["ip", "netns", "exec", cluster.pod(client), sys.executable,
                                      LOOP, host, str(port), str(self.stop_file),
                                      str(self.progress_file)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def progress(self) -> dict:
        try:
            return json.loads(self.progress_file.read_text())
        except (OSError, ValueError):
            return {"ok": 0, "failed": 0, "by": {}, "last": []}

    def answered_by(self, *pods) -> bool:
        return set(pods) <= {answer.split()[0] for answer in self.progress()["by"]}

    def last(self, n: int) -> set[str]:
        """The pods that gave the last n answers."""
        return {answer.split()[0] for answer in self.progress()["last"][-n:]}

    def stop(self) -> dict:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return json.loads(out)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def reload(cluster, text: str) -> subprocess.CompletedProcess:
    cluster.path.write_text(text)
    return vrouter("reload", str(cluster.path))


def progress(cluster, key: str) -> dict:
    for n in cluster.nodes:
        for w in cluster.status(n["name"])["workloads"]["progress"]:
            if w["workload"] == key:
                return w
    pytest.fail(f"no workload {key}")


# --- one cluster for the tests that look --------------------------------------------------------

@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workloads")
    prefix = new_prefix()
    stop_file = tmp / "crash.stop"
    manifests = tutorial(prefix) + f"""---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: {prefix}-agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      tolerations: [{{operator: Exists}}]
      containers:
      - {{name: agent, image: busybox, command: [sh, -c, "while :; do sleep 1; done",
                                                   {prefix}-agent]}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: {prefix}-only-b}}
spec:
  selector: {{matchLabels: {{app: only-b}}}}
  template:
    metadata: {{labels: {{app: only-b}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: node-b}}
      containers: [{{name: idle, image: busybox}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {prefix}-crash}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: crash}}}}
  template:
    metadata: {{labels: {{app: crash}}}}
    spec:
      containers:
      - name: crash
        image: busybox
        command: [sh, -c, 'echo "run $$$$"; sleep 1000 & while [ ! -e {stop_file} ]; do sleep 0.05; done; rm -f {stop_file}; echo bye; exit 3', {prefix}-crash]
---
apiVersion: v1
kind: Pod
metadata: {{name: {prefix}-once}}
spec:
  nodeName: node-a
  restartPolicy: Never
  containers: [{{name: once, image: busybox, command: [sh, -c, 'echo done; exit 0', {prefix}-once]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {prefix}-broken}}
spec:
  nodeName: node-b
  containers: [{{name: broken, image: busybox, command: [{prefix}-no-such-program, --flag]}}]
"""
    cluster = Cluster(tmp, pods_per_node=(1, 1), services=manifests, prefix=prefix)
    cluster.stop_file = stop_file
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        left = cluster.leftovers() + [f"program {pid}" for pid in programs_with(prefix)]
        assert not left, f"left behind: {left}"


def test_a_tutorial_deployment_comes_up_spread_and_answers_through_its_service(running):
    web = pods_of(running, f"ReplicaSet/{running.prefix}-web-")
    assert len(web) == 3, web
    assert {p["node"] for p in web} == {"node-a", "node-b"}   # spread over the nodes
    assert all(p["ready"] and p["programs"]["containers"][0]["state"] == "running" for p in web)
    service = next(s for s in running.status("node-a")["services"]
                   if s["service"].startswith("default/web"))
    assert sorted(b.split(":")[0] for b in service["backends"]) == sorted(p["ip"] for p in web)
    cluster_ip = service["frontend"].split(":")[0]
    for client in ("a1", "b1"):
        assert http(running, client, "http://web/") == "200"            # by its DNS name
        assert http(running, client, f"http://{cluster_ip}/") == "200"   # by its ClusterIP
        for p in web:
            assert http(running, client, f"http://{p['ip']}:8080/") == "200"
    logs = vrouter("logs", running.prefix, web[0]["pod"], "--tail", "3")
    assert logs.returncode == 0 and '"GET / HTTP/1.1" 200' in logs.stdout, logs


def test_a_daemonset_has_one_pod_per_node_and_honours_its_node_selector(running):
    agents = pods_of(running, f"DaemonSet/{running.prefix}-agent")
    assert sorted(p["node"] for p in agents) == ["node-a", "node-b"]
    assert all(p["pod"].startswith(f"{running.prefix}-agent-") for p in agents)
    only_b = pods_of(running, f"DaemonSet/{running.prefix}-only-b")
    assert [p["node"] for p in only_b] == ["node-b"]
    assert len(programs_with(f"{running.prefix}-agent")) == 2   # one program per node


def test_a_program_is_restarted_after_it_exits(running):
    (pod,) = pods_of(running, f"ReplicaSet/{running.prefix}-crash-")
    node, name = pod["node"], pod["pod"]

    def container():
        ports = running.status(node)["ports"]
        return next(p for p in ports if p["pod"] == name)["programs"]["containers"][0]

    wait_for(lambda: container()["state"] == "running", what="the program to run")
    first = container()
    assert first["restarts"] == 0
    running.stop_file.touch()   # the program exits with code 3
    wait_for(lambda: container()["restarts"] == 1 and container()["state"] == "running",
             what="the restart")
    now = container()
    assert now["pid"] != first["pid"]
    assert now["last_exit"]["exit_code"] == 3 and now["last_exit"]["reason"] == "Error"
    # the program's background child ended with it: nothing of its process group lives on
    wait_for(lambda: not alive_in_group(first["pid"]), timeout=5, what="the child's end")
    previous = vrouter("logs", running.prefix, name, "--previous")
    assert previous.stdout.splitlines() == [f"run {first['pid']}", "bye"], previous
    current = vrouter("logs", running.prefix, name)
    assert current.stdout.splitlines() == [f"run {now['pid']}"], current


def test_restart_policy_never_and_a_program_that_cannot_start(running):
    def container(node, name):
        ports = running.status(node)["ports"]
        return next(p for p in ports if p["pod"] == name)["programs"]["containers"][0]

    once = f"{running.prefix}-once"
    wait_for(lambda: container("node-a", once)["state"] == "terminated", what="the pod's end")
    c = container("node-a", once)
    assert (c["reason"], c["restarts"], c["last_exit"]["exit_code"]) == ("Completed", 0, 0)
    broken = container("node-b", f"{running.prefix}-broken")
    assert broken["reason"] in ("StartError", "CrashLoopBackOff") and not broken["ready"]
    problem = (f"{running.path.name}: document 8.spec.containers[0].command: cannot start "
               f"'{running.prefix}-no-such-program': executing '{running.prefix}-no-such-program': "
               "No such file or directory")
    assert broken["error"].endswith(problem), broken["error"]
    logs = vrouter("logs", running.prefix, f"{running.prefix}-broken")
    assert problem in logs.stdout, logs
    text = vrouter("status", running.prefix, "--node", "node-b").stdout
    assert problem in text and "not ready" in text


def test_a_bad_workload_in_a_reload_is_refused_and_keeps_the_running_pods(running):
    before = sorted((p["pod"], p["ip"]) for p in pods_of(running, "ReplicaSet/"))
    good = running.path.read_text()
    try:
        result = reload(running, good.replace("replicas: 3", "replicas: -1"))
        problem = "document 2.spec.replicas: -1: must be greater than or equal to 0"
        assert result.returncode == 2 and problem in result.stderr, result.stderr   # bad config
        for node in ("node-a", "node-b"):   # and a node asked anyway (SIGHUP) refuses it too
            answer = control.request(state.socket_path(running.prefix, node), "reload",
                                     timeout=30)
            assert not answer["ok"] and problem in answer["error"], answer
    finally:
        running.path.write_text(good)
    assert sorted((p["pod"], p["ip"]) for p in pods_of(running, "ReplicaSet/")) == before


# --- under traffic --------------------------------------------------------------------------------

def started(make_cluster, manifests: str, prefix: str):
    """A cluster of two nodes with a client pod each (a1, b1) and `manifests`; and its file
    without them, for reloads."""
    cluster = make_cluster(prefix=prefix, pods_per_node=(1, 1), services=manifests)
    return cluster, cluster.path.read_text()[:-len(manifests)]


@pytest.mark.long
def test_scaling_2_5_1_under_a_client_loop_loses_no_connection(make_cluster, tmp_path):
    prefix = new_prefix()
    name = f"{prefix}-web"
    cluster, base = started(make_cluster, server_deployment(name, 2), prefix)
    loop = Loop(cluster, "a1", name, 80, tmp_path)
    try:
        key = f"Deployment/default/{name}"
        wait_for(lambda: loop.progress()["ok"] >= 20, what="the loop to get answers")
        for replicas in (5, 1):
            result = reload(cluster, base + server_deployment(name, replicas))
            assert result.returncode == 0, result.stderr
            wait_for(lambda: (lambda p: (p["pods"], p["available"]) == (replicas, replicas))(
                progress(cluster, key)), timeout=60, what=f"{replicas} available pods")
            pods = [p["pod"] for p in pods_of(cluster, f"ReplicaSet/{name}-")
                    if not p["terminating"]]   # (removed ones drain for a moment)
            assert len(pods) == replicas
            # every pod answers through the Service, and the removed ones are gone for good
            wait_for(lambda: loop.answered_by(*pods), timeout=30, what=f"answers from {pods}")
            wait_for(lambda: not [n for n in list_netns() if n.startswith(f"{name}-")
                                  and n not in pods], timeout=30, what="removed pods to go")
            seen = loop.progress()["ok"]
            wait_for(lambda: loop.progress()["ok"] >= seen + 50, what="50 more answers")
            assert loop.last(50) <= set(pods)
            assert len(programs_with(f"{SERVER} 8080 {name}")) == replicas
            if replicas == 5:
                assert {p["node"] for p in pods_of(cluster, f"ReplicaSet/{name}-")} == {
                    "node-a", "node-b"}
        summary = loop.stop()
    finally:
        loop.kill()
    print(f"scaling 2 -> 5 -> 1: {summary['ok']} connections answered, {summary['failed']} "
          "failed")
    assert summary["failed"] == 0, summary["failures"]
    assert summary["ok"] > 200


@pytest.mark.long
def test_a_template_change_rolls_one_pod_at_a_time_without_a_failed_connection(make_cluster,
                                                                              tmp_path):
    prefix = new_prefix()
    name = f"{prefix}-web"
    cluster, base = started(make_cluster, server_deployment(name, 2), prefix)
    key = f"Deployment/default/{name}"
    old = {p["pod"] for p in pods_of(cluster, f"ReplicaSet/{name}-")}
    loop = Loop(cluster, "b1", name, 80, tmp_path)
    seen = []   # (pods, available) as the rollout goes, polled
    try:
        wait_for(lambda: loop.progress()["ok"] >= 20, what="the loop to get answers")
        result = reload(cluster, base + server_deployment(name, 2, version="2"))
        assert result.returncode == 0, result.stderr

        def done():
            p = progress(cluster, key)
            seen.append((p["pods"], p["available"], p["updated"]))
            return (p["pods"], p["updated"], p["available"]) == (2, 2, 2) and \
                len(p["revisions"]) == 1
        wait_for(done, timeout=90, interval=0.05, what="the rollout")

        def serving() -> set[str]:
            return {p["pod"] for p in pods_of(cluster, f"ReplicaSet/{name}-")
                    if not p["terminating"]}
        # the controller's records say so first; each node attaches and detaches after it
        wait_for(lambda: len(serving()) == 2 and not serving() & old, timeout=10,
                 what="the nodes to serve the two new pods only")
        new = serving()
        wait_for(lambda: not any(n in list_netns() for n in old), timeout=30,
                 what="the old pods to go")
        mark = loop.progress()["ok"]
        wait_for(lambda: loop.progress()["ok"] >= mark + 50, what="50 more answers")
        assert loop.last(50) <= new
        summary = loop.stop()
    finally:
        loop.kill()
    print(f"rollout: {summary['ok']} connections answered, {summary['failed']} failed; "
          f"(pods, available, updated) seen: {sorted(set(seen))}")
    assert summary["failed"] == 0, summary["failures"]
    # maxSurge 25% of 2 is 1 (rounded up), maxUnavailable 0 (rounded down): at most 3 pods,
    # never fewer than 2 available, one new pod at a time
    assert max(p for p, _, _ in seen) == 3 and min(a for _, a, _ in seen) >= 2, seen
    versions = {w.split()[1] for w in summary["by"]}
    assert versions == {"1", "2"}, summary["by"]


@pytest.mark.long
def test_a_statefulset_pod_keeps_its_dns_name_and_address_across_its_nodes_restart(
        make_cluster, tmp_path):
    prefix = new_prefix()
    manifests = f"""---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {prefix}-db}}
spec:
  serviceName: db
  replicas: 2
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
      - name: db
        image: postgres
        command: [python3, {SERVER}, "8080", {prefix}-db]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
"""
    cluster = make_cluster(prefix=prefix, pods_per_node=(1, 1), services=manifests)
    pod = f"{prefix}-db-0"

    def resolve():
        out = cluster.sh("a1", "getent", "hosts", f"{pod}.db").stdout.split()
        return out[0] if out else None

    def answer():
        return cluster.sh("a1", "curl", "-s", "-m", "2", f"http://{pod}.db:8080/").stdout.split()

    address = resolve()
    (p,) = [p for p in all_ports(cluster) if p["pod"] == pod]
    assert address == p["ip"] and answer() == [pod, "1"]
    node = p["node"]
    old_pid = cluster.status(node)["pid"]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: cluster._ready(node) and cluster.status(node)["pid"] != old_pid and
             cluster.status(node)["pods_ready"], timeout=60, what=f"{node} back with {pod}")
    assert resolve() == address
    wait_for(lambda: answer() == [pod, "1"], timeout=30, what=f"{pod} answering again")
    (again,) = [p for p in all_ports(cluster) if p["pod"] == pod]
    assert (again["node"], again["ip"]) == (node, address)
    # its program was started again by the new node process: one per pod runs
    assert len(programs_with(f"{SERVER} 8080 {prefix}-db")) == 2
    assert f"node {node} was killed by SIGKILL; restarting it" in cluster.output()
