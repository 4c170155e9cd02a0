"""vrouter-cni: podman containers attached to running nodes, and the CNI spec's commands run as a
runtime runs them (environment + stdin), with the node's IPAM and delegated to host-local."""
import ipaddress
import json
import os
import subprocess
import sys
import pytest

from tests.system.cluster import list_netns, netns_exec, new_prefix, wait_for
from tests.system.podman import IMAGE, Podman
from vrouter.ops import control

VIP = "10.96.0.50"
WEB = f"""
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: {VIP}
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


@pytest.fixture
def podman(tmp_path):
    made = []

    def make(cluster):
        made.append(Podman(tmp_path / "podman", cluster))
        return made[-1]
    yield make
    for p in made:
        p.close()


def http_get(cluster, short, url):
    return cluster.sh(short, sys.executable, "-c",
                      f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=5)"
                      ".read().decode().strip())")


def test_podman_containers_on_two_nodes_reach_each_other_pods_and_services(make_cluster,
                                                                           podman):
    prefix = new_prefix()
    web9 = f"{prefix}-web9"     # declared in the file for a runtime: its address and labels
    pods = [{"name": f"{prefix}-a1", "node": "node-a"}, {"name": f"{prefix}-b1", "node": "node-b"},
            {"name": web9, "node": "node-a", "netns": "cni", "labels": {"app": "web"}}]
    cluster = make_cluster(pods_per_node=(0, 0), extra_pods=pods, services=WEB, prefix=prefix)
    pm = podman(cluster)
    web9_ip = cluster.ip(web9)
    assert cluster.status("node-b")["services"][0]["backends"] == []   # not attached yet
    pm.run("run", "-d", "--network", "vrouter-node-a", "--name", web9, IMAGE, "sh", "-c",
           f"mkdir /www && echo {web9} > /www/index.html && httpd -f -p 8080 -h /www")
    other = f"{prefix}-c2"
    pm.run("run", "-d", "--network", "vrouter-node-b", "--name", other, IMAGE, "sleep", "600")
    try:
        addresses = pm.run("exec", other, "ip", "addr", "show", "eth0").stdout
        other_ip = addresses.split("inet ")[1].split("/")[0]
        assert ipaddress.IPv4Address(other_ip) in ipaddress.IPv4Network("10.244.2.0/24")
        # container to container across nodes, container to pod, pod to container
        for src, dst in ((other, web9_ip), (other, cluster.ip("a1")), (web9, other_ip)):
            result = pm.run("exec", src, "ping", "-c", "2", "-W", "2", dst, check=False)
            assert result.returncode == 0, f"{src} -> {dst}: {result.stdout}{result.stderr}"
        assert cluster.sh("b1", "ping", "-c", "1", "-W", "2", other_ip).returncode == 0
        # the file's pod, now attached: an endpoint of the ClusterIP, reached from node-b
        wait_for(lambda: cluster.status("node-b")["services"][0]["backends"]
                 == [f"{web9_ip}:8080"], what="node-b to learn the endpoint")
        answer = http_get(cluster, "b1", f"http://{VIP}/")
        assert answer.returncode == 0 and answer.stdout.strip() == web9, answer.stderr
        pm.run("rm", "--force", "--time", "0", web9)   # CNI DEL: detached
        wait_for(lambda: cluster.status("node-b")["services"][0]["backends"] == [],
                 what="node-b to drop the endpoint")
        assert web9 not in {p["pod"] for p in cluster.status("node-a")["ports"]}
        refused = http_get(cluster, "b1", f"http://{VIP}/")
        assert refused.returncode != 0 and "Connection refused" in refused.stderr
    finally:
        pm.run("rm", "--force", "--time", "0", web9, other, check=False)


# --- the plugin, run as a runtime runs it ---------------------------------------------------------

def cni(command, conf, **env):
    full = {**os.environ, "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni", **env}
    result = subprocess.run([sys.executable, "-m", "vrouter.ops.cni"], input=json.dumps(conf)
                            if isinstance(conf, dict) else conf, capture_output=True, text=True,
                            env=full, timeout=60)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None


def conf_of(cluster, node="node-a", version="1.0.0", **extra):
    return {"cniVersion": version, "name": f"vrouter-{node}", "type": "vrouter-cni",
            "cluster": cluster.prefix, "node": node, **extra}


def assert_spec_result(result, version, netns, ifname, subnet):
    """The shape the spec gives an ADD result (1.0.0/1.1.0)."""
    assert result["cniVersion"] == version
    (interface,) = result["interfaces"]
    assert interface["name"] == ifname and interface["sandbox"] == netns
    assert len(interface["mac"].split(":")) == 6
    (ip,) = result["ips"]
    assert ip["interface"] == 0
    assert ipaddress.IPv4Interface(ip["address"]).network == ipaddress.IPv4Network(subnet)
    assert ipaddress.IPv4Address(ip["gateway"]) == ipaddress.IPv4Network(subnet)[1]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": ip["gateway"]}]
    assert result["dns"] == {"nameservers": ["10.96.0.10"],   # cluster DNS, as a kubelet sets it
                             "search": ["default.svc.cluster.local", "svc.cluster.local",
                                        "cluster.local"], "options": ["ndots:5"]}
    return ipaddress.IPv4Interface(ip["address"]).ip


@pytest.mark.parametrize("ipam", [None, "host-local"], ids=["node-ipam", "host-local"])
@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_add_check_del_as_a_runtime_does(make_cluster, tmp_path, ipam, version):
    cluster = make_cluster(pods_per_node=(1, 1))
    extra = {}
    if ipam:
        data = tmp_path / "ipam"
        hosts = list(ipaddress.IPv4Network("10.244.1.0/24").hosts())
        extra["ipam"] = {"type": "host-local", "dataDir": str(data), "ranges": [[{
            "subnet": "10.244.1.0/24", "rangeStart": str(hosts[127]), "rangeEnd": str(hosts[-1]),
            "gateway": "10.244.1.1"}]]}
    conf = conf_of(cluster, version=version, **extra)
    netns = f"{cluster.prefix}-sandbox"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        env = {"CNI_CONTAINERID": "c0ffee" * 8, "CNI_NETNS": f"/run/netns/{netns}",
               "CNI_IFNAME": "eth0", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={netns}"}
        code, result = cni("ADD", conf, **env)
        assert code == 0, result
        ip = assert_spec_result(result, version, env["CNI_NETNS"], "eth0", "10.244.1.0/24")
        if ipam:
            assert ip >= hosts[127]                                  # host-local's range
            assert (data / conf["name"] / str(ip)).exists()          # its reservation
        else:
            assert str(ip) == "10.244.1.3"                           # the node's own: next free
        assert netns_exec(netns, "ping", "-c", "1", "-W", "2", cluster.ip("b1")).returncode == 0
        code, error = cni("CHECK", {**conf, "prevResult": result}, **env)
        assert code == 0, error
        lied = {**result, "ips": [{**result["ips"][0], "address": "10.244.1.99/24"}]}
        code, error = cni("CHECK", {**conf, "prevResult": lied}, **env)
        assert code != 0 and "prevResult" in error["msg"]
        code, _ = cni("DEL", {**conf, "prevResult": result}, **env)
        assert code == 0
        assert "eth0" not in netns_exec(netns, "ip", "-br", "link").stdout
        if ipam:
            assert not (data / conf["name"] / str(ip)).exists()     # the address went back
        code, _ = cni("DEL", conf, **env)                            # idempotent
        assert code == 0
        code, error = cni("CHECK", {**conf, "prevResult": result}, **env)
        assert code != 0 and error["code"] == 3
    finally:
        subprocess.run(["ip", "netns", "del", netns])


def test_gc_and_status(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1))
    conf = conf_of(cluster, version="1.1.0")
    assert cni("STATUS", conf) == (0, None)
    names = [f"{cluster.prefix}-s{k}" for k in range(2)]
    for k, name in enumerate(names):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for k, name in enumerate(names):
            code, result = cni("ADD", conf, CNI_CONTAINERID=f"id{k}", CNI_NETNS=f"/run/netns/{name}",
                               CNI_IFNAME="eth0")
            assert code == 0, result
        gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "id1", "ifname": "eth0"}]}
        assert cni("GC", gc)[0] == 0
        ports = {p["pod"] for p in cluster.status("node-a")["ports"]}
        assert "ctr-id0" not in ports and "ctr-id1" in ports
        old_style = {**conf, "cni.dev/attachments": []}          # the earlier key name
        assert cni("GC", old_style)[0] == 0
        assert "ctr-id1" not in {p["pod"] for p in cluster.status("node-a")["ports"]}
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name])
    cluster.stop()
    code, error = cni("STATUS", conf)
    assert code != 0 and error["code"] == 50


def test_bad_input_gets_spec_errors_and_leaves_nothing_half_attached(make_cluster, tmp_path):
    cluster = make_cluster(pods_per_node=(1, 1))
    netns = f"{cluster.prefix}-sb"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    good = {"CNI_CONTAINERID": "bad1", "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0"}
    try:
        cases = [
            ("ADD", "{not json", good, 6),
            ("ADD", conf_of(cluster), {"CNI_IFNAME": "eth0"}, 4),
            ("FROB", conf_of(cluster), good, 4),
            ("ADD", conf_of(cluster, version="0.4.0"), good, 1),
            ("ADD", conf_of(cluster, node="node-z"), good, 7),
            ("ADD", {**conf_of(cluster), "cluster": "vt-nosuch"}, good, 11),   # not (yet) running
            ("ADD", conf_of(cluster), {**good, "CNI_NETNS": "/run/netns/vt-nosuch"}, 3),
            ("ADD", conf_of(cluster), {**good, "CNI_ARGS": f"K8S_POD_NAME={cluster.pod('a1')}"}, 100),
            ("GC", conf_of(cluster), {}, 1),                      # GC is 1.1.0
        ]
        for command, conf, env, code in cases:
            got, error = cni(command, conf, **env)
            assert got != 0 and error["code"] == code, (command, conf, env, error)
            assert set(error) == {"cniVersion", "code", "msg", "details"} and error["msg"]
        assert [p["pod"] for p in cluster.status("node-a")["ports"]] == [
            cluster.pod("a1"), f"{cluster.prefix}-dns-node-a"]   # and its DNS server pod
        assert netns_exec(netns, "ip", "-br", "link").stdout.count("\n") == 1   # only lo
    finally:
        subprocess.run(["ip", "netns", "del", netns])
    # a node that is not running: ADD asks to try again later, DEL succeeds
    cluster.stop()
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        got, error = cni("ADD", conf_of(cluster), **good)
        assert got != 0 and error["code"] == 11, error
        assert cni("DEL", conf_of(cluster), **good)[0] == 0
    finally:
        subprocess.run(["ip", "netns", "del", netns])


def test_an_exhausted_pod_cidr_is_refused(tmp_path, make_cluster):
    from tests.system.cluster import Cluster

    class Small(Cluster):   # node-a's podCIDR a /29: gateway .1, pods .2-.5, DNS server .6
        def __init__(self, tmp_path, **kw):
            super().__init__(tmp_path, **kw)
            self.doc["nodes"][0]["podCIDR"] = "10.244.1.0/29"
            import yaml
            self.path.write_text(yaml.safe_dump(self.doc, sort_keys=False))
    cluster = make_cluster(Small, pods_per_node=(1, 1))
    names = [f"{cluster.prefix}-x{k}" for k in range(4)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        results = [cni("ADD", conf_of(cluster), CNI_CONTAINERID=f"x{k}", CNI_NETNS=f"/run/netns/{n}",
                       CNI_IFNAME="eth0") for k, n in enumerate(names)]
        assert [code for code, _ in results] == [0, 0, 0, 1]
        assert results[-1][1]["code"] == 101 and "no free address" in results[-1][1]["msg"]
        assert netns_exec(names[-1], "ip", "-br", "link").stdout.count("\n") == 1
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name])


def test_malformed_and_oversized_control_requests_get_errors(make_cluster):
    import socket
    cluster = make_cluster(pods_per_node=(1, 1))
    path = f"/run/vrouter/{cluster.prefix}/node-a.sock"
    for payload in (b"{broken\n", b"[1, 2]\n", b'{"cmd": "frobnicate"}\n', b"x" * 200_000 + b"\n"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            try:
                s.sendall(payload)
            except OSError:
                pass   # the node stopped reading an oversized request: fine
            answer = control.receive_line(s)
        assert "error" in json.loads(answer), payload[:40]
    assert cluster.status("node-a")["ready"] and cluster.proc.poll() is None
    assert list_netns()   # and the cluster still serves
    assert cluster.sh("a1", "ping", "-c", "1", "-W", "2", cluster.ip("b1")).returncode == 0
