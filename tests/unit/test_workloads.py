"""Workloads as the Kubernetes API reads them and as its controllers make pods of them: names,
labels, placement, addresses, and one clear error (file, field, problem) for each bad input."""

import pytest

from vrouter.model import config, podspec, scheduler, workloads
from vrouter.model.workloads import Revision

BASE = """\
cluster: {name: wl, podCIDR: 10.244.0.0/16}
nodes:
  - {name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}
  - {name: node-b, underlay: 127.0.0.12, podCIDR: 10.244.2.0/24, labels: {disk: ssd}}
  - {name: node-k, underlay: 127.0.0.13, podCIDR: 10.244.3.0/24, kernel: true}
"""

# as the Kubernetes documentation's Deployment page writes it, with a program to run
DEPLOYMENT = """
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.14.2
        command: [python3, -m, http.server, "8080"]
        ports:
        - containerPort: 8080
"""

STATEFULSET = """
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres, ports: [{name: pg, containerPort: 5432}]}]
"""

DAEMONSET = """
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      tolerations: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
      containers: [{name: agent, image: fluentd, resources: {limits: {memory: 200Mi}}}]
"""


def parse(*docs, base=BASE):
    return config.parse(base + "".join(docs), "wl.yaml", check_host=False)


def made_by(cluster, kind_name):
    return [p for p in cluster.pods if p.workload.startswith(kind_name)]


def test_a_deployment_makes_replicaset_pods_named_and_labelled_as_kubernetes_does():
    cluster = parse(DEPLOYMENT)
    pods = made_by(cluster, "Deployment/default/web")
    assert len(pods) == 3
    h = cluster.workloads[0].template_hash
    assert h and set(h) <= set(workloads.ALPHANUMS)
    for pod in pods:
        name, hash_part, suffix = pod.name.rsplit("-", 2)
        assert (name, hash_part) == ("web", h) and len(suffix) == 5
        assert set(suffix) <= set(workloads.ALPHANUMS)
        assert dict(pod.labels) == {"app": "web", "pod-template-hash": h}
        assert pod.owner == f"ReplicaSet/web-{h}" and pod.revision == h
        assert [c.argv for c in pod.containers] == [("python3", "-m", "http.server", "8080")]
        assert [p.container_port for p in pod.ports] == [8080]
        assert pod.owns_netns and pod.netns == pod.name and pod.gated
    # spread: fewest of the workload's pods first, ties by node order; never the kernel node
    assert [p.node for p in pods] == ["node-a", "node-b", "node-a"]
    assert len({p.name for p in pods}) == 3 and len({p.ip for p in pods}) == 3


def test_the_same_file_gives_the_same_cluster():
    a, b = parse(DEPLOYMENT, STATEFULSET, DAEMONSET), parse(DEPLOYMENT, STATEFULSET, DAEMONSET)
    assert a.pods == b.pods and a.workloads == b.workloads


def test_a_template_change_is_a_new_replicaset_and_scaling_moves_no_pod():
    three = made_by(parse(DEPLOYMENT), "Deployment")
    five = made_by(parse(DEPLOYMENT.replace("replicas: 3", "replicas: 5")), "Deployment")
    one = made_by(parse(DEPLOYMENT.replace("replicas: 3", "replicas: 1")), "Deployment")
    key = {(p.name, p.node, p.ip) for p in three}
    assert key <= {(p.name, p.node, p.ip) for p in five}   # the first three stay as they were
    assert {(p.name, p.node, p.ip) for p in one} <= key
    changed = made_by(parse(DEPLOYMENT.replace("8080", "8081")), "Deployment")
    assert {p.revision for p in changed} != {p.revision for p in three}
    assert not {p.name for p in changed} & {p.name for p in three}
    # pod k of the new ReplicaSet runs where pod k of the old one ran
    assert [p.node for p in changed] == [p.node for p in three]


def test_a_statefulset_has_ordinal_pods_with_hostname_and_subdomain():
    cluster = parse(STATEFULSET)
    pods = made_by(cluster, "StatefulSet")
    assert [p.name for p in pods] == ["db-0", "db-1"]
    assert [(p.hostname, p.subdomain) for p in pods] == [("db-0", "db"), ("db-1", "db")]
    h = cluster.workloads[0].template_hash
    assert dict(pods[1].labels) == {"app": "db", "controller-revision-hash": f"db-{h}",
                                    "statefulset.kubernetes.io/pod-name": "db-1",
                                    "apps.kubernetes.io/pod-index": "1"}
    assert pods[0].owner == "StatefulSet/db"


def test_a_daemonset_has_one_pod_per_node_and_honours_its_node_selector():
    pods = made_by(parse(DAEMONSET), "DaemonSet")
    assert sorted(p.node for p in pods) == ["node-a", "node-b"]   # not the kernel node
    assert all(p.namespace == "kube-system" and p.name.startswith("agent-") for p in pods)
    selected = made_by(parse(DAEMONSET.replace("      tolerations:", "      nodeSelector: "
                                               "{disk: ssd}\n      tolerations:")), "DaemonSet")
    assert [p.node for p in selected] == ["node-b"]
    by_hostname = made_by(parse(DAEMONSET.replace(
        "      tolerations:", "      nodeSelector: {kubernetes.io/hostname: node-a}\n"
        "      tolerations:")), "DaemonSet")
    assert [p.node for p in by_hostname] == ["node-a"]


