"""vrouter-cni: podman containers attached to running nodes, and the CNI spec's commands run as a
runtime runs them (environment + stdin), with the node's IPAM and delegated to host-local."""
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vrouter
from tests.system.cluster import child_env, list_netns, netns_exec, new_prefix, wait_for
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

ONE_NODE = """
cluster: {name: plugin-only, podCIDR: 10.244.0.0/16}
nodes: [{name: node-a, underlay: 127.0.0.11, podCIDR: 10.244.1.0/24}]
"""


def install_plugin(directory: Path) -> Path:
    """vrouter-cni as `vrouter cni-conf --plugin-dir` installs it for a runtime (this checkout's
    code: the test runs it from here)."""
    config = directory / "one.yaml"
    config.write_text(ONE_NODE)
    result = subprocess.run([sys.executable, "-m", "vrouter", "cni-conf", str(config), "--node",
                             "node-a", "--plugin-dir", str(directory / "bin")],
                            capture_output=True, text=True, timeout=60, env=child_env())
    assert result.returncode == 0, result.stderr
    return directory / "bin" / "vrouter-cni"


@pytest.fixture(scope="module")
def cni(tmp_path_factory):
    """Run the installed plugin as a runtime does: its own working directory, an environment of
    PATH and the CNI_* variables, the configuration on stdin."""
    directory = tmp_path_factory.mktemp("cni")
    plugin = install_plugin(directory)
    workdir = directory / "runtime"
    workdir.mkdir()

    def run(command, conf, **env):
        full = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni",
                **env}
        data = json.dumps(conf) if isinstance(conf, dict) else conf
        result = subprocess.run([str(plugin)], input=data.encode() if isinstance(data, str)
                                else data, capture_output=True, env=full, cwd=workdir,
                                timeout=60)
        out = result.stdout.decode()
        return result.returncode, json.loads(out) if out.strip() else None
    return run


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
def test_add_check_del_as_a_runtime_does(make_cluster, cni, tmp_path, ipam, version):
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


def test_gc_and_status(make_cluster, cni):
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


def links(netns: str) -> dict:
    """The interfaces of a namespace: name -> whether it is up."""
    found = json.loads(subprocess.run(["ip", "-n", netns, "-j", "link", "show"], check=True,
                                      capture_output=True, text=True).stdout)
    return {link["ifname"]: "UP" in link["flags"] for link in found}


class Untouched:
    """What a refused call must leave as it was: the container's namespace (only lo, down),
    the cluster's attachment records (none), node-a's ports, and node-a itself (same process,
    ready)."""

    def __init__(self, cluster, netns):
        self.cluster, self.netns = cluster, netns
        status = cluster.status("node-a")
        self.pid, self.ports = status["pid"], [p["pod"] for p in status["ports"]]
        self.records = Path(f"/run/vrouter/{cluster.prefix}/pods")
        assert self.ports and links(netns) == {"lo": False}, "precondition"

    def check(self, case):
        assert links(self.netns) == {"lo": False}, case
        assert not (self.records.exists() and list(self.records.iterdir())), case
        status = self.cluster.status("node-a")
        assert (status["pid"], status["ready"]) == (self.pid, True), case
        assert [p["pod"] for p in status["ports"]] == self.ports, case
        assert self.cluster.proc.poll() is None, case


