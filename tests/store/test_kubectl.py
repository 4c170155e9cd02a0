"""vrouter apply | get | delete against a real etcd (no nodes needed: they write the store)."""
import json

import pytest
import yaml

from vrouter.ops.cli import main
from vrouter.store import etcd as e


def cluster_file(tmp_path, etcd, name="kc"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "cluster": {"name": name, "podCIDR": "10.244.0.0/16",
                    "datastore": {"type": "etcd", "endpoints": [etcd.url], "prefix": "/vt"}},
        "nodes": [{"name": "node-a", "underlay": "127.0.0.11", "podCIDR": "10.244.1.0/24"}]}))
    return path


def manifest(tmp_path, name, *docs):
    path = tmp_path / name
    path.write_text("---\n".join(yaml.safe_dump(d) for d in docs))
    return str(path)


WEB = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
       "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web"}},
       "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox"}]}}
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "deny", "namespace": "default"},
          "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []}}


def keys(etcd):
    import trio

    async def read():
        async with e.Client([etcd.url]) as c:
            return [kv.key.decode() for kv in (await c.get_prefix(b"/vt/"))[1]]
    return trio.run(read)


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apply_get_delete(tmp_path, etcd, capsys):
    config = str(cluster_file(tmp_path, etcd))
    m = manifest(tmp_path, "app.yaml", WEB, POD, POLICY)
    code, out, err = run(capsys, "apply", "-f", m, "--cluster", config)
    assert code == 0, err
    assert out.splitlines() == ["service/web created", "pod/web-1 created",
                                "networkpolicy.networking.k8s.io/deny created"]
    assert sorted(keys(etcd)) == ["/vt/kc/networkpolicies/default/deny",
                                  "/vt/kc/pods/default/web-1", "/vt/kc/services/default/web"]
    code, out, _ = run(capsys, "apply", "-f", m, "--cluster", config)
    assert out.splitlines() == ["service/web unchanged", "pod/web-1 unchanged",
                                "networkpolicy.networking.k8s.io/deny unchanged"]

    code, out, _ = run(capsys, "get", "services", "--cluster", config)
    header, row = out.splitlines()
    assert header.split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert row.split()[:5] == ["web", "ClusterIP", row.split()[2], "<none>", "80/TCP"]
    assert row.split()[2].startswith("10.96.")
    code, out, _ = run(capsys, "get", "pods", "--cluster", config)
    assert out.splitlines()[1].split()[:2] == ["web-1", "Pending"]   # no node gave it an IP yet
    code, out, _ = run(capsys, "get", "svc", "-A", "-o", "json", "--cluster", config)
    listing = json.loads(out)
    assert listing["kind"] == "List" and listing["apiVersion"] == "v1"
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listing["items"]] == [
        ("default", "web"), ("kube-system", "kube-dns")]
    assert all("spec" in i and "metadata" in i for i in listing["items"])
    code, out, _ = run(capsys, "get", "nodes", "-o", "yaml", "--cluster", config)
    node = yaml.safe_load(out)["items"][0]
    assert node["spec"]["podCIDR"] == "10.244.1.0/24"
    assert {"type": "InternalIP", "address": "127.0.0.11"} in node["status"]["addresses"]
    code, out, _ = run(capsys, "get", "nodes", "--cluster", config)
    assert out.splitlines()[1].split()[:2] == ["node-a", "NotReady"]   # not running

    code, out, _ = run(capsys, "delete", "svc", "web", "--cluster", config)
    assert (code, out.strip()) == (0, 'service "web" deleted')
    code, _, err = run(capsys, "delete", "svc", "web", "--cluster", config)
    assert code == 1 and "NotFound" in err
    code, out, _ = run(capsys, "delete", "-f", m, "--cluster", config)
    assert code == 1   # the Service is gone already; the others go
    assert keys(etcd) == []