def test_node_name_and_selector_pin_deployment_pods():
    pinned = made_by(parse(DEPLOYMENT.replace("      containers:", "      nodeName: node-b\n"
                                              "      containers:")), "Deployment")
    assert {p.node for p in pinned} == {"node-b"}
    selected = made_by(parse(DEPLOYMENT.replace("      containers:", "      nodeSelector: "
                                                "{disk: ssd}\n      containers:")), "Deployment")
    assert {p.node for p in selected} == {"node-b"}


def test_workload_addresses_stay_clear_of_the_files_pods():
    base = BASE + "pods:\n  - {name: a1, node: node-a}\n  - {name: a2, node: node-a, ip: 10.244.1.77}\n"
    cluster = parse(DEPLOYMENT.replace("replicas: 3", "replicas: 40"), base=base)
    fixed = {p.ip for p in cluster.pods if not p.workload}
    made = [p.ip for p in made_by(cluster, "Deployment")]
    assert len(set(made)) == 40 and not fixed & set(made)
    assert all(ip not in (cluster.node("node-a").gateway,) for ip in made)


def test_a_pod_manifest_reads_hostname_subdomain_and_its_program():
    cluster = parse("""
---
apiVersion: v1
kind: Pod
metadata: {name: busybox-1, labels: {name: busybox}}
spec:
  hostname: busybox-1
  subdomain: busybox-subdomain
  nodeName: node-a
  restartPolicy: OnFailure
  containers:
  - name: busybox
    image: busybox:1.28
    command: [sleep, "3600"]
    env: [{name: GREETING, value: hello}, {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
""")
    pod = cluster.pod("busybox-1")
    assert (pod.hostname, pod.subdomain, pod.restart_policy) == ("busybox-1",
                                                                  "busybox-subdomain", "OnFailure")
    (c,) = pod.containers
    assert c.argv == ("sleep", "3600") and c.env == (("GREETING", "value", "hello"),
                                                     ("MY_IP", "field", "status.podIP"))
    assert c.readiness == podspec.Probe("tcpSocket", port=8080, period=1)
    assert c.where == "wl.yaml: document 2.spec.containers[0]"
    assert pod.gated and not pod.workload


@pytest.mark.parametrize("doc, field, words", [
    (DEPLOYMENT.replace("    metadata:\n      labels:\n        app: web",
                        "    metadata:\n      labels:\n        app: api"),
     "document 2.spec.template.metadata.labels", "does not match template `labels`"),
    (DEPLOYMENT.replace("replicas: 3", "replicas: -1"), "document 2.spec.replicas",
     "greater than or equal to 0"),
    (STATEFULSET.replace("  serviceName: db\n", ""), "document 2.spec.serviceName",
     "required field is missing"),
    (DEPLOYMENT.replace("  selector:\n    matchLabels:\n      app: web\n", ""),
     "document 2.spec.selector", "required field is missing"),
    (DEPLOYMENT.replace("matchLabels:\n      app: web", "matchLabels: {}"),
     "document 2.spec.selector", "empty selector is invalid"),
    (DEPLOYMENT.replace("apps/v1", "apps/v1beta1"), "document 2.apiVersion", "apps/v1"),
    (DEPLOYMENT.replace("  replicas: 3\n", "  replicas: 3\n  replica: 2\n"),
     "document 2.spec.replica", "unknown field"),
    (DEPLOYMENT.replace("      containers:", "      restartPolicy: OnFailure\n      containers:"),
     "document 2.spec.template.spec.restartPolicy", "supported values: Always"),
    (DEPLOYMENT.replace("  replicas: 3\n", "  replicas: 3\n  strategy: {rollingUpdate: "
                        "{maxSurge: 0, maxUnavailable: 0}}\n"),
     "document 2.spec.strategy.rollingUpdate.maxUnavailable", "may not be 0"),
    (DEPLOYMENT.replace("  replicas: 3\n", "  replicas: 3\n  strategy: {rollingUpdate: "
                        "{maxSurge: 1x}}\n"),
     "document 2.spec.strategy.rollingUpdate.maxSurge", "not a number or a percentage"),
    (DEPLOYMENT.replace("      containers:", "      nodeSelector: {disk: nvme}\n      containers:"),
     "document 2.spec.template.spec.nodeSelector", "no node has the labels disk=nvme"),
    (DEPLOYMENT.replace("      containers:", "      nodeName: node-k\n      containers:"),
     "document 2.spec.template.spec.nodeName", "served by the Linux kernel"),
    (DEPLOYMENT.replace("      containers:", "      affinity: {}\n      containers:"),
     "document 2.spec.template.spec.affinity", "not supported"),
    (DEPLOYMENT.replace("        image: nginx:1.14.2", "        image: nginx:1.14.2\n"
                        "        lifecycle: {preStop: {exec: {command: [sleep, '5']}}}"),
     "document 2.spec.template.spec.containers[0].lifecycle", "not supported"),
    (DEPLOYMENT.replace("        ports:", "        readinessProbe: {httpGet: {port: http}}\n"
                        "        ports:"),
     "document 2.spec.template.spec.containers[0].readinessProbe.httpGet.port",
     "not the name of one of the container's ports"),
    (DEPLOYMENT.replace("name: web\n  labels", "name: " + "w" * 60 + "\n  labels"),
     "document 2.metadata.name", "too long"),
    (DEPLOYMENT + DEPLOYMENT, "", "workload 'Deployment/default/web' is defined twice"),
])
def test_bad_workloads_are_refused_with_file_field_and_problem(doc, field, words):
    with pytest.raises(config.ConfigError, match=words) as err:
        parse(doc)
    assert err.value.field_path == field and err.value.path == "wl.yaml"


