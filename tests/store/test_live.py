"""The live model from store keys (vrouter.model.live): sans-IO."""
import json

from vrouter.model import config, live

FILE = """
cluster:
  name: lv
  podCIDR: 10.244.0.0/16
  datastore: {type: etcd, endpoints: ["http://127.0.0.1:2379"]}
nodes:
  - {name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}
"""


def file():
    return config.parse(FILE, check_host=False)


def registration(name, underlay, cidr, address):
    node = config.Node(name=name, index=9, underlay=config.ipaddress.IPv4Address(underlay),
                       pod_cidr=config.ipaddress.IPv4Network(cidr),
                       vtep_mac=config.mac_from_ip("0e:76", config.ipaddress.IPv4Network(cidr)
                                                   .network_address),
                       address=config.ipaddress.IPv4Address(address))
    return json.dumps(live.node_document(node)).encode()


def svc(name, ip=None, ns="default", port=80):
    spec = {"selector": {"app": name}, "ports": [{"port": port}]}
    if ip:
        spec["clusterIP"] = ip
    return json.dumps({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec}).encode()


def pod(name, node, ip=None, labels=None):
    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
           "spec": {"nodeName": node}}
    if ip:
        doc["status"] = {"podIP": ip}
    return json.dumps(doc).encode()


def test_registered_nodes_join_and_leave_with_their_key():
    items = {"nodes/node-a": registration("node-a", "127.0.0.11", "10.244.1.0/24", "172.18.0.2"),
             "nodes/node-x": registration("node-x", "192.0.2.7", "10.244.7.0/24", "172.18.0.9")}
    model = live.build(file(), items)
    assert [n.name for n in model.cluster.nodes] == ["node-a", "node-x"]
    assert str(model.cluster.node("node-x").pod_cidr) == "10.244.7.0/24"
    assert model.running == {"node-a", "node-x"}
    assert any(p.dns_server and p.node == "node-x" for p in model.cluster.pods)
    del items["nodes/node-x"]   # its lease expired
    model = live.build(file(), items)
    assert [n.name for n in model.cluster.nodes] == ["node-a"]   # the file's node stays


def test_a_registration_that_overlaps_is_skipped_with_the_reason():
    items = {"nodes/node-x": registration("node-x", "192.0.2.7", "10.244.1.0/24", "172.18.0.9")}
    model = live.build(file(), items)
    assert [n.name for n in model.cluster.nodes] == ["node-a"]
    assert "overlaps node 'node-a'" in model.problems["nodes/node-x"]


def test_corrupt_and_foreign_keys_are_skipped_not_applied():
    items = {"services/default/ok": svc("ok"),
             "services/default/broken": b"{not json",
             "services/default/wrong": svc("other"),               # another object's key
             "pods/default/svc": svc("svc"),                          # a Service under pods/
             "services/default/bad": json.dumps({"apiVersion": "v1", "kind": "Service",
                                                 "metadata": {"name": "bad"},
                                                 "spec": {"ports": [{"port": 0}]}}).encode(),
             "attachments/x": b"[]"}
    model = live.build(file(), items)
    assert [s.key for s in model.cluster.services] == ["default/ok", "kube-system/kube-dns"]
    assert set(model.problems) == {"services/default/broken", "services/default/wrong",
                                   "pods/default/svc", "services/default/bad", "attachments/x"}
    assert "not JSON" in model.problems["services/default/broken"]
    assert "spec.ports[0].port" in model.problems["services/default/bad"]


def test_a_conflict_is_the_later_keys():
    items = {"services/default/a": svc("a", "10.96.0.50"),
             "services/default/b": svc("b", "10.96.0.50")}
    model = live.build(file(), items)
    assert [s.key for s in model.cluster.services if s.namespace == "default"] == ["default/a"]
    assert "10.96.0.50" in model.problems["services/default/b"]


def test_pods_pending_held_and_placed():
    items = {"pods/default/p1": pod("p1", "node-a", "10.244.1.9", {"app": "web"}),
             "pods/default/p2": pod("p2", "node-a"),
             "pods/default/p3": pod("p3", "node-z"),
             "services/default/web": svc("web")}
    model = live.build(file(), items)
    assert str(model.cluster.pod("p1").ip) == "10.244.1.9"
    assert [k for k, _ in model.pending] == ["pods/default/p2"]
    assert model.held == [("pods/default/p3", "node-z")]
    assert not model.problems
    # node-z registers: p3 is no longer held but pending (its node gives it an address)
    items["nodes/node-z"] = registration("node-z", "192.0.2.9", "10.244.9.0/24", "172.18.0.11")
    model = live.build(file(), items)
    assert model.held == [] and sorted(k for k, _ in model.pending) == ["pods/default/p2",
                                                                          "pods/default/p3"]


def test_attachments_only_of_running_nodes_and_lost_pods():
    attachment = {"name": "rt", "namespace": "default", "node": "node-x", "ip": "10.244.7.5",
                  "mac": "0a:58:0a:f4:07:05", "netns": "/run/netns/rt", "labels": {}}
    items = {"attachments/rt": json.dumps(attachment).encode()}
    assert "rt" not in {p.name for p in live.build(file(), items).cluster.pods}
    items["nodes/node-x"] = registration("node-x", "192.0.2.7", "10.244.7.0/24", "172.18.0.9")
    assert "rt" in {p.name for p in live.build(file(), items).cluster.pods}


def test_apply_extras_are_checked_last():
    items = {"services/default/a": svc("a", "10.96.0.50")}
    extra = [("services/default/b", json.loads(svc("b", "10.96.0.50")),
              config.check_object(config.Reader("b.yaml"), json.loads(svc("b", "10.96.0.50")),
                                  "document 1", "b.yaml"))]
    model = live.build(file(), items, extra=extra)
    assert model.problems["services/default/b"].startswith("b.yaml: document 1")


def deployment(replicas):
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "w", "image": "x",
                                                       "command": ["sleep", "1d"]}]}}}}).encode()


def test_applied_workloads_their_records_and_readiness():
    from vrouter.model import revisions, workloads
    node_a = registration("node-a", "127.0.0.11", "10.244.1.0/24", "172.18.0.2")
    items = {"nodes/node-a": node_a, "deployments/default/web": deployment(3)}
    model = live.build(file(), items)
    web = [p for p in model.cluster.pods if p.workload == "Deployment/default/web"]
    assert len(web) == 3 and not any(p.ready for p in web)   # nobody said they are ready
    # the controllers' record decides which pods exist: here one of the three
    (w,) = model.cluster.workloads
    record = (workloads.Revision(w.template_hash, w.template, (0,)),)
    items["workloads/Deployment/default/web"] = revisions.encode(w.key, record)
    model = live.build(file(), items)
    (one,) = [p for p in model.cluster.pods if p.workload]
    assert one.name == web[0].name and model.revisions == {w.key: record}
    # ready once a running node lists it in its registration
    doc = json.loads(node_a)
    doc["metadata"]["annotations"][live.ANNOTATION_READY_PODS] = workloads.ready_key(
        one.name, one.revision)
    items["nodes/node-a"] = json.dumps(doc).encode()
    (one,) = [p for p in live.build(file(), items).cluster.pods if p.workload]
    assert one.ready
    # a corrupt record is reported, and the workload is its template at full size again
    items["workloads/Deployment/default/web"] = b"{not json"
    model = live.build(file(), items)
    assert "workloads/Deployment/default/web" in model.problems
    assert len([p for p in model.cluster.pods if p.workload]) == 3
