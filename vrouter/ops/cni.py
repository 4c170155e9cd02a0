"""vrouter-cni: a CNI plugin (spec 1.0.0 and 1.1.0) that attaches containers to a running node.

A runtime (podman, containerd, ...) runs it with CNI_* environment variables and the network
configuration on stdin (https://github.com/containernetworking/cni/blob/main/SPEC.md):

  ADD      ask the node (its control socket, /run/vrouter/CLUSTER/NODE.sock) to make a TAP, move
           it into CNI_NETNS as CNI_IFNAME and address it; print the result (interfaces, ips,
           routes, dns; a prevResult's entries come first). CNI_ARGS K8S_POD_NAME /
           K8S_POD_NAMESPACE bind it to a pod of the cluster file marked `netns: cni` (its
           address, MAC and labels), or name a new pod.
  DEL      ask the node to detach it; succeeds when it is gone already, or the node is.
  CHECK    ask the node whether the attachment is there as made, and as prevResult says.
  GC       (1.1.0) detach this network's attachments not in cni.dev/valid-attachments.
  STATUS   (1.1.0) whether the node is running and can attach.
  VERSION  the versions this plugin speaks.

Network configuration: {"cniVersion": "1.0.0", "name": NET, "type": "vrouter-cni",
"cluster": NAME, "node": NODE} and optionally "ipam": {"type": "host-local", ...}: then the
address comes from that IPAM plugin (found through CNI_PATH, run as the spec says) instead of
the node. `vrouter cni-conf` writes one.

Input is checked here, before the node is asked (`parse`: no I/O, so unit tests cover every
case), and the node checks again before it makes anything. Errors are the spec's error objects
on stdout with its codes (the table is in the README), and a non-zero exit; a refused ADD
leaves nothing behind.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from vrouter.host import netns as host_netns, state
from vrouter.model.names import (
    cni_name_problem, dns_label_problem, interface_problem, pod_name_for_container,
)
from vrouter.ops import control

SUPPORTED = ["1.0.0", "1.1.0"]
COMMANDS = {"ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"}

# error codes of the CNI spec, and ours (100 and up are the plugin's)
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
NAME_OR_ADDRESS_TAKEN = 100
ADDRESSES_EXHAUSTED = 101
NOT_AS_MADE = 102
INTERNAL = 999
KIND_CODES = {"invalid": INVALID_CONFIG, "taken": NAME_OR_ADDRESS_TAKEN,
              "exhausted": ADDRESSES_EXHAUSTED, "no-netns": UNKNOWN_CONTAINER,
              "unknown": UNKNOWN_CONTAINER, "host": IO_FAILURE, "changed": NOT_AS_MADE}
# a request field the node refused -> the environment variable it came from (code 4)
FIELD_VARIABLES = {"ifname": "CNI_IFNAME", "container_id": "CNI_CONTAINERID",
                   "netns": "CNI_NETNS", "name": "CNI_ARGS K8S_POD_NAME",
                   "namespace": "CNI_ARGS K8S_POD_NAMESPACE"}

REQUIRED_ENV = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
                "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "GC": ("CNI_PATH",), "STATUS": (), "VERSION": ()}
NEEDS_110 = {"GC", "STATUS"}
MAX_INPUT = 1 << 20          # bytes of network configuration read from stdin
MAX_PORT_MAPPINGS = 64       # as the node takes them (vrouter.node.pods)
REQUEST_TIMEOUT = 60
DELEGATE_TIMEOUT = 60

# the fields of our plugin configuration, with their JSON types; the others the spec reserves
# or defines for networks (a single-plugin .conf file carries those too)
FIELD_TYPES = {"cniVersion": str, "cniVersions": list, "name": str, "type": str,
               "cluster": str, "node": str, "ipam": dict, "prevResult": dict,
               "runtimeConfig": dict, "args": dict, "capabilities": dict, "disableCheck": bool,
               "disableGC": bool, "loadOnlyInlinedPlugins": bool,
               "cni.dev/valid-attachments": list, "cni.dev/attachments": list}
UNSUPPORTED = {"dns": "DNS settings come from the cluster (cluster.dns)",
               "ipMasq": "masquerading is the cluster's (cluster.masquerade)",
               "plugins": "a conflist is the runtime's to execute; give vrouter-cni one plugin"
                          " object"}
_SEMVER = re.compile(r"^\d+\.\d+\.\d+\Z")
_ARG_KEY = re.compile(r"^[A-Za-z0-9_]+\Z")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


@dataclass
class Invocation:
    """One call, checked: what the runtime asked for."""
    command: str
    version: str
    conf: dict
    container_id: str = ""
    ifname: str = ""
    netns: str = ""
    args: dict | None = None
    path: tuple[str, ...] = ()

    @property
    def pod_name(self) -> str:
        return (self.args or {}).get("K8S_POD_NAME") or pod_name_for_container(self.container_id)

    @property
    def pod_namespace(self) -> str:
        return (self.args or {}).get("K8S_POD_NAMESPACE") or "default"


def main() -> int:
    version = SUPPORTED[-1]
    try:
        call = parse(os.environ, _read_stdin())
        version = call.version
        if call.command == "VERSION":
            return _print({"cniVersion": version, "supportedVersions": SUPPORTED})
        return {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc,
                "STATUS": status}[call.command](call)
    except CniError as exc:
        return _error(version, exc.code, exc.msg, exc.details)
    except Exception as exc:   # a bug of ours: still a spec error object, never a traceback
        return _error(version, INTERNAL, f"vrouter-cni failed: {type(exc).__name__}: {exc}",
                      traceback.format_exc(limit=-3))


def _error(version: str, code: int, msg: str, details: str) -> int:
    _print({"cniVersion": version if version in SUPPORTED else SUPPORTED[-1],
            "code": code, "msg": msg, "details": details})
    return 1


def _print(obj: dict) -> int:
    print(json.dumps(obj))
    return 0


def _read_stdin() -> bytes:
    try:
        data = sys.stdin.buffer.read(MAX_INPUT + 1)
    except OSError as exc:
        raise CniError(IO_FAILURE, "cannot read the network configuration from stdin",
                       str(exc)) from None
    if len(data) > MAX_INPUT:
        raise CniError(IO_FAILURE, f"the network configuration on stdin is larger than "
                                   f"{MAX_INPUT // 1024} KiB")
    return data


# --- checking a call (no I/O) -------------------------------------------------------------------

def parse(env, data: bytes) -> Invocation:
    """The call the environment and stdin make, or the CniError the spec asks for."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not a CNI command",
                       f"one of {', '.join(sorted(COMMANDS))}")
    call = Invocation(command, SUPPORTED[-1], {})
    _environment(env, call)
    call.conf = conf = _decode(data)
    call.version = _version(conf, command)
    if command == "VERSION":
        return call
    _configuration(conf, command)
    return call