def test_a_workload_pod_name_taken_by_a_pod_is_refused():
    base = BASE + "pods:\n  - {name: db-1, node: node-a}\n"
    with pytest.raises(config.ConfigError, match="would make pod 'db-1'") as err:
        parse(STATEFULSET, base=base)
    assert err.value.field_path == "document 2.metadata.name"


def test_revisions_decide_which_pods_exist():
    """What the controllers recorded, not the file alone: an old ReplicaSet's pods stay
    beside the new one's until the rollout takes them away."""
    old = parse(DEPLOYMENT)
    new = parse(DEPLOYMENT.replace("8080", "8081"))
    (w_old,), (w_new,) = old.workloads, new.workloads
    revisions = {w_new.key: (Revision(w_old.template_hash, w_old.template, (0, 1, 2)),
                             Revision(w_new.template_hash, w_new.template, (0,)))}
    live = workloads.with_revisions(new, revisions)
    pods = made_by(live, "Deployment")
    assert sorted(p.revision for p in pods) == sorted([w_old.template_hash] * 3 +
                                                      [w_new.template_hash])
    old_pods = {p.name: p for p in made_by(old, "Deployment")}
    for p in pods:   # the old ReplicaSet's pods are exactly as they were, template included
        if p.revision == w_old.template_hash:
            assert p == old_pods[p.name]


def test_the_scheduler_spreads_a_group_fewest_first_ties_by_node_order():
    cluster = parse("")
    nodes = scheduler.eligible(cluster.nodes, None, ())
    assert [n.name for n in nodes] == ["node-a", "node-b"]
    assert scheduler.spread(nodes, 5) == ["node-a", "node-b", "node-a", "node-b", "node-a"]
    assert scheduler.eligible(cluster.nodes, "node-b", ()) == [cluster.node("node-b")]
    assert scheduler.eligible(cluster.nodes, None, (("disk", "ssd"),)) == [cluster.node("node-b")]


def test_template_hash_is_kubernetes_shaped_and_stable():
    t = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web"}]}}
    same = {"spec": {"containers": [{"name": "web"}]}, "metadata": {"labels": {"app": "web"}}}
    assert workloads.template_hash(t) == workloads.template_hash(same)
    assert workloads.template_hash(t) != workloads.template_hash({**t, "spec": {}})
    # Kubernetes' SafeEncodeString of the decimal hash: digits map into its alphabet
    assert workloads.safe_encode("0123456789") == "456789bcdf"


def test_fenceposts_round_as_kubernetes():
    s = workloads.Strategy()
    assert workloads.fenceposts(s, 2) == (1, 0)
    assert workloads.fenceposts(s, 4) == (1, 1)
    assert workloads.fenceposts(s, 10) == (3, 2)
    assert workloads.fenceposts(workloads.Strategy(max_surge=0, max_unavailable="10%"), 5) == (0, 1)


def test_the_shipped_tutorial_is_a_deployment_and_its_service():
    from vrouter.model.services import endpoints
    cluster = config.load("configs/tutorial.yaml", check_host=False)
    web = [p for p in cluster.pods if p.workload == "Deployment/default/web"]
    assert len(web) == 3 and {p.node for p in web} == {"node-a", "node-b"}
    assert all(c.argv == ("python3", "-m", "http.server", "8080") and c.readiness
               for p in web for c in p.containers)
    service = cluster.service_by_key("default/web")
    assert sorted(e.pod.name for e in endpoints(service, service.ports[0], cluster.pods)) == \
        sorted(p.name for p in web)


def test_a_template_host_port_is_carried_by_every_pod():
    cluster = parse("""
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: edge}
spec:
  selector: {matchLabels: {app: edge}}
  template:
    metadata: {labels: {app: edge}}
    spec:
      containers:
      - {name: e, image: nginx, ports: [{containerPort: 80, hostPort: 8080}]}
""")
    pods = [p for p in cluster.pods if p.workload == "DaemonSet/default/edge"]
    assert sorted(p.node for p in pods) == ["node-a", "node-b"]
    assert all([(c.container_port, c.host_port) for c in p.ports] == [(80, 8080)] for p in pods)