def test_an_invalid_object_writes_nothing_of_that_apply(tmp_path, etcd, capsys):
    config = str(cluster_file(tmp_path, etcd))
    bad = {**WEB, "metadata": {"name": "bad"},
           "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "protocol": "SCTP"}]}}
    m = manifest(tmp_path, "mixed.yaml", WEB, bad)
    code, _, err = run(capsys, "apply", "-f", m, "--cluster", config)
    assert code == 2
    assert "mixed.yaml: document 2.spec.ports[0].protocol" in err and "nothing was applied" in err
    assert keys(etcd) == []
    # a conflict with what the store holds is refused too, naming the file and field
    code, _, _ = run(capsys, "apply", "-f", manifest(tmp_path, "a.yaml", {
        **WEB, "spec": {**WEB["spec"], "clusterIP": "10.96.0.50"}}), "--cluster", config)
    assert code == 0
    clash = {**WEB, "metadata": {"name": "other"},
             "spec": {**WEB["spec"], "clusterIP": "10.96.0.50"}}
    code, _, err = run(capsys, "apply", "-f", manifest(tmp_path, "b.yaml", clash, POLICY),
                       "--cluster", config)
    assert code == 2 and "b.yaml: document 1.spec.clusterIP" in err, err
    assert keys(etcd) == ["/vt/kc/services/default/web"]
    # a pod name is unique across namespaces (it names a network namespace)
    run(capsys, "apply", "-f", manifest(tmp_path, "p.yaml", POD), "--cluster", config)
    twin = {**POD, "metadata": {"name": "web-1", "namespace": "shop"}}
    code, _, err = run(capsys, "apply", "-f", manifest(tmp_path, "q.yaml", twin),
                       "--cluster", config)
    assert code == 2 and "q.yaml: document 1.metadata.name" in err and "taken" in err


def test_a_pods_status_survives_a_reapply_and_its_node_cannot_change(tmp_path, etcd, capsys):
    import trio
    config = str(cluster_file(tmp_path, etcd))
    m = manifest(tmp_path, "p.yaml", POD)
    run(capsys, "apply", "-f", m, "--cluster", config)

    async def give_address():   # as the node does
        async with e.Client([etcd.url]) as c:
            kv = await c.get(b"/vt/kc/pods/default/web-1")
            doc = json.loads(kv.value)
            doc["status"] = {"podIP": "10.244.1.7", "phase": "Running"}
            await c.put(kv.key, json.dumps(doc).encode())
    trio.run(give_address)
    changed = {**POD, "metadata": {**POD["metadata"], "labels": {"app": "api"}}}
    code, out, _ = run(capsys, "apply", "-f", manifest(tmp_path, "p2.yaml", changed),
                       "--cluster", config)
    assert out.strip() == "pod/web-1 configured"
    code, out, _ = run(capsys, "get", "pods", "-o", "json", "--cluster", config)
    item = json.loads(out)["items"][0]
    assert item["status"]["podIP"] == "10.244.1.7" and item["metadata"]["labels"] == {"app": "api"}
    moved = {**POD, "spec": {**POD["spec"], "nodeName": "node-b"}}
    code, _, err = run(capsys, "apply", "-f", manifest(tmp_path, "p3.yaml", moved),
                       "--cluster", config)
    assert code == 2 and "p3.yaml: document 1.spec.nodeName" in err


def test_corrupt_keys_do_not_break_get(tmp_path, etcd, capsys):
    import trio
    config = str(cluster_file(tmp_path, etcd))

    async def corrupt():
        async with e.Client([etcd.url]) as c:
            await c.put(b"/vt/kc/services/default/junk", b"\xff\xfe not json")
    trio.run(corrupt)
    code, out, err = run(capsys, "get", "svc", "-A", "--cluster", config)
    assert code == 0 and "junk" not in out and "kube-dns" in out


def test_file_mode_says_what_to_do(tmp_path, capsys):
    path = tmp_path / "fm.yaml"
    path.write_text("cluster: {podCIDR: 10.244.0.0/16}\nnodes: [{name: node-a, underlay: "
                    "127.0.0.11, podCIDR: 10.244.1.0/24}]\n")
    m = manifest(tmp_path, "app.yaml", WEB)
    for argv in (["apply", "-f", m], ["get", "pods"], ["delete", "svc", "web"]):
        code, out, err = run(capsys, *argv, "--cluster", str(path))
        assert code == 2 and out == ""
        assert "vrouter reload" in err and "cluster.datastore" in err


@pytest.mark.parametrize("datastore, problem", [
    ({"type": "etcd"}, "cluster.datastore.endpoints: must be a non-empty list"),
    ({"type": "etcd", "endpoints": ["127.0.0.1:2379"]}, "is not an http:// or https:// URL"),
    ({"type": "etcd", "endpoints": ["http://127.0.0.1:2379"], "prefix": "vrouter/"},
     "cluster.datastore.prefix"),
    ({"type": "etcd", "endpoints": ["http://127.0.0.1:2379"], "leaseTTL": 1},
     "cluster.datastore.leaseTTL: 1 is out of range"),
    ({"type": "consul"}, "cluster.datastore.type: 'consul': file or etcd"),
    ({"type": "file", "endpoints": []}, "cluster.datastore.endpoints: only a datastore of type"),
])
def test_datastore_config_errors(datastore, problem):
    from vrouter.model import config
    text = yaml.safe_dump({"cluster": {"podCIDR": "10.244.0.0/16", "datastore": datastore},
                           "nodes": [{"name": "a", "underlay": "127.0.0.11",
                                      "podCIDR": "10.244.1.0/24"}]})
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text, check_host=False)
    assert problem in str(caught.value)


