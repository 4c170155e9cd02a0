"""vrouter-cni's checks of a call, before any node is asked: every row of the CNI spec's
error-code table that applies to the plugin, and the names the spec and the kernel accept."""
import io
import json

import pytest

from vrouter.host import state
from vrouter.model import names
from vrouter.ops import cni

CONF = {"cniVersion": "1.0.0", "name": "vrouter-node-a", "type": "vrouter-cni",
        "cluster": "demo", "node": "node-a"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.244.1.3/24", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


def refused(env=None, conf=None, data=None, **changes):
    """The CniError for a call: ENV and CONF with `changes` (None removes a key)."""
    env = {**ENV, **(env or {})}
    conf = {**CONF, **(conf or {})}
    for d in (env, conf):
        for k in [k for k, v in d.items() if v is None]:
            del d[k]
    with pytest.raises(cni.CniError) as err:
        cni.parse(env, data if data is not None else json.dumps(conf).encode())
    assert err.value.msg
    return err.value


def test_a_good_call_is_read_as_given():
    call = cni.parse({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web-9;"
                                         "K8S_POD_NAMESPACE=shop;K8S_POD_UID=1-2"},
                     json.dumps({**CONF, "prevResult": PREV}).encode())
    assert (call.command, call.version, call.container_id, call.ifname, call.netns) == (
        "ADD", "1.0.0", "c0ffee", "eth0", "/run/netns/x")
    assert (call.pod_name, call.pod_namespace, call.path) == ("web-9", "shop", ("/usr/lib/cni",))
    # without K8S_POD_NAME: the container id, made a DNS label
    call = cni.parse({**ENV, "CNI_CONTAINERID": "My_Ctr.1-abcdef"}, json.dumps(CONF).encode())
    assert call.pod_name == "ctr-my-ctr-1-abc"      # its first 12 characters


@pytest.mark.parametrize("conf, command, words", [
    ({"cniVersion": "0.4.0"}, "ADD", "'0.4.0' is not supported"),
    ({"cniVersion": None}, "ADD", "cniVersion is missing"),
    ({}, "GC", "GC needs cniVersion 1.1.0"),
    ({}, "STATUS", "STATUS needs cniVersion 1.1.0"),
])
def test_1_incompatible_version(conf, command, words):
    err = refused({"CNI_COMMAND": command}, conf)
    assert err.code == 1 and words in err.msg


@pytest.mark.parametrize("conf, words", [
    ({"frobnicate": 7}, "unsupported field frobnicate: 7"),
    ({"dns": {"nameservers": ["1.1.1.1"]}}, 'unsupported field dns: {"nameservers": ["1.1.1.1"]}'),
    ({"ipMasq": True}, "unsupported field ipMasq: true"),
    ({"runtimeConfig": {"ips": ["10.244.1.9/24"]}},
     'unsupported field runtimeConfig.ips: ["10.244.1.9/24"]'),
])
def test_2_unsupported_field_names_key_and_value(conf, words):
    err = refused(conf=conf)
    assert err.code == 2 and words in err.msg


def test_fields_the_spec_defines_are_accepted():
    cni.parse(ENV, json.dumps({**CONF, "cniVersions": ["1.0.0"], "disableCheck": False,
                               "runtimeConfig": {}, "args": {"cni": {"labels": []}},
                               "cni.dev/anything": 1}).encode())


@pytest.mark.parametrize("env, variable", [
    ({"CNI_COMMAND": None}, "CNI_COMMAND"),
    ({"CNI_COMMAND": "add"}, "CNI_COMMAND"),
    ({"CNI_CONTAINERID": None}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "-x"}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "a b"}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "x/../y"}, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": None}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "eth0:1"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "a" * 16}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "."}, "CNI_IFNAME"),
    ({"CNI_IFNAME": ".."}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "a/b"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "a b"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "eth\t0"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "eth%d"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "é" * 8}, "CNI_IFNAME"),            # 16 bytes
    ({"CNI_NETNS": None}, "CNI_NETNS"),
    ({"CNI_NETNS": "run/netns/x"}, "CNI_NETNS"),
    ({"CNI_ARGS": "K8S_POD_NAME"}, "CNI_ARGS"),
    ({"CNI_ARGS": "A=B=C"}, "CNI_ARGS"),
    ({"CNI_ARGS": "=x"}, "CNI_ARGS"),
    ({"CNI_ARGS": "A=1;;B=2"}, "CNI_ARGS"),
    ({"CNI_ARGS": "K8S_POD_NAME=Web_1"}, "CNI_ARGS K8S_POD_NAME"),
    ({"CNI_ARGS": "K8S_POD_NAMESPACE=" + "n" * 64}, "CNI_ARGS K8S_POD_NAMESPACE"),
    ({"CNI_PATH": "/usr/lib/cni:bin"}, "CNI_PATH"),
    ({"CNI_COMMAND": "GC", "CNI_PATH": None}, "CNI_PATH"),
])
def test_4_invalid_environment_names_the_variable(env, variable):
    conf = {"cniVersion": "1.1.0"} if env.get("CNI_COMMAND") == "GC" else {}
    err = refused(env, conf)
    assert err.code == 4 and variable in err.msg, err.msg