def _environment(env, call: Invocation) -> None:
    command = call.command
    if command == "VERSION":
        return   # needs nothing but CNI_COMMAND
    missing = [v for v in REQUIRED_ENV[command] if not env.get(v)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"{', '.join(missing)} missing for {command}",
                       "the runtime must set " + ", ".join(REQUIRED_ENV[command]))
    if command in ("ADD", "DEL", "CHECK"):
        call.container_id = env["CNI_CONTAINERID"]
        _env_check(cni_name_problem(call.container_id), "CNI_CONTAINERID", call.container_id)
        call.ifname = env["CNI_IFNAME"]
        _env_check(interface_problem(call.ifname), "CNI_IFNAME", call.ifname)
        call.netns = env.get("CNI_NETNS", "")
        if call.netns and not call.netns.startswith("/"):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {call.netns!r} is not an absolute "
                                                "path", "e.g. /run/netns/NAME or /proc/PID/ns/net")
        call.args = _cni_args(env.get("CNI_ARGS", ""))
    path = env.get("CNI_PATH", "")
    relative = [d for d in path.split(os.pathsep) if d and not d.startswith("/")]
    if relative:
        # a relative directory would run a plugin from wherever the runtime happens to be
        raise CniError(INVALID_ENVIRONMENT, f"CNI_PATH has relative directories: "
                                            f"{', '.join(map(repr, relative))}",
                       "every CNI_PATH entry must be an absolute directory")
    call.path = tuple(d for d in path.split(os.pathsep) if d)


def _env_check(problem: str | None, variable: str, value: str) -> None:
    if problem:
        raise CniError(INVALID_ENVIRONMENT, f"{variable} {value!r} {problem}")


