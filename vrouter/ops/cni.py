"""vrouter-cni: a CNI plugin (spec 1.0.0 and 1.1.0) that attaches containers to a running node.

A runtime (podman, containerd, ...) runs it with CNI_* environment variables and the network
configuration on stdin (https://github.com/containernetworking/cni/blob/main/SPEC.md):

  ADD      ask the node (its control socket, /run/vrouter/CLUSTER/NODE.sock) to make a TAP, move
           it into CNI_NETNS as CNI_IFNAME and address it; print the result (interfaces, ips,
           routes, dns). CNI_ARGS K8S_POD_NAME / K8S_POD_NAMESPACE bind it to a pod of the
           cluster file marked `netns: cni` (its address, MAC and labels), or name a new pod.
  DEL      ask the node to detach it; succeeds when it is gone already, or the node is.
  CHECK    ask the node whether the attachment is there as made, and as prevResult says.
  GC       (1.1.0) detach this network's attachments not in cni.dev/valid-attachments.
  STATUS   (1.1.0) whether the node is running and can attach.
  VERSION  the versions this plugin speaks.

Network configuration: {"cniVersion": "1.0.0", "name": NET, "type": "vrouter-cni",
"cluster": NAME, "node": NODE} and optionally "ipam": {"type": "host-local", ...}: then the
address comes from that IPAM plugin (found through CNI_PATH, run as the spec says) instead of
the node. `vrouter cni-conf` writes one. Errors are the spec's error objects on stdout, with
its codes, and a non-zero exit; nothing is left half-attached.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from vrouter.host import state
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
NAME_OR_ADDRESS_TAKEN = 100
ADDRESSES_EXHAUSTED = 101
KIND_CODES = {"invalid": INVALID_CONFIG, "taken": NAME_OR_ADDRESS_TAKEN,
              "exhausted": ADDRESSES_EXHAUSTED, "no-netns": UNKNOWN_CONTAINER,
              "unknown": UNKNOWN_CONTAINER, "host": IO_FAILURE}
REQUIRED_ENV = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
                "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "GC": (), "STATUS": (), "VERSION": ()}
REQUEST_TIMEOUT = 60
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")   # cluster and node names (DNS labels)


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def main() -> int:
    version = SUPPORTED[-1]
    try:
        command = os.environ.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {command!r}",
                           f"one of {', '.join(sorted(COMMANDS))}")
        conf = _read_config(sys.stdin.buffer.read())
        version = conf.get("cniVersion") or version
        if command == "VERSION":
            return _print({"cniVersion": version if version in SUPPORTED else SUPPORTED[-1],
                           "supportedVersions": SUPPORTED})
        if version not in SUPPORTED:
            raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                           f"supported: {', '.join(SUPPORTED)}")
        if command in ("GC", "STATUS") and version == "1.0.0":
            raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0")
        missing = [v for v in REQUIRED_ENV[command] if not os.environ.get(v)]
        if missing:
            raise CniError(INVALID_ENVIRONMENT, f"{', '.join(missing)} missing for {command}")
        return {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc,
                "STATUS": status}[command](conf, version)
    except CniError as exc:
        _print({"cniVersion": version if version in SUPPORTED else SUPPORTED[-1],
                "code": exc.code, "msg": exc.msg, "details": exc.details})
        return 1


def _print(obj: dict) -> int:
    print(json.dumps(obj))
    return 0


def _read_config(data: bytes) -> dict:
    try:
        conf = json.loads(data or b"{}")   # UTF-8 (or -16, -32) as RFC 8259 has it
    except (ValueError, RecursionError) as exc:
        raise CniError(DECODE_FAILURE, "the network configuration is not JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "the network configuration is not a JSON object")
    for key in ("ipam", "prevResult"):
        if conf.get(key) is not None and not isinstance(conf[key], dict):
            raise CniError(DECODE_FAILURE, f"the network configuration's {key} is not an object")
    if not isinstance(conf.get("name", ""), str):
        raise CniError(DECODE_FAILURE, "the network configuration's name is not a string")
    return conf


def _cni_args() -> dict:
    args = {}
    for item in os.environ.get("CNI_ARGS", "").split(";"):
        key, sep, value = item.partition("=")
        if sep:
            args[key] = value
    return args


def _target(conf: dict) -> tuple[str, str]:
    cluster, node = conf.get("cluster"), conf.get("node")
    if not isinstance(cluster, str) or not isinstance(node, str) or not cluster or not node:
        raise CniError(INVALID_CONFIG, "the network configuration needs \"cluster\" and \"node\"",
                       "`vrouter cni-conf CLUSTER --node NODE` writes one")
    for what, name in (("cluster", cluster), ("node", node)):
        if not NAME.fullmatch(name):   # they name paths under /run/vrouter
            raise CniError(INVALID_CONFIG, f"{what} {name!r} is not a {what} name",
                           "a DNS label: lowercase letters, digits and '-'")
    return cluster, node


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
            return [n["name"] for n in doc["nodes"]]
        except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError):
            continue
    return None


def _fail(answer: dict):
    raise CniError(KIND_CODES.get(answer.get("kind"), IO_FAILURE), answer.get("error", "failed"))


def _identity() -> dict:
    args = _cni_args()
    container = os.environ["CNI_CONTAINERID"]
    return {"container_id": container, "ifname": os.environ["CNI_IFNAME"],
            "name": args.get("K8S_POD_NAME") or f"ctr-{container[:12].lower()}",
            "namespace": args.get("K8S_POD_NAMESPACE") or "default"}


# --- commands ---------------------------------------------------------------------------------

def add(conf: dict, version: str) -> int:
    _target(conf)
    netns = os.environ["CNI_NETNS"]
    if not os.path.exists(netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {netns} does not exist")
    ip = None
    if conf.get("ipam"):
        ip = _ipam(conf, "ADD")
    try:
        answer = _ask(conf, "attach", netns=netns, network=conf.get("name", ""), ip=ip,
                      **_identity())
        if not answer.get("ok"):
            _fail(answer)
    except CniError:
        if conf.get("ipam"):   # nothing half-done: give the address back
            _ipam(conf, "DEL", quiet=True)
        raise
    return _print(_result(answer, version))


def _result(answer: dict, version: str) -> dict:
    return {"cniVersion": version,
            "interfaces": [{"name": answer["ifname"], "mac": answer["mac"],
                            "sandbox": answer["netns"]}],
            "ips": [{"address": answer["ip"], "gateway": answer["gateway"], "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": answer["gateway"]}],
            "dns": answer.get("dns") or {}}


def delete(conf: dict, version: str) -> int:
    """Idempotent: gone already, or the node or cluster gone, is success."""
    identity = _identity()
    answer = _ask(conf, "detach", missing_ok=True, container_id=identity["container_id"],
                  ifname=identity["ifname"])
    if answer is not None and not answer.get("ok"):
        _fail(answer)
    if conf.get("ipam"):
        _ipam(conf, "DEL", quiet=True)
    return 0


def check(conf: dict, version: str) -> int:
    identity = _identity()
    answer = _ask(conf, "check", container_id=identity["container_id"], ifname=identity["ifname"])
    if not answer.get("ok"):
        _fail(answer)
    previous = conf.get("prevResult") or {}
    expected = _result(answer, version)
    for key in ("interfaces", "ips"):
        if previous.get(key) is None:
            continue
        if not isinstance(previous[key], list) or not all(isinstance(i, dict) for i in previous[key]):
            raise CniError(DECODE_FAILURE, f"prevResult.{key} is not a list of objects")
        if _comparable(previous[key]) != _comparable(expected[key]):
            raise CniError(IO_FAILURE, f"the attachment's {key} differ from prevResult",
                           f"now {expected[key]}, then {previous[key]}")
    return 0


def _comparable(items: list) -> list:
    return [{k: v for k, v in item.items() if k in ("name", "mac", "address", "gateway")}
            for item in items]


def gc(conf: dict, version: str) -> int:
    valid = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments", []))
    if not isinstance(valid, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    answer = _ask(conf, "gc", missing_ok=True, network=conf.get("name", ""),
                  valid=[{"container_id": v.get("containerID"), "ifname": v.get("ifname")}
                         for v in valid if isinstance(v, dict)])
    if answer is not None and not answer.get("ok"):
        _fail(answer)
    return 0


def status(conf: dict, version: str) -> int:
    cluster, node = _target(conf)
    try:
        answer = control.request(state.socket_path(cluster, node), "status", timeout=10)
    except (OSError, ValueError):
        raise CniError(NOT_AVAILABLE, f"node {node!r} of cluster {cluster!r} is not running") \
            from None
    if not answer.get("ready"):
        raise CniError(NOT_AVAILABLE, f"node {node!r} is starting")
    return 0


# --- delegated IPAM ---------------------------------------------------------------------------

def _ipam(conf: dict, command: str, quiet: bool = False) -> str | None:
    """Run the IPAM plugin named in conf["ipam"]["type"] from CNI_PATH, as the spec's
    delegation: same environment but CNI_COMMAND, the whole configuration on stdin. ADD returns
    the address it gave (with its prefix)."""
    kind = (conf.get("ipam") or {}).get("type")
    if not isinstance(kind, str) or "/" in kind or kind in ("", ".", ".."):
        raise CniError(INVALID_CONFIG, "ipam.type must name an IPAM plugin")
    for directory in os.environ.get("CNI_PATH", "").split(os.pathsep):
        plugin = os.path.join(directory, kind)
        if directory and os.path.isfile(plugin) and os.access(plugin, os.X_OK):
            break
    else:
        if quiet:
            return None
        raise CniError(INVALID_CONFIG, f"IPAM plugin {kind!r} is not in CNI_PATH",
                       os.environ.get("CNI_PATH", ""))
    try:
        result = subprocess.run([plugin], input=json.dumps(_for_delegate(plugin, conf)),
                                capture_output=True, text=True,
                                env={**os.environ, "CNI_COMMAND": command}, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:   # cannot run, or hangs
        if quiet:
            return None
        raise CniError(IO_FAILURE, f"IPAM {kind} {command} failed: {exc}") from None
    if quiet:
        return None
    try:
        answer = json.loads(result.stdout or "{}")
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if result.returncode != 0 or "code" in answer:
        code = answer.get("code")
        raise CniError(code if isinstance(code, int) else IO_FAILURE,
                       f"IPAM {kind} {command} failed: "
                       f"{answer.get('msg') or result.stderr.strip()}", str(answer.get("details", "")))
    ips = answer.get("ips")
    address = ips[0].get("address") if isinstance(ips, list) and ips and isinstance(ips[0], dict) \
        else None
    if not isinstance(address, str):
        raise CniError(IO_FAILURE, f"IPAM {kind} gave no address")
    return address


def _for_delegate(plugin: str, conf: dict) -> dict:
    """The configuration as the delegate can read it: an IPAM plugin that does not speak this
    cniVersion (Debian's host-local stops at 1.0.0) gets 1.0.0, whose IPAM result is the same."""
    result = subprocess.run([plugin], input=json.dumps({"cniVersion": conf.get("cniVersion")}),
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, "CNI_COMMAND": "VERSION"})
    try:
        supported = json.loads(result.stdout).get("supportedVersions", [])
    except (ValueError, AttributeError):
        supported = []
    if conf.get("cniVersion") in supported or "1.0.0" not in supported:
        return conf
    return {**conf, "cniVersion": "1.0.0"}


if __name__ == "__main__":
    sys.exit(main())