def test_the_interface_name_is_checked_for_del_and_check_too():
    for command in ("DEL", "CHECK"):
        err = refused({"CNI_COMMAND": command, "CNI_IFNAME": "eth0:1"}, {"prevResult": PREV})
        assert err.code == 4 and "CNI_IFNAME" in err.msg
    # DEL needs no CNI_NETNS (the container may be gone)
    assert cni.parse({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""},
                     json.dumps(CONF).encode()).netns == ""


def test_5_oversized_input_is_an_io_failure(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b" " * (cni.MAX_INPUT + 1))))
    with pytest.raises(cni.CniError) as err:
        cni._read_stdin()
    assert err.value.code == 5


@pytest.mark.parametrize("data, words", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({**CONF, "name": 5}).encode(), "name 5 is not a JSON string"),
    (json.dumps({**CONF, "ipam": "host-local"}).encode(), 'ipam "host-local" is not a JSON object'),
    (json.dumps({**CONF, "cniVersion": "one"}).encode(), "'one' is not a version"),
    (json.dumps({**CONF, "prevResult": []}).encode(), "prevResult [] is not a JSON object"),
    (json.dumps({**CONF, "prevResult": {**PREV, "ips": {}}}).encode(), "prevResult.ips is not a list"),
    (json.dumps({**CONF, "prevResult": {**PREV, "ips": [{"address": "10.244.1.3"}]}}).encode(),
     "prevResult.ips[0].address \"10.244.1.3\" is not an address with a prefix"),
    (json.dumps({**CONF, "prevResult": {**PREV, "ips": [{"address": "10.0.0.1/8",
                                                          "interface": 3}]}}).encode(),
     "prevResult.ips[0].interface 3 is not an index"),
    (json.dumps({**CONF, "prevResult": {**PREV, "interfaces": [{"mac": "x"}]}}).encode(),
     "prevResult.interfaces[0] is not an object with a \"name\""),
    (json.dumps({**CONF, "prevResult": {**PREV, "routes": [{"dst": "nowhere"}]}}).encode(),
     "prevResult.routes[0].dst \"nowhere\" is not a network"),
])
def test_6_content_that_does_not_decode(data, words):
    err = refused(data=data)
    assert err.code == 6 and words in err.msg, err.msg


def test_6_gc_attachments_that_do_not_decode():
    err = refused({"CNI_COMMAND": "GC"}, {"cniVersion": "1.1.0",
                                          "cni.dev/valid-attachments": [{"containerID": 1}]})
    assert err.code == 6 and "cni.dev/valid-attachments[0]" in err.msg


@pytest.mark.parametrize("conf, command, words", [
    ({"name": None}, "ADD", "no \"name\""),
    ({"name": "-net"}, "ADD", "network name '-net'"),
    ({"type": None}, "ADD", "needs a \"type\""),
    ({"type": "../vrouter-cni"}, "ADD", "not a file name"),
    ({"cluster": None}, "ADD", "needs \"cluster\""),
    ({"node": ""}, "DEL", "needs \"node\""),
    ({"ipam": {}}, "ADD", "ipam.type null must name an IPAM plugin"),
    ({"ipam": {"type": "/bin/sh"}}, "ADD", "must name an IPAM plugin"),
    ({}, "CHECK", "CHECK needs prevResult"),
])
def test_7_invalid_network_configuration(conf, command, words):
    err = refused({"CNI_COMMAND": command}, conf)
    assert err.code == 7 and words in err.msg, err.msg


