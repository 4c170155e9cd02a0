"""The controllers' steps (vrouter.model.controllers), sans-IO: rollouts keep within maxSurge and
maxUnavailable at every step, StatefulSets go one ordinal at a time, DaemonSets node by node."""
import pytest

from vrouter.model import config, controllers, workloads
from vrouter.model.workloads import ready_key

BASE = """\
cluster: {name: wl, podCIDR: 10.244.0.0/16}
nodes:
  - {name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}
  - {name: node-b, underlay: 127.0.0.12, podCIDR: 10.244.2.0/24}
  - {name: node-c, underlay: 127.0.0.13, podCIDR: 10.244.3.0/24}
"""


def workload(kind, replicas=2, port=8080, extra="", strategy=""):
    spec_extra = {"Deployment": "", "ReplicaSet": "", "DaemonSet": "",
                  "StatefulSet": "  serviceName: db\n"}[kind]
    count = "" if kind == "DaemonSet" else f"  replicas: {replicas}\n"
    text = (f"---\napiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: app}}\nspec:\n{count}"
            f"{spec_extra}{strategy}  selector: {{matchLabels: {{app: x}}}}\n  template:\n"
            f"    metadata: {{labels: {{app: x}}}}\n    spec:\n{extra}      containers:\n"
            f"      - {{name: c, command: [sleep, '{port}']}}\n")
    cluster = config.parse(BASE + text, "wl.yaml", check_host=False)
    return cluster.workloads[0], cluster.nodes


def keys(w, revisions):
    return {ready_key(workloads.pod_name(w, r.hash, m), r.hash) for r in revisions
            for m in r.members}


def settle(w, nodes, revisions, check=None, limit=100):
    """Step until nothing is left to do; a pod becomes available one step after it was made
    (its node needs the time to start it). Returns the states seen, in order."""
    states = [tuple(revisions)]
    born = {k: -1 for k in keys(w, revisions)}
    for i in range(limit):
        available = {k for k in keys(w, states[-1]) if born[k] < i}
        nxt = controllers.step(w, states[-1], nodes, available)
        if check:
            check(nxt, available)
        if nxt == states[-1] and available == keys(w, nxt):
            return states
        for k in keys(w, nxt):
            born.setdefault(k, i)
        if nxt != states[-1]:
            states.append(nxt)
    pytest.fail(f"no fixed point after {limit} steps: {states[-3:]}")


@pytest.mark.parametrize("replicas, surge, unavailable", [(1, 1, 0), (2, 1, 0), (4, 1, 1),
                                                         (10, 3, 2)])
def test_a_deployment_rolls_within_max_surge_and_max_unavailable(replicas, surge, unavailable):
    old, nodes = workload("Deployment", replicas)
    new, _ = workload("Deployment", replicas, port=9090)
    start = workloads.initial(old, nodes)

    def check(state, available):
        pods = keys(new, state)
        assert len(pods) <= replicas + surge
        assert len(pods & available) >= replicas - unavailable

    states = settle(new, nodes, start, check)
    final = states[-1]
    assert [(r.hash, len(r.members)) for r in final] == [(new.template_hash, replicas)]
    assert len(states) > 2   # it took steps, not one jump
    if unavailable == 0:   # one pod at a time: never fewer than replicas available
        for state in states:
            assert len(keys(new, state)) in (replicas, replicas + 1)


def test_a_deployment_scales_at_once_without_a_template_change():
    w, nodes = workload("Deployment", 2)
    five, _ = workload("Deployment", 5)
    one, _ = workload("Deployment", 1)
    two = workloads.initial(w, nodes)
    up = controllers.step(five, two, nodes, keys(w, two))
    assert [r.members for r in up] == [(0, 1, 2, 3, 4)]
    down = controllers.step(one, up, nodes, keys(five, up))
    assert [r.members for r in down] == [(0,)]   # the highest go first


def test_scaling_down_takes_unavailable_pods_first():
    w, nodes = workload("Deployment", 3)
    two, _ = workload("Deployment", 2)
    state = workloads.initial(w, nodes)
    available = keys(w, state) - {ready_key(workloads.pod_name(w, w.template_hash, 0),
                                            w.template_hash)}
    assert [r.members for r in controllers.step(two, state, nodes, available)] == [(1, 2)]


def test_recreate_removes_every_old_pod_before_making_new_ones():
    old, nodes = workload("Deployment", 3)
    new, _ = workload("Deployment", 3, port=9, strategy="  strategy: {type: Recreate}\n")
    states = settle(new, nodes, workloads.initial(old, nodes))
    assert [len(keys(new, s)) for s in states] == [3, 0, 3]