def _cni_args(text: str) -> dict:
    """CNI_ARGS: KEY=VALUE pairs separated by ';' (as libcni reads them: exactly one '=' each).
    K8S_POD_NAME and K8S_POD_NAMESPACE name the pod and must be DNS labels here; other keys
    (K8S_POD_UID, IgnoreUnknown, ...) are for other plugins."""
    args = {}
    if not text:
        return args
    for pair in text.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or "=" in value or not _ARG_KEY.match(key):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {pair!r} is not KEY=VALUE",
                           "CNI_ARGS is KEY=VALUE pairs separated by ';', e.g. "
                           "IgnoreUnknown=1;K8S_POD_NAME=web-1")
        args[key] = value
    for key in ("K8S_POD_NAME", "K8S_POD_NAMESPACE"):
        if key in args:
            _env_check(dns_label_problem(args[key]), f"CNI_ARGS {key}", args[key])
    return args


def _decode(data: bytes) -> dict:
    try:
        conf = json.loads(data.decode("utf-8") if data.strip() else "{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(DECODE_FAILURE, "the network configuration on stdin is not JSON",
                       str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "the network configuration is not a JSON object")
    for key, kind in FIELD_TYPES.items():
        if key in conf and not isinstance(conf[key], kind):
            raise CniError(DECODE_FAILURE, f"{key} {json.dumps(conf[key])} is not a JSON "
                                           f"{_JSON_NAMES[kind]}")
    return conf


_JSON_NAMES = {str: "string", list: "list", dict: "object", bool: "boolean"}


def _version(conf: dict, command: str) -> str:
    """The cniVersion of the call, which this plugin must speak (VERSION: any, answered
    with it when it is one of ours)."""
    version = conf.get("cniVersion")
    if command == "VERSION":
        return version if version in SUPPORTED else SUPPORTED[-1]
    if version is None:
        raise CniError(INCOMPATIBLE_VERSION, "cniVersion is missing (which means 0.1.0)",
                       f"supported: {', '.join(SUPPORTED)}")
    if not _SEMVER.match(version):
        raise CniError(DECODE_FAILURE, f"cniVersion {version!r} is not a version (X.Y.Z)")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       f"supported: {', '.join(SUPPORTED)}")
    if command in NEEDS_110 and version == "1.0.0":
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0",
                       "cniVersion 1.0.0 has no " + command)
    return version


def _configuration(conf: dict, command: str) -> None:
    name = conf.get("name")
    problem = cni_name_problem(name)
    if problem:
        raise CniError(INVALID_CONFIG, f"network name {name!r} {problem}" if name else
                       "the network configuration has no \"name\"")
    kind = conf.get("type")
    if not kind or "/" in kind or "\\" in kind:
        raise CniError(INVALID_CONFIG, "the network configuration needs a \"type\" (the "
                                       "plugin's file name)" if not kind else
                       f"type {kind!r} is not a file name")
    for key, value in conf.items():
        if key in UNSUPPORTED:
            raise CniError(UNSUPPORTED_FIELD, f"unsupported field {key}: {json.dumps(value)}",
                           UNSUPPORTED[key])
        if key not in FIELD_TYPES and not key.startswith("cni.dev/"):
            raise CniError(UNSUPPORTED_FIELD, f"unsupported field {key}: {json.dumps(value)}",
                           "vrouter-cni takes cluster, node and ipam (and the fields the spec "
                           "defines)")
    for key, value in (conf.get("runtimeConfig") or {}).items():
        if key != "portMappings" and value not in (None, [], {}, ""):
            raise CniError(UNSUPPORTED_FIELD, f"unsupported field runtimeConfig.{key}: "
                                              f"{json.dumps(value)}",
                           "vrouter-cni declares one capability, portMappings")
    port_mappings(conf)
    for key in ("cluster", "node"):
        if not conf.get(key):
            raise CniError(INVALID_CONFIG, f"the network configuration needs \"{key}\"",
                           "`vrouter cni-conf CLUSTER --node NODE` writes one")
        # names, not paths: "../../run/vrouter/other" must not reach another cluster's socket
        problem = dns_label_problem(conf[key])
        if problem:
            raise CniError(INVALID_CONFIG, f"{key} {conf[key]!r} {problem}")
    if "ipam" in conf:
        ipam_type = conf["ipam"].get("type")
        if not isinstance(ipam_type, str) or not ipam_type or "/" in ipam_type \
                or "\\" in ipam_type:
            raise CniError(INVALID_CONFIG, f"ipam.type {json.dumps(ipam_type)} must name an "
                                           "IPAM plugin (a file name)")
    if command in ("ADD", "CHECK") and "prevResult" in conf:
        _check_result(conf["prevResult"], "prevResult")
    if command == "CHECK" and "prevResult" not in conf:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult (the result of the ADD)")
    if command == "GC":
        for n, item in enumerate(_valid_attachments(conf)):
            if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                    or not isinstance(item.get("ifname"), str):
                raise CniError(DECODE_FAILURE, f"cni.dev/valid-attachments[{n}] is not "
                                               "{\"containerID\": ..., \"ifname\": ...}")