def test_bad_input_gets_spec_errors_and_leaves_nothing_half_attached(make_cluster, cni,
                                                                     tmp_path):
    """Every row of the spec's error table this plugin can meet, each as a runtime would make
    the call; none leaves anything behind or disturbs the node, and then the same container
    attaches normally."""
    cluster = make_cluster(pods_per_node=(1, 1))
    netns = f"{cluster.prefix}-sb"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    good = {"CNI_CONTAINERID": "bad1", "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0"}
    plain = tmp_path / "plain-file"
    plain.write_text("not a namespace\n")
    conf = conf_of(cluster)
    try:
        untouched = Untouched(cluster, netns)
        cases = [
            # 1: incompatible CNI version
            ("ADD", conf_of(cluster, version="0.4.0"), good, 1),
            ("ADD", {k: v for k, v in conf.items() if k != "cniVersion"}, good, 1),
            ("GC", conf, {}, 1),                                  # GC is 1.1.0
            # 2: unsupported field (its key and value in the message)
            ("ADD", {**conf, "ipMasq": True}, good, 2),
            ("ADD", {**conf, "bridge": "cni0"}, good, 2),
            ("ADD", {**conf, "runtimeConfig": {"bandwidth": {"ingressRate": 8}}}, good, 2),
            ("ADD", {**conf, "runtimeConfig": {"portMappings": [{"hostPort": 8080}]}}, good, 7),
            # 3: the container does not exist
            ("ADD", conf, {**good, "CNI_NETNS": f"/run/netns/{cluster.prefix}-nosuch"}, 3),
            # 4: invalid environment variables
            ("FROB", conf, good, 4),
            ("ADD", conf, {"CNI_IFNAME": "eth0", "CNI_NETNS": good["CNI_NETNS"]}, 4),
            ("ADD", conf, {**good, "CNI_CONTAINERID": "-x"}, 4),
            ("ADD", conf, {**good, "CNI_IFNAME": "eth0:1"}, 4),   # the reproduced crash
            ("ADD", conf, {**good, "CNI_IFNAME": "a" * 16}, 4),
            ("ADD", conf, {**good, "CNI_IFNAME": ".."}, 4),
            ("ADD", conf, {**good, "CNI_IFNAME": "et h0"}, 4),
            ("ADD", conf, {**good, "CNI_IFNAME": "eth%d"}, 4),
            ("ADD", conf, {**good, "CNI_NETNS": f"run/netns/{netns}"}, 4),
            ("ADD", conf, {**good, "CNI_NETNS": str(plain)}, 4),
            ("ADD", conf, {**good, "CNI_NETNS": str(tmp_path)}, 4),
            ("ADD", conf, {**good, "CNI_NETNS": "/proc/self/ns/net"}, 4),   # the host's own
            ("ADD", conf, {**good, "CNI_NETNS": f"/run/netns/{cluster.prefix}-outside"}, 4),
            ("ADD", conf, {**good, "CNI_ARGS": "K8S_POD_NAME"}, 4),
            ("ADD", conf, {**good, "CNI_ARGS": "K8S_POD_NAME=Not_A_Label"}, 4),
            ("ADD", conf, {**good, "CNI_PATH": "bin:/usr/lib/cni"}, 4),
            # 5: I/O failure: more configuration than is read
            ("ADD", json.dumps(conf) + " " * (1 << 20), good, 5),
            # 6: content that does not decode
            ("ADD", "{not json", good, 6),
            ("ADD", b"\xff\xfe", good, 6),
            ("ADD", "[1, 2]", good, 6),
            ("ADD", {**conf, "node": 1}, good, 6),
            ("ADD", {**conf, "cniVersion": "one"}, good, 6),
            ("ADD", {**conf, "prevResult": {"ips": [{"address": "10.244.1.3"}]}}, good, 6),
            ("CHECK", {**conf, "prevResult": {"interfaces": "eth0"}}, good, 6),
            # 7: invalid network configuration
            ("ADD", {k: v for k, v in conf.items() if k != "name"}, good, 7),
            ("ADD", {k: v for k, v in conf.items() if k != "type"}, good, 7),
            ("ADD", conf_of(cluster, node="node-z"), good, 7),
            ("ADD", {**conf, "ipam": {"type": "no-such-ipam"}}, good, 7),
            ("CHECK", conf, good, 7),                             # without prevResult
            # 11: try again later: the cluster is not (yet) running
            ("ADD", {**conf, "cluster": "vt-nosuch"}, good, 11),
            # 100: the name, or the namespace, is a pod's already
            ("ADD", conf, {**good, "CNI_ARGS": f"K8S_POD_NAME={cluster.pod('a1')}"}, 100),
            ("ADD", conf, {**good, "CNI_NETNS": f"/run/netns/{cluster.pod('a1')}"}, 100),
        ]
        for command, data, env, code in cases:
            case = (command, data if len(str(data)) < 300 else "(1 MiB)", env)
            got, error = cni(command, data, **env)
            assert got != 0 and error is not None and error["code"] == code, (case, error)
            assert set(error) == {"cniVersion", "code", "msg", "details"} and error["msg"]
            if code == 2:
                key = next(k for k in ("ipMasq", "bridge", "bandwidth") if k in str(data))
                assert key in error["msg"], error   # the spec: key and value
            if code == 4 and command != "FROB":
                assert "CNI_" in error["msg"], error   # the spec: the variable's name
            untouched.check(case)
        assert links(cluster.pod("a1"))["eth0"]   # the pod whose namespace was offered: intact

        # the node refuses by itself what reaches it without the plugin's checks
        sock = f"/run/vrouter/{cluster.prefix}/node-a.sock"
        node_pid = cluster.status("node-a")["pid"]
        for fields, kind, field in [
                ({"ifname": "eth0:1"}, "invalid", "ifname"),
                ({"container_id": "-x"}, "invalid", "container_id"),
                ({"netns": f"/proc/{node_pid}/ns/net"}, "invalid", "netns"),
                ({"netns": str(plain)}, "invalid", "netns"),
                ({"name": "UPPER"}, "invalid", "name")]:
            answer = control.request(sock, "attach", **{"name": "raw", "netns": netns, **fields})
            assert (answer["ok"], answer["kind"], answer["field"]) == (False, kind, field), answer
            untouched.check(fields)
        result = subprocess.run([sys.executable, "-m", "vrouter", "attach", cluster.prefix,
                                 "--node", "node-a", "--netns", netns, "--ifname", "eth0:1"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "interface name 'eth0:1' may not contain ':'" \
            in result.stderr, result.stderr
        untouched.check("vrouter attach --ifname eth0:1")

        # the host side fails half-way (the container's policy routing refuses the gateway):
        # the TAP was moved, renamed and addressed by then; all of it goes, the node stays
        rule = ["ip", "-n", netns, "rule", "add", "prohibit", "to", "10.244.1.1", "priority", "10"]
        subprocess.run(rule, check=True)
        got, error = cni("ADD", conf, **good)
        assert got != 0 and error["code"] == 5, error
        assert "cannot configure eth0" in error["msg"] and "default route" in error["msg"], error
        untouched.check("host side failed")
        subprocess.run(["ip", "-n", netns, "rule", "del", *rule[5:]], check=True)

        # the container has an eth0 already: the spec says ADD must fail; the TAP never got in
        subprocess.run(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name",
                        "peer0"], check=True)
        got, error = cni("ADD", conf, **good)
        assert got != 0 and error["code"] == 100 and "already has an eth0" in error["msg"], error
        assert links(netns) == {"lo": False, "eth0": False, "peer0": False}
        subprocess.run(["ip", "-n", netns, "link", "del", "eth0"], check=True)
        untouched.check("eth0 exists")
        # counted: the 3 CNI refusals the node made, the 5 raw ones, vrouter attach, these two
        assert cluster.status("node-a")["attaches"]["refused"] == 11

        # and now the same container attaches, as if nothing had happened
        got, result = cni("ADD", conf, **good)
        assert got == 0, result
        ip = assert_spec_result(result, "1.0.0", good["CNI_NETNS"], "eth0", "10.244.1.0/24")
        assert str(ip) == "10.244.1.3"       # the first free address: none was kept by a refusal
        assert links(netns) == {"lo": True, "eth0": True}
        assert netns_exec(netns, "ping", "-c", "1", "-W", "2", cluster.ip("b1")).returncode == 0
        assert cni("DEL", conf, **good)[0] == 0
        assert links(netns) == {"lo": True}
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


def test_the_installed_plugin_imports_nothing_from_where_the_runtime_runs(tmp_path):
    """The runtime (root) runs the plugin from its own working directory and environment: a
    vrouter package planted there, or on PYTHONPATH, must not be what runs."""
    plugin = install_plugin(tmp_path)
    root = str(Path(vrouter.__file__).resolve().parents[1])
    assert root in plugin.read_text()      # this checkout, by absolute path
    planted = tmp_path / "cwd"
    marker = tmp_path / "INJECTED"
    for module in ("vrouter/__init__.py", "vrouter/ops/__init__.py", "vrouter/ops/cni.py"):
        (planted / module).parent.mkdir(parents=True, exist_ok=True)
        (planted / module).write_text(f"open({str(marker)!r}, 'w').close()\n"
                                      "print('{\"planted\": true}')\nraise SystemExit(0)\n")
    for env in ({}, {"PYTHONPATH": str(planted)}, {"PYTHONSTARTUP": str(planted / "x.py"),
                                                  "PYTHONHOME": str(planted)}):
        result = subprocess.run([str(plugin)], input=b'{"cniVersion": "1.0.0"}', cwd=planted,
                                capture_output=True, timeout=60,
                                env={"PATH": os.environ["PATH"], "CNI_COMMAND": "VERSION", **env})
        assert result.returncode == 0, (env, result.stderr)
        assert json.loads(result.stdout) == {"cniVersion": "1.0.0",
                                             "supportedVersions": ["1.0.0", "1.1.0"]}
        assert not marker.exists(), env
    # the planted package is importable the old way, so the test would see an injection
    old = subprocess.run([sys.executable, "-m", "vrouter.ops.cni"], cwd=planted,
                         input=b"{}", capture_output=True, timeout=60,
                         env={"PATH": os.environ["PATH"], "CNI_COMMAND": "VERSION"})
    assert marker.exists() and b"planted" in old.stdout


def test_an_exhausted_pod_cidr_is_refused(tmp_path, make_cluster, cni):
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


def test_a_node_out_of_ports_refuses_before_making_anything(make_cluster, cni):
    """maxPodsPerNode 3: node-a's pod and its DNS server pod leave one port for runtime pods."""
    cluster = make_cluster(pods_per_node=(1, 1), options={"maxPodsPerNode": 3})
    names = [f"{cluster.prefix}-p{k}" for k in range(2)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        env = [{"CNI_CONTAINERID": f"p{k}", "CNI_NETNS": f"/run/netns/{n}", "CNI_IFNAME": "eth0"}
               for k, n in enumerate(names)]
        assert cni("ADD", conf_of(cluster), **env[0])[0] == 0
        got, error = cni("ADD", conf_of(cluster), **env[1])
        assert got != 0 and error["code"] == 101 and "pod ports" in error["msg"], error
        assert links(names[1]) == {"lo": False}
        assert [r.name for r in Path(f"/run/vrouter/{cluster.prefix}/pods").iterdir()] == \
            ["ctr-p0.json"]
        assert cni("DEL", conf_of(cluster), **env[0])[0] == 0      # a port is free again
        assert cni("ADD", conf_of(cluster), **env[1])[0] == 0
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
    assert {cluster.pod("a1"), cluster.pod("b1")} <= list_netns()   # its pods are still there
    assert cluster.status("node-a")["control"]["malformed"] == 4     # and counted
    assert cluster.sh("a1", "ping", "-c", "1", "-W", "2", cluster.ip("b1")).returncode == 0


# --- host ports: portMappings, hostPort, `vrouter attach --publish` ---------------------------------

def node_address(cluster, node):
    from vrouter.model import config
    return str(config.load(cluster.path, check_host=False).node(node).address)


def test_host_ports_lead_from_the_node_address_to_the_pod_keeping_the_client(make_cluster,
                                                                             tmp_path):
    from tests.system.test_service_e2e import attempt
    from tests.system.test_services import OUTSIDE_HOST, TCP_PORT, UDP_PORT, client, echo_servers
    prefix = new_prefix()
    published = {"name": f"{prefix}-a1", "node": "node-a", "ports": [
        {"containerPort": TCP_PORT, "hostPort": 8080},
        {"containerPort": UDP_PORT, "protocol": "UDP", "hostPort": 8053}]}
    neighbour = {"name": f"{prefix}-a2", "node": "node-a"}
    cluster = make_cluster(pods_per_node=(0, 1), extra_pods=[published, neighbour],
                           prefix=prefix)
    a, b = node_address(cluster, "node-a"), node_address(cluster, "node-b")
    outside = f"{prefix}-outside"
    subprocess.run(["ip", "netns", "add", f"{prefix}-r1"], check=True)
    try:
        with echo_servers(cluster, ("a1", "b1")):
            for proto, port in (("tcp", 8080), ("udp", 8053)):
                backend, source = client(cluster, outside, proto, a, port)[:2]
                assert (backend, source) == ("a1", OUTSIDE_HOST)   # the client's own address
                assert client(cluster, "b1", proto, a, port)[0] == "a1"   # from another node
                assert client(cluster, "a2", proto, a, port)[0] == "a1"   # from its own node
                assert client(cluster, "a1", proto, a, port)[0] == "a1"   # from itself
                assert attempt(cluster, outside, proto, b, port) is None  # not node-b's port
            frontends = {f["frontend"]: f for f in cluster.status("node-a")["services"]}
            assert frontends[f"{a}:8080/TCP"]["backends"] == [f"{cluster.ip('a1')}:{TCP_PORT}"]
            assert frontends[f"{a}:8080/TCP"]["new_connections"] >= 2
            # at runtime: a taken host port is refused with nothing made, a free one serves
            attach = [sys.executable, "-m", "vrouter", "attach", str(cluster.path), "--node",
                      "node-a", "--netns", f"{prefix}-r1", "--name", f"{prefix}-r1"]
            taken = subprocess.run(attach + ["-p", f"8080:{TCP_PORT}"], capture_output=True,
                                   text=True, timeout=60)
            assert taken.returncode != 0 and "host port 8080/TCP of node 'node-a' is taken by " \
                f"pod '{prefix}-a1'" in taken.stderr, taken.stderr
            assert links(f"{prefix}-r1") == {"lo": False}
            done = subprocess.run(attach + ["-p", f"9090:{TCP_PORT}", "--publish",
                                            f"9053:{UDP_PORT}/udp"], capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            with echo_servers(cluster, ("r1",)):
                for proto, port in (("tcp", 9090), ("udp", 9053)):
                    assert client(cluster, outside, proto, a, port)[:2] == ["r1", OUTSIDE_HOST]
            detach = subprocess.run([sys.executable, "-m", "vrouter", "detach",
                                     str(cluster.path), "--name", f"{prefix}-r1"],
                                    capture_output=True, text=True, timeout=60)
            assert detach.returncode == 0, detach.stderr
            assert f"{a}:9090/TCP" not in {f["frontend"]
                                           for f in cluster.status("node-a")["services"]}
    finally:
        subprocess.run(["ip", "netns", "del", f"{prefix}-r1"])


def test_podman_publish_and_a_chained_conflist(make_cluster, podman):
    """`podman run -p` through the portMappings capability, in a conflist where Debian's
    tuning and bandwidth plugins follow vrouter-cni (podman speaks CNI 1.0.0)."""
    from tests.system.test_services import OUTSIDE_HOST
    prefix = new_prefix()
    cluster = make_cluster(pods_per_node=(0, 1), prefix=prefix)
    pm = podman(cluster)
    a = node_address(cluster, "node-a")
    made = pm.vrouter("cni-conf", str(cluster.path), "--node", "node-a", "--name",
                      f"{prefix}-chain", "--chain", "tuning,bandwidth").stdout
    conflist = json.loads(made)
    assert [p["type"] for p in conflist["plugins"]] == ["vrouter-cni", "tuning", "bandwidth"]
    assert conflist["plugins"][0]["capabilities"] == {"portMappings": True}
    # tuning works on the interface vrouter-cni made, found through prevResult
    conflist["plugins"][1].update(mtu=1400, sysctl={"net.ipv4.conf.eth0.arp_notify": "1"})
    (pm.net_d / f"{prefix}-chain.conflist").write_text(json.dumps(conflist))
    web, other = f"{prefix}-web", f"{prefix}-other"
    cgi = ("mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\n"
           "echo\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && "
           "httpd -f -p 80 -h /www")
    pm.run("run", "-d", "--network", f"{prefix}-chain", "-p", "8080:80", "--name", web, IMAGE,
           "sh", "-c", cgi)
    try:
        link = pm.run("exec", web, "ip", "link", "show", "eth0").stdout
        assert "mtu 1400" in link, link
        sysctl = pm.run("exec", web, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify")
        assert sysctl.stdout.strip() == "1"
        got = subprocess.run(["ip", "netns", "exec", f"{prefix}-outside", "curl", "-s", "-m",
                              "5", f"http://{a}:8080/cgi-bin/ip"], capture_output=True,
                             text=True, timeout=30)
        # busybox httpd listens on [::] and reports IPv4 clients mapped
        assert got.returncode == 0 and got.stdout.strip() == f"[::ffff:{OUTSIDE_HOST}]", got
        from_pod = cluster.sh("b1", "curl", "-s", "-m", "5", f"http://{a}:8080/cgi-bin/ip")
        assert from_pod.returncode == 0 and from_pod.stdout.strip(), from_pod
        # the host port is taken: a second container asking for it is refused, nothing made
        ports_before = [p["pod"] for p in cluster.status("node-a")["ports"]]
        refused = pm.run("run", "-d", "--network", f"{prefix}-chain", "-p", "8080:80",
                         "--name", other, IMAGE, "sleep", "60", check=False)
        assert refused.returncode != 0 and "host port 8080/TCP" in refused.stderr, refused
        assert [p["pod"] for p in cluster.status("node-a")["ports"]] == ports_before
        pm.run("rm", "--force", "--time", "0", other)
        # bandwidth with rates shapes a veth's host end; a TAP has none: the chain fails
        # and podman's DEL takes vrouter's attachment away again
        conflist["plugins"][2].update(ingressRate=1000000, ingressBurst=100000)
        (pm.net_d / f"{prefix}-chain.conflist").write_text(json.dumps(conflist))
        shaped = pm.run("run", "-d", "--network", f"{prefix}-chain", "--name", other, IMAGE,
                        "sleep", "60", check=False)
        assert shaped.returncode != 0 and "has no veth peer" in shaped.stderr, shaped
        assert [p["pod"] for p in cluster.status("node-a")["ports"]] == ports_before
        pm.run("rm", "--force", "--time", "0", other, check=False)
        pm.run("rm", "--force", "--time", "0", web)   # DEL through the chain: the port goes
        assert f"{a}:8080/TCP" not in {f["frontend"]
                                       for f in cluster.status("node-a")["services"]}
        gone = subprocess.run(["ip", "netns", "exec", f"{prefix}-outside", "curl", "-s", "-m",
                               "2", f"http://{a}:8080/"], capture_output=True, text=True,
                              timeout=30)
        assert gone.returncode != 0
    finally:
        pm.run("rm", "--force", "--time", "0", web, other, check=False)