def test_a_rollout_waits_for_new_pods_that_never_become_available():
    old, nodes = workload("Deployment", 2)
    new, _ = workload("Deployment", 2, port=9)
    state = workloads.initial(old, nodes)
    old_pods = keys(old, state)
    for _ in range(5):   # only the old pods are ever available
        state = controllers.step(new, state, nodes, old_pods)
    assert [(r.hash, len(r.members)) for r in state] == [(old.template_hash, 2),
                                                          (new.template_hash, 1)]


def test_a_replicaset_scales_but_does_not_touch_existing_pods():
    w, nodes = workload("ReplicaSet", 2)
    changed, _ = workload("ReplicaSet", 3, port=9)
    state = controllers.step(changed, workloads.initial(w, nodes), nodes, set())
    assert [(r.hash, r.members) for r in state] == [(w.template_hash, (0, 1)),
                                                     (changed.template_hash, (2,))]
    assert controllers.step(changed, state, nodes, keys(changed, state)) == state


def test_a_statefulset_goes_one_ordinal_at_a_time():
    two, nodes = workload("StatefulSet", 2)
    four, _ = workload("StatefulSet", 4)
    states = settle(four, nodes, workloads.initial(two, nodes))
    assert [sorted(m for r in s for m in r.members) for s in states] == [
        [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    states = settle(two, nodes, states[-1])
    assert [sorted(m for r in s for m in r.members) for s in states] == [
        [0, 1, 2, 3], [0, 1, 2], [0, 1]]   # from the highest ordinal down


def test_a_statefulset_update_replaces_from_the_highest_ordinal_down_to_the_partition():
    old, nodes = workload("StatefulSet", 3)
    new, _ = workload("StatefulSet", 3, port=9)
    states = settle(new, nodes, workloads.initial(old, nodes))
    updated = [{m for r in s if r.hash == new.template_hash for m in r.members} for s in states]
    assert updated == [set(), {2}, {1, 2}, {0, 1, 2}]
    part, _ = workload("StatefulSet", 3, port=9, strategy="  updateStrategy: {rollingUpdate: "
                                                            "{partition: 2}}\n")
    states = settle(part, nodes, workloads.initial(old, nodes))
    assert {m for r in states[-1] if r.hash == part.template_hash for m in r.members} == {2}


def test_a_parallel_statefulset_scales_at_once():
    two, nodes = workload("StatefulSet", 2, strategy="  podManagementPolicy: Parallel\n")
    four, _ = workload("StatefulSet", 4, strategy="  podManagementPolicy: Parallel\n")
    state = controllers.step(four, workloads.initial(two, nodes), nodes, set())
    assert sorted(m for r in state for m in r.members) == [0, 1, 2, 3]


def test_a_daemonset_rolls_node_by_node():
    old, nodes = workload("DaemonSet")
    new, _ = workload("DaemonSet", port=9)

    def check(state, available):   # at most one node without an available pod
        by_node = {}
        for r in state:
            for node in r.members:
                by_node.setdefault(node, set()).add(
                    ready_key(workloads.pod_name(new, r.hash, node), r.hash))
        assert sorted(by_node) == ["node-a", "node-b", "node-c"]
        assert sum(1 for pods in by_node.values() if not pods & available) <= 1

    states = settle(new, nodes, workloads.initial(old, nodes), check)
    assert [(r.hash, r.members) for r in states[-1]] == [
        (new.template_hash, ("node-a", "node-b", "node-c"))]
    assert len(states) == 4   # one node per step
    # a narrower nodeSelector takes the pods off the other nodes at once
    only_b, _ = workload("DaemonSet", port=9,
                         extra="      nodeSelector: {kubernetes.io/hostname: node-b}\n")
    assert [r.members for r in controllers.step(only_b, states[-1], nodes, set())] == [
        ("node-b",)]


def test_a_daemonset_with_max_surge_starts_the_new_pod_beside_the_old():
    old, nodes = workload("DaemonSet")
    new, _ = workload("DaemonSet", port=9, strategy="  updateStrategy: {rollingUpdate: "
                                                     "{maxSurge: 1, maxUnavailable: 0}}\n")
    first = controllers.step(new, workloads.initial(old, nodes), nodes,
                             keys(old, workloads.initial(old, nodes)))
    assert [(r.hash, r.members) for r in first] == [
        (old.template_hash, ("node-a", "node-b", "node-c")), (new.template_hash, ("node-a",))]
    states = settle(new, nodes, first)
    assert [(r.hash, r.members) for r in states[-1]] == [
        (new.template_hash, ("node-a", "node-b", "node-c"))]


def test_progress_counts_updated_and_available_pods():
    old, nodes = workload("Deployment", 2)
    new, _ = workload("Deployment", 2, port=9)
    before = workloads.initial(old, nodes)
    state = controllers.step(new, before, nodes, keys(old, before))
    p = controllers.progress(new, state, keys(old, before))
    assert (p["pods"], p["updated"], p["available"]) == (3, 1, 2)