def _check_result(result: dict, where: str) -> None:
    """A result's shape, as the spec gives it (6 when it does not decode)."""
    def fail(field, problem):
        raise CniError(DECODE_FAILURE, f"{where}.{field} {problem}")
    interfaces = result.get("interfaces", [])
    if not isinstance(interfaces, list):
        fail("interfaces", "is not a list")
    for n, item in enumerate(interfaces):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            fail(f"interfaces[{n}]", "is not an object with a \"name\"")
    for key in ("ips", "routes"):
        if not isinstance(result.get(key, []), list):
            fail(key, "is not a list")
    for n, item in enumerate(result.get("ips", [])):
        if not isinstance(item, dict):
            fail(f"ips[{n}]", "is not an object")
        try:
            if "/" not in str(item.get("address")):
                raise ValueError("no prefix")
            ipaddress.ip_interface(item.get("address"))
        except ValueError:
            fail(f"ips[{n}].address", f"{json.dumps(item.get('address'))} is not an address "
                                      "with a prefix")
        index = item.get("interface")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)
                                  or not 0 <= index < len(interfaces)):
            fail(f"ips[{n}].interface", f"{json.dumps(index)} is not an index of interfaces")
    for n, item in enumerate(result.get("routes", [])):
        if not isinstance(item, dict):
            fail(f"routes[{n}]", "is not an object")
        try:
            ipaddress.ip_network(item.get("dst"), strict=False)
        except (ValueError, TypeError):
            fail(f"routes[{n}].dst", f"{json.dumps(item.get('dst'))} is not a network")
    if not isinstance(result.get("dns", {}), dict):
        fail("dns", "is not an object")


def port_mappings(conf: dict) -> list[dict]:
    """runtimeConfig.portMappings (the portMappings capability, as the portmap plugin reads
    it: hostPort, containerPort, protocol tcp|udp, hostIP) as the node's attach request takes
    them; the node publishes them on its address in its own data path."""
    raw = (conf.get("runtimeConfig") or {}).get("portMappings") or []
    if not isinstance(raw, list) or len(raw) > MAX_PORT_MAPPINGS:
        raise CniError(INVALID_CONFIG, f"runtimeConfig.portMappings must be a list of at most "
                                       f"{MAX_PORT_MAPPINGS} mappings")
    mappings = []
    for n, m in enumerate(raw):
        where = f"runtimeConfig.portMappings[{n}]"
        if not isinstance(m, dict):
            raise CniError(INVALID_CONFIG, f"{where} is not an object")
        for key in ("hostPort", "containerPort"):
            value = m.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise CniError(INVALID_CONFIG, f"{where}.{key} {json.dumps(value)} is not a "
                                               "port (1..65535)")
        protocol = m.get("protocol", "tcp")
        if not isinstance(protocol, str) or protocol.lower() not in ("tcp", "udp", "sctp"):
            raise CniError(INVALID_CONFIG, f"{where}.protocol {json.dumps(protocol)} is not "
                                           "tcp, udp or sctp")
        if protocol.lower() == "sctp":
            raise CniError(UNSUPPORTED_FIELD, f"{where}.protocol sctp: vrouter translates TCP "
                                              "and UDP only")
        host_ip = m.get("hostIP") or ""
        if not isinstance(host_ip, str):
            raise CniError(INVALID_CONFIG, f"{where}.hostIP {json.dumps(host_ip)} is not an "
                                           "address")
        mapping = {"host_port": m["hostPort"], "container_port": m["containerPort"],
                   "protocol": protocol.upper()}
        if host_ip not in ("", "0.0.0.0"):
            mapping["host_ip"] = host_ip   # the node accepts its own address
        mappings.append(mapping)
    return mappings