def test_etcd_clusters_may_list_no_nodes():
    from vrouter.model import config
    cluster = config.parse("cluster: {podCIDR: 10.244.0.0/16, nodeCIDRMaskSize: 26, datastore: "
                           "{type: etcd, endpoints: ['http://127.0.0.1:2379'], leaseTTL: 5}}\n",
                           check_host=False)
    assert cluster.nodes == () and cluster.node_mask == 26
    assert cluster.datastore.lease_ttl == 5
    with pytest.raises(config.ConfigError, match="nodes: required field is missing"):
        config.parse("cluster: {podCIDR: 10.244.0.0/16}\n", check_host=False)


DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
          "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                   "template": {"metadata": {"labels": {"app": "web"}},
                                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}


def test_workloads_apply_get_and_delete(tmp_path, etcd, capsys):
    config = str(cluster_file(tmp_path, etcd))
    # refused as the API server refuses it, with file, field and problem; nothing written
    bad = {**DEPLOY, "spec": {**DEPLOY["spec"], "selector": {"matchLabels": {"app": "db"}}}}
    code, _, err = run(capsys, "apply", "-f", manifest(tmp_path, "bad.yaml", bad),
                       "--cluster", config)
    assert code == 2 and "bad.yaml: document 1.spec.template.metadata.labels" in err \
        and "does not match" in err, err
    assert keys(etcd) == []
    code, out, err = run(capsys, "apply", "-f", manifest(tmp_path, "d.yaml", DEPLOY),
                         "--cluster", config)
    assert (code, out.strip()) == (0, "deployment.apps/web created"), err
    assert keys(etcd) == ["/vt/kc/deployments/default/web"]
    code, out, _ = run(capsys, "get", "deploy", "--cluster", config)
    header, row = out.splitlines()
    assert header.split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert row.split()[:4] == ["web", "0/2", "0", "0"]   # no controller has made pods yet
    code, out, _ = run(capsys, "get", "pods", "-o", "wide", "--cluster", config)
    lines = out.splitlines()
    owner = lines[0].split().index("OWNER")
    owners = {line.split()[owner] for line in lines[1:] if line.startswith("web-")}
    assert len(lines) == 3 and len(owners) == 1 and owners.pop().startswith("ReplicaSet/web-")
    code, out, _ = run(capsys, "delete", "deployment", "web", "--cluster", config)
    assert (code, out.strip()) == (0, 'deployment.apps "web" deleted')
    assert keys(etcd) == []