def test_version_needs_nothing_but_the_command():
    call = cni.parse({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert (call.command, call.version) == ("VERSION", "1.0.0")
    assert cni.parse({"CNI_COMMAND": "VERSION", "CNI_PATH": "rel"}, b"").version == "1.1.0"


@pytest.mark.parametrize("answer, code, words", [
    ({"kind": "invalid", "field": "ifname", "error": "bad"}, 4, "CNI_IFNAME: bad"),
    ({"kind": "invalid", "field": "name", "error": "bad"}, 4, "CNI_ARGS K8S_POD_NAME: bad"),
    ({"kind": "invalid", "field": "netns", "error": "is the node's own"}, 4, "CNI_NETNS"),
    ({"kind": "invalid", "field": "ip", "error": "outside"}, 7, "outside"),
    ({"kind": "no-netns", "field": "netns", "error": "gone"}, 3, "gone"),
    ({"kind": "taken", "field": "name", "error": "taken"}, 100, "taken"),
    ({"kind": "exhausted", "error": "full"}, 101, "full"),
    ({"kind": "host", "error": "netlink error 13"}, 5, "netlink"),
    ({"kind": "changed", "error": "eth0 is down"}, 102, "down"),
    ({"error": "unknown command 'attach'"}, 5, "unknown command"),
])
def test_the_nodes_refusals_become_spec_codes(answer, code, words):
    with pytest.raises(cni.CniError) as err:
        cni._fail({"ok": False, **answer})
    assert err.value.code == code and words in err.value.msg


def test_status_51_when_a_dead_nodes_containers_are_cut_off(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    call = cni.parse({"CNI_COMMAND": "STATUS"}, json.dumps({**CONF, "cniVersion": "1.1.0"}).encode())
    with pytest.raises(cni.CniError) as err:
        cni.status(call)
    assert err.value.code == 50                     # nothing there: not available
    (tmp_path / "demo" / "pods").mkdir(parents=True)
    (tmp_path / "demo" / "pods" / "web-9.json").write_text(json.dumps({"name": "web-9",
                                                                       "node": "node-a"}))
    with pytest.raises(cni.CniError) as err:
        cni.status(call)
    assert err.value.code == 51 and err.value.details == "web-9"


def test_an_add_result_keeps_a_previous_plugins_entries():
    answer = {"ifname": "eth1", "mac": "0a:58:0a:f4:01:03", "netns": "/run/netns/x",
              "ip": "10.244.1.3/24", "gateway": "10.244.1.1", "dns": {}}
    previous = {"interfaces": [{"name": "lo0"}], "ips": [{"address": "192.0.2.1/32",
                                                         "interface": 0}],
                "routes": [{"dst": "192.0.2.0/24"}], "dns": {"nameservers": ["192.0.2.53"]}}
    result = cni._result(answer, "1.1.0", previous)
    assert [i["name"] for i in result["interfaces"]] == ["lo0", "eth1"]
    assert result["ips"][1] == {"address": "10.244.1.3/24", "gateway": "10.244.1.1",
                                "interface": 1}
    assert [r["dst"] for r in result["routes"]] == ["192.0.2.0/24", "0.0.0.0/0"]
    assert result["dns"] == {"nameservers": ["192.0.2.53"]}


@pytest.mark.parametrize("name, ok", [
    ("eth0", True), ("a" * 15, True), ("net1.100", True), ("veth-x_1", True),
    ("", False), ("a" * 16, False), (".", False), ("..", False), ("eth0:1", False),
    ("a/b", False), ("a b", False), ("a\nb", False), ("eth%d", False), (None, False)])
def test_interface_names_follow_the_kernel_and_the_spec(name, ok):
    assert (names.interface_problem(name) is None) == ok


@pytest.mark.parametrize("cid, ok", [
    ("c0ffee", True), ("A_b.c-d", True), ("9", True),
    ("", False), ("-x", False), ("_x", False), (".x", False), ("a b", False), ("a/b", False),
    ("a:b", False)])
def test_container_ids_follow_the_spec(cid, ok):
    assert (names.cni_name_problem(cid) is None) == ok


# --- the portMappings capability ------------------------------------------------------------------

def test_port_mappings_are_read_as_the_portmap_plugin_reads_them():
    conf = {**CONF, "runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "0.0.0.0"},
        {"hostPort": 9000, "containerPort": 9000, "hostIP": "192.168.50.11"}]}}
    call = cni.parse(ENV, json.dumps(conf).encode())
    assert cni.port_mappings(call.conf) == [
        {"host_port": 8080, "container_port": 80, "protocol": "TCP"},
        {"host_port": 5353, "container_port": 53, "protocol": "UDP"},
        {"host_port": 9000, "container_port": 9000, "protocol": "TCP",   # tcp by default
         "host_ip": "192.168.50.11"}]                                    # the node checks it


@pytest.mark.parametrize("mapping, code, words", [
    ({"hostPort": 0, "containerPort": 80}, 7, "hostPort 0 is not a port"),
    ({"hostPort": 8080, "containerPort": 65536}, 7, "containerPort 65536 is not a port"),
    ({"hostPort": "8080", "containerPort": 80}, 7, "hostPort \"8080\" is not a port"),
    ({"hostPort": True, "containerPort": 80}, 7, "hostPort true is not a port"),
    ({"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}, 7, "not tcp, udp or sctp"),
    ({"hostPort": 8080, "containerPort": 80, "protocol": "sctp"}, 2, "TCP and UDP only"),
    ({"hostPort": 8080, "containerPort": 80, "hostIP": 7}, 7, "hostIP 7 is not an address"),
    ("8080:80", 7, "portMappings[0] is not an object"),
])
def test_bad_port_mappings_are_refused_with_the_field(mapping, code, words):
    err = refused(conf={"runtimeConfig": {"portMappings": [mapping]}})
    assert err.code == code and words in err.msg, err.msg


def test_other_capabilities_stay_unsupported_and_too_many_mappings_are_refused():
    err = refused(conf={"runtimeConfig": {"bandwidth": {"ingressRate": 1000}}})
    assert err.code == 2 and "runtimeConfig.bandwidth" in err.msg and "portMappings" in err.details
    many = [{"hostPort": 1000 + k, "containerPort": 80} for k in range(cni.MAX_PORT_MAPPINGS + 1)]
    err = refused(conf={"runtimeConfig": {"portMappings": many}})
    assert err.code == 7 and "at most" in err.msg