def _valid_attachments(conf: dict) -> list:
    return conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments", []))


# --- asking the node ----------------------------------------------------------------------------

def _target(conf: dict) -> tuple[str, str]:
    return conf["cluster"], conf["node"]


def _ask(conf: dict, cmd: str, missing_ok: bool = False, **fields) -> dict | None:
    """A request to the configured node; None when it does not answer and `missing_ok`."""
    cluster, node = _target(conf)
    try:
        return control.request(state.socket_path(cluster, node), cmd, timeout=REQUEST_TIMEOUT,
                               **fields)
    except (OSError, ValueError) as exc:
        if missing_ok:
            return None
        nodes = _configured_nodes(cluster)
        if nodes is not None and node not in nodes:
            raise CniError(INVALID_CONFIG, f"cluster {cluster!r} has no node {node!r}",
                           f"its nodes: {', '.join(nodes)}") from None
        raise CniError(TRY_AGAIN_LATER, f"node {node!r} of cluster {cluster!r} is not running",
                       str(exc)) from None


def _configured_nodes(cluster: str) -> list[str] | None:
    """The nodes of a running cluster, from the file its nodes recorded (None: not running).
    Only YAML is read here: the plugin stays quick to start."""
    import yaml
    for record in sorted(state.cluster_dir(cluster).glob("*.json")):
        source = (state.read_record(cluster, record.stem) or {}).get("source") or {}
        try:
            doc = next(yaml.safe_load_all(Path(source["config"]).read_text()))
            if (doc["cluster"].get("datastore") or {}).get("type") == "etcd":
                return None   # nodes may register themselves: any name may be one
            return [n["name"] for n in doc["nodes"]]
        except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError):
            continue
    return None


def _fail(answer: dict):
    """The node's refusal as the spec's error: a request field it refused is the environment
    variable it came from (4); otherwise the kind says which code."""
    kind, field = answer.get("kind"), answer.get("field")
    error = answer.get("error", "failed")
    if kind == "invalid" and field in FIELD_VARIABLES:
        raise CniError(INVALID_ENVIRONMENT, f"{FIELD_VARIABLES[field]}: {error}")
    raise CniError(KIND_CODES.get(kind, IO_FAILURE), error)


def _check_netns(call: Invocation) -> None:
    """CNI_NETNS is a network namespace (3 when there is nothing there), and not ours: a
    runtime's container, never the host's."""
    try:
        found = host_netns.identity(call.netns)
    except FileNotFoundError:
        raise CniError(UNKNOWN_CONTAINER, f"CNI_NETNS {call.netns} does not exist") from None
    except (host_netns.NotANamespace, OSError) as exc:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {call.netns}: {exc}") from None
    if found == host_netns.own_identity():
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {call.netns} is the network namespace "
                                            "vrouter-cni runs in, not a container's")


# --- commands ---------------------------------------------------------------------------------

def add(call: Invocation) -> int:
    conf = call.conf
    _check_netns(call)
    ip = _ipam(call, "ADD") if "ipam" in conf else None
    try:
        answer = _ask(conf, "attach", netns=call.netns, network=conf["name"], ip=ip,
                      container_id=call.container_id, ifname=call.ifname,
                      name=call.pod_name, namespace=call.pod_namespace,
                      port_mappings=port_mappings(conf))
        if not answer.get("ok"):
            _fail(answer)
        result = _result(answer, call.version, conf.get("prevResult"))
    except BaseException:
        if "ipam" in conf:   # nothing half-done: give the address back
            _ipam(call, "DEL", quiet=True)
        raise
    return _print(result)


def _result(answer: dict, version: str, previous: dict | None = None) -> dict:
    """The ADD result; a prevResult (a plugin before us in a chain) keeps its entries, ours
    follow."""
    previous = previous or {}
    interfaces = list(previous.get("interfaces", [])) + [
        {"name": answer["ifname"], "mac": answer["mac"], "sandbox": answer["netns"]}]
    ips = list(previous.get("ips", [])) + [
        {"address": answer["ip"], "gateway": answer["gateway"], "interface": len(interfaces) - 1}]
    routes = list(previous.get("routes", [])) + [{"dst": "0.0.0.0/0", "gw": answer["gateway"]}]
    return {"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes,
            "dns": answer.get("dns") or previous.get("dns") or {}}


def delete(call: Invocation) -> int:
    """Idempotent: gone already, or the node or cluster gone, is success. DEL needs only the
    container id and interface name (prevResult is not read)."""
    conf = call.conf
    answer = _ask(conf, "detach", missing_ok=True, container_id=call.container_id,
                  ifname=call.ifname)
    if answer is not None and not answer.get("ok"):
        _fail(answer)
    if "ipam" in conf:
        _ipam(call, "DEL", quiet=True)
    return 0


def check(call: Invocation) -> int:
    """The attachment is there as made (the node looks at the interface), and as prevResult
    says: our interface by name, with our MAC and address."""
    conf = call.conf
    answer = _ask(conf, "check", container_id=call.container_id, ifname=call.ifname)
    if not answer.get("ok"):
        _fail(answer)
    previous = conf["prevResult"]
    ours = _result(answer, call.version)
    interface, address = ours["interfaces"][0], ours["ips"][0]["address"]
    listed = [n for n, i in enumerate(previous.get("interfaces", []))
              if i.get("name") == interface["name"] and i.get("sandbox") in (None, "",
                                                                            interface["sandbox"])]
    if not listed:
        raise CniError(NOT_AS_MADE, f"prevResult lists no interface {interface['name']} in "
                                    f"{interface['sandbox']}")
    mac = previous["interfaces"][listed[0]].get("mac")
    if mac is not None and mac.lower() != interface["mac"]:
        raise CniError(NOT_AS_MADE, f"the attachment's MAC differs from prevResult",
                       f"now {interface['mac']}, then {mac}")
    addresses = [i["address"] for i in previous.get("ips", [])
                 if i.get("interface") in (None, listed[0])]
    if address not in addresses:
        raise CniError(NOT_AS_MADE, "the attachment's address differs from prevResult",
                       f"now {address}, then {', '.join(addresses) or 'none'}")
    if "ipam" in conf:
        _ipam(call, "CHECK")
    return 0


def gc(call: Invocation) -> int:
    conf = call.conf
    answer = _ask(conf, "gc", missing_ok=True, network=conf["name"],
                  valid=[{"container_id": v["containerID"], "ifname": v["ifname"]}
                         for v in _valid_attachments(conf)])
    if answer is not None and not answer.get("ok"):
        _fail(answer)
    if "ipam" in conf and _delegate_speaks(call, conf["cniVersion"]):
        _ipam(call, "GC")   # the spec: GC goes on to delegated plugins
    return 0


def status(call: Invocation) -> int:
    """50: the node cannot attach now; 51: and containers it had attached are cut off (it died,
    its attachments are still recorded)."""
    cluster, node = _target(call.conf)
    try:
        answer = control.request(state.socket_path(cluster, node), "status", timeout=10)
    except (OSError, ValueError):
        stranded = _stranded(cluster, node)
        if stranded:
            raise CniError(LIMITED_CONNECTIVITY, f"node {node!r} of cluster {cluster!r} is not "
                                                 f"running; its containers have no network",
                           ", ".join(stranded)) from None
        raise CniError(NOT_AVAILABLE, f"node {node!r} of cluster {cluster!r} is not running") \
            from None
    if not answer.get("ready"):
        raise CniError(NOT_AVAILABLE, f"node {node!r} is starting")
    if "ipam" in call.conf and _delegate_speaks(call, call.conf["cniVersion"]):
        _ipam(call, "STATUS")   # the spec: a delegate's STATUS error is ours
    return 0


def _stranded(cluster: str, node: str) -> list[str]:
    """Pods attached at runtime to `node` whose records outlived it (in the cluster's store:
    the file store of this machine, or etcd when the cluster's file says so)."""
    from vrouter.store import run
    from vrouter.store.base import ATTACHMENTS, StoreError
    from vrouter.store.filestore import FileStore

    async def read(store):
        return (await store.list(ATTACHMENTS)).values()
    file = _cluster_file(cluster)
    try:
        items = run(file, read) if file is not None else FileStore(cluster).read(ATTACHMENTS)
    except StoreError:
        return []
    found = []
    for key, value in sorted(items.items()):
        value = getattr(value, "value", value)
        try:
            record = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and record.get("node") == node:
            found.append(str(record.get("name")))
    return found


def _cluster_file(cluster: str):
    """The cluster file a running cluster's nodes recorded, loaded; None if there is none."""
    from vrouter.model import config
    for record in sorted(state.cluster_dir(cluster).glob("*.json")):
        source = (state.read_record(cluster, record.stem) or {}).get("source") or {}
        try:
            return config.load(source["config"], check_host=False)
        except (KeyError, TypeError, config.ConfigError):
            continue
    return None


# --- delegated IPAM ---------------------------------------------------------------------------

def _plugin(call: Invocation) -> str:
    kind = call.conf["ipam"]["type"]
    for directory in call.path:
        plugin = os.path.join(directory, kind)
        if os.path.isfile(plugin) and os.access(plugin, os.X_OK):
            return plugin
    if not call.path:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_PATH is empty: the IPAM plugin {kind!r} "
                                            "cannot be found")
    raise CniError(INVALID_CONFIG, f"IPAM plugin {kind!r} is not in CNI_PATH",
                   os.pathsep.join(call.path))


def _ipam(call: Invocation, command: str, quiet: bool = False) -> str | None:
    """Run the IPAM plugin named in ipam.type from CNI_PATH, as the spec's delegation: the
    same environment but CNI_COMMAND, the whole configuration on stdin. ADD returns the
    address it gave (with its prefix); `quiet` ignores every failure (an undo)."""
    kind = call.conf["ipam"]["type"]
    try:
        plugin = _plugin(call)
        result = subprocess.run([plugin], input=json.dumps(_for_delegate(plugin, call.conf)),
                                capture_output=True, text=True, timeout=DELEGATE_TIMEOUT,
                                env={**os.environ, "CNI_COMMAND": command})
    except (CniError, OSError, subprocess.SubprocessError) as exc:
        if quiet:
            return None
        if isinstance(exc, CniError):
            raise
        raise CniError(IO_FAILURE, f"IPAM {kind} {command} could not run: {exc}") from None
    if quiet:
        return None
    try:
        answer = json.loads(result.stdout or "{}")
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CniError(DECODE_FAILURE, f"IPAM {kind} {command} printed no JSON object",
                       (result.stdout or result.stderr)[-500:])
    if result.returncode != 0 or "code" in answer:
        code = answer.get("code")
        raise CniError(code if isinstance(code, int) and code > 0 else IO_FAILURE,
                       f"IPAM {kind} {command} failed: "
                       f"{answer.get('msg') or result.stderr.strip()}", str(answer.get("details", "")))
    if command != "ADD":
        return None
    ips = answer.get("ips")
    if not isinstance(ips, list) or not ips or not isinstance(ips[0], dict) \
            or not isinstance(ips[0].get("address"), str):
        raise CniError(IO_FAILURE, f"IPAM {kind} gave no address", result.stdout[-500:])
    return ips[0]["address"]


def _delegate_versions(plugin: str, version) -> list:
    result = subprocess.run([plugin], input=json.dumps({"cniVersion": version}),
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, "CNI_COMMAND": "VERSION"})
    try:
        supported = json.loads(result.stdout).get("supportedVersions", [])
    except (ValueError, AttributeError):
        supported = []
    return supported if isinstance(supported, list) else []


def _delegate_speaks(call: Invocation, version: str) -> bool:
    """Whether the IPAM plugin speaks `version` (GC and STATUS are 1.1.0: Debian's host-local
    stops at 1.0.0 and has neither)."""
    try:
        return version in _delegate_versions(_plugin(call), version)
    except (OSError, subprocess.SubprocessError):
        return False


def _for_delegate(plugin: str, conf: dict) -> dict:
    """The configuration as the delegate can read it: an IPAM plugin that does not speak this
    cniVersion (Debian's host-local stops at 1.0.0) gets 1.0.0, whose IPAM result is the same."""
    supported = _delegate_versions(plugin, conf.get("cniVersion"))
    if conf.get("cniVersion") in supported or "1.0.0" not in supported:
        return conf
    return {**conf, "cniVersion": "1.0.0"}


if __name__ == "__main__":
    sys.exit(main())
