"""The v1 PodSpec as vrouter reads it, in Pod manifests and in the templates of workloads.

vrouter runs no images: a container with a `command` (or `args`: for images without an
ENTRYPOINT, as busybox, python and alpine are, Kubernetes runs them as the command) is a
program started on the host's filesystem inside the pod's network namespace (vrouter.node.
programs). What decides networking is read (ports, nodeName, nodeSelector, hostname, subdomain,
probes); what belongs to a container runtime only (image, resources, volumes, security
contexts, tolerations: vrouter's nodes have no taints) is accepted and ignored; what would
silently behave differently here (affinity, init containers, lifecycle hooks, envFrom, a host
network) is an error that names the field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vrouter.model.config import _build_ports
from vrouter.model.names import DNS_LABEL as _DNS_LABEL
from vrouter.model.reader import Reader as _Reader, join as _join
from vrouter.model.types import ContainerPort

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DEFAULT_GRACE_SECONDS = 30            # terminationGracePeriodSeconds, as Kubernetes
ENV_FIELDS = ("metadata.name", "metadata.namespace", "status.podIP", "spec.nodeName",
              "status.hostIP", "spec.serviceAccountName")

_SPEC_FIELDS = {
    "containers", "restartPolicy", "terminationGracePeriodSeconds", "nodeName", "nodeSelector",
    "hostname", "subdomain", "dnsPolicy", "enableServiceLinks",
    # a container runtime's business: accepted, without effect here
    "volumes", "tolerations", "serviceAccountName", "serviceAccount",
    "automountServiceAccountToken", "securityContext", "imagePullSecrets", "priorityClassName",
    "priority", "schedulerName", "activeDeadlineSeconds", "runtimeClassName", "shareProcessNamespace",
    "preemptionPolicy", "overhead",
}
_SPEC_UNSUPPORTED = {
    "affinity": "vrouter's scheduler honours nodeName and nodeSelector only",
    "topologySpreadConstraints": "vrouter's scheduler spreads a workload's pods by itself "
                                 "(fewest pods first, ties by node order)",
    "initContainers": "init containers are not run",
    "ephemeralContainers": "ephemeral containers are not run",
    "hostNetwork": "a pod always has a network namespace of its own here",
    "hostPID": "programs run in the host's PID namespace anyway",
    "hostIPC": "not supported",
    "hostAliases": "not supported: /etc/hosts is the host's",
    "dnsConfig": "pods resolve with the cluster's resolv.conf",
    "setHostnameAsFQDN": "not supported",
    "readinessGates": "readiness comes from the containers' probes only",
    "os": "every node is Linux",
    "resourceClaims": "not supported",
    "schedulingGates": "not supported",
}
_CONTAINER_FIELDS = {
    "name", "image", "command", "args", "ports", "env", "workingDir", "readinessProbe",
    "livenessProbe",
    # a container runtime's business: accepted, without effect here
    "imagePullPolicy", "resources", "securityContext", "volumeMounts", "volumeDevices", "stdin",
    "stdinOnce", "tty", "terminationMessagePath", "terminationMessagePolicy", "resizePolicy",
}
_CONTAINER_UNSUPPORTED = {
    "envFrom": "there are no ConfigMaps or Secrets here: give the variables in env",
    "lifecycle": "postStart and preStop hooks are not run",
    "startupProbe": "not supported: use initialDelaySeconds on the other probes",
    "restartPolicy": "sidecar containers are not supported",
}
_PROBE_FIELDS = {"tcpSocket", "httpGet", "exec", "initialDelaySeconds", "periodSeconds",
                 "timeoutSeconds", "successThreshold", "failureThreshold",
                 "terminationGracePeriodSeconds"}


@dataclass(frozen=True)
class Probe:
    """A readiness or liveness probe, run by the pod's node as the kubelet runs it: from the
    node, to the pod's address (tcpSocket, httpGet), or as a program in the pod (exec)."""
    action: str                      # tcpSocket | httpGet | exec
    port: int | str | None = None    # a number, or a container port's name (resolved at start)
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    def describe(self) -> str:
        if self.action == "exec":
            return f"exec {' '.join(self.command)}"
        if self.action == "httpGet":
            return f"http-get :{self.port}{self.path}"
        return f"tcp-socket :{self.port}"


@dataclass(frozen=True)
class Container:
    name: str
    argv: tuple[str, ...] = ()       # command + args; (): nothing runs (there is no image)
    env: tuple[tuple[str, str, str], ...] = ()   # (name, "value" | "field", value or field path)
    working_dir: str = ""
    readiness: Probe | None = None
    liveness: Probe | None = None
    ports: tuple[ContainerPort, ...] = ()
    where: str = ""                  # "FILE: FIELD" of the container, for the errors it causes
    program_field: str = "command"   # which field gave the program: command, or args alone

    @property
    def runs(self) -> bool:
        return bool(self.argv)

    def port_number(self, port: int | str | None) -> int | None:
        if isinstance(port, int):
            return port
        return next((p.container_port for p in self.ports if p.name == port), None)


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    node_name: str | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    hostname: str = ""
    subdomain: str = ""
    restart_policy: str = "Always"
    grace_seconds: int = DEFAULT_GRACE_SECONDS

    @property
    def ports(self) -> tuple[ContainerPort, ...]:
        return tuple(p for c in self.containers for p in c.ports)


def parse(reader: _Reader, raw, where: str, restart_policies=RESTART_POLICIES,
          source: str = "", containers_required: bool = True) -> PodSpec:
    """A PodSpec at `where` (a Pod's spec, or a template's spec). A Pod manifest may go
    without containers (vrouter makes its namespace, and nothing runs in it)."""
    if not isinstance(raw, dict):
        reader.fail(where, "must be a mapping")
    for key in raw:
        if key in _SPEC_UNSUPPORTED:
            reader.fail(_join(where, key), f"not supported: {_SPEC_UNSUPPORTED[key]}")
    spec = reader.mapping(raw, where, _SPEC_FIELDS,
                          required=("containers",) if containers_required else ())
    raw_containers = spec.get("containers") or []
    if not isinstance(raw_containers, list) or (containers_required and not raw_containers):
        reader.fail(_join(where, "containers"), "must be a non-empty list of containers")
    containers = []
    for n, item in enumerate(raw_containers):
        container = _container(reader, item, f"{where}.containers[{n}]", source or reader.path)
        if any(c.name == container.name for c in containers):
            reader.fail(f"{where}.containers[{n}].name",
                        f"duplicate container name {container.name!r}")
        containers.append(container)
    restart = spec.get("restartPolicy", restart_policies[0])
    if restart not in restart_policies:
        reader.fail(_join(where, "restartPolicy"), f"{restart!r}: supported values: "
                    f"{', '.join(restart_policies)}")
    grace = reader.integer(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS),
                           _join(where, "terminationGracePeriodSeconds"), 0, 86400)
    node_name = None
    if spec.get("nodeName") is not None:
        node_name = reader.string(spec["nodeName"], _join(where, "nodeName"))
    selector = reader.labels(spec.get("nodeSelector") or {}, _join(where, "nodeSelector"))
    hostname = _label(reader, spec.get("hostname"), _join(where, "hostname"))
    subdomain = _label(reader, spec.get("subdomain"), _join(where, "subdomain"))
    dns_policy = spec.get("dnsPolicy", "ClusterFirst")
    if dns_policy != "ClusterFirst":
        reader.fail(_join(where, "dnsPolicy"), f"{dns_policy!r}: vrouter's pods resolve with "
                    "cluster DNS (ClusterFirst)")
    if spec.get("enableServiceLinks") not in (None, True, False):
        reader.fail(_join(where, "enableServiceLinks"), "must be true or false")
    return PodSpec(containers=tuple(containers), node_name=node_name, node_selector=selector,
                   hostname=hostname, subdomain=subdomain, restart_policy=restart,
                   grace_seconds=grace)


def _label(reader: _Reader, value, where: str) -> str:
    if value is None or value == "":
        return ""
    return reader.string(value, where, _DNS_LABEL, "a DNS label (lowercase letters, digits, '-')")


def _strings(reader: _Reader, raw, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, (str, int, float)) and
                                            not isinstance(s, bool) for s in raw):
        reader.fail(where, "must be a list of strings")
    return tuple(str(s) for s in raw)


def _container(reader: _Reader, raw, where: str, source: str) -> Container:
    if isinstance(raw, dict):
        for key in raw:
            if key in _CONTAINER_UNSUPPORTED:
                reader.fail(f"{where}.{key}", f"not supported: {_CONTAINER_UNSUPPORTED[key]}")
    c = reader.mapping(raw, where, _CONTAINER_FIELDS, required=("name",))
    name = reader.string(c["name"], f"{where}.name", _DNS_LABEL,
                         "a DNS label (lowercase letters, digits, '-')")
    command = _strings(reader, c.get("command"), f"{where}.command")
    args = _strings(reader, c.get("args"), f"{where}.args")
    if command and not command[0]:
        reader.fail(f"{where}.command[0]", "the program to run is empty")
    if not command and args and not args[0]:
        reader.fail(f"{where}.args[0]", "the program to run is empty")
    raw_ports = c.get("ports") or []
    ports = _build_ports(reader, raw_ports, f"{where}.ports")
    env = _env(reader, c.get("env"), f"{where}.env")
    working_dir = ""
    if c.get("workingDir"):
        working_dir = reader.string(c["workingDir"], f"{where}.workingDir")
        if not working_dir.startswith("/"):
            reader.fail(f"{where}.workingDir", f"{working_dir!r} is not an absolute path")
    container = Container(name=name, argv=command + args, env=env, working_dir=working_dir,
                          ports=ports, where=f"{source}: {where}",
                          program_field="command" if command else "args")
    probes = {}
    for key in ("readinessProbe", "livenessProbe"):
        if c.get(key) is not None:
            probes[key] = _probe(reader, c[key], f"{where}.{key}", container)
    return dataclasses.replace(container, readiness=probes.get("readinessProbe"),
                               liveness=probes.get("livenessProbe"))


def _env(reader: _Reader, raw, where: str) -> tuple[tuple[str, str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        reader.fail(where, "must be a list of {name, value}")
    env = []
    for n, item in enumerate(raw):
        w = f"{where}[{n}]"
        e = reader.mapping(item, w, {"name", "value", "valueFrom"}, required=("name",))
        name = reader.string(e["name"], f"{w}.name")
        if "=" in name or "\0" in name:
            reader.fail(f"{w}.name", f"{name!r} is not an environment variable name")
        if "valueFrom" in e:
            source = reader.mapping(e["valueFrom"], f"{w}.valueFrom", {"fieldRef"},
                                    required=("fieldRef",))
            ref = reader.mapping(source["fieldRef"], f"{w}.valueFrom.fieldRef",
                                 {"fieldPath", "apiVersion"}, required=("fieldPath",))
            path = ref["fieldPath"]
            if path not in ENV_FIELDS:
                reader.fail(f"{w}.valueFrom.fieldRef.fieldPath",
                            f"{path!r}: vrouter knows {', '.join(ENV_FIELDS)}")
            env.append((name, "field", path))
            continue
        value = e.get("value", "")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            reader.fail(f"{w}.value", "must be a string")
        env.append((name, "value", str(value)))
    return tuple(env)


def _probe(reader: _Reader, raw, where: str, container: Container) -> Probe:
    if isinstance(raw, dict) and "grpc" in raw:
        reader.fail(f"{where}.grpc", "not supported: use tcpSocket, httpGet or exec")
    p = reader.mapping(raw, where, _PROBE_FIELDS)
    actions = [a for a in ("tcpSocket", "httpGet", "exec") if a in p]
    if len(actions) != 1:
        reader.fail(where, "needs exactly one of tcpSocket, httpGet, exec")
    action = actions[0]
    w = f"{where}.{action}"
    timing = {
        "initial_delay": reader.integer(p.get("initialDelaySeconds", 0),
                                        f"{where}.initialDelaySeconds", 0, 86400),
        "period": reader.integer(p.get("periodSeconds", 10), f"{where}.periodSeconds", 1, 86400),
        "timeout": reader.integer(p.get("timeoutSeconds", 1), f"{where}.timeoutSeconds", 1, 3600),
        "success_threshold": reader.integer(p.get("successThreshold", 1),
                                            f"{where}.successThreshold", 1, 1000),
        "failure_threshold": reader.integer(p.get("failureThreshold", 3),
                                            f"{where}.failureThreshold", 1, 1000),
    }
    if action == "exec":
        e = reader.mapping(p["exec"], w, {"command"}, required=("command",))
        command = _strings(reader, e["command"], f"{w}.command")
        if not command or not command[0]:
            reader.fail(f"{w}.command", "must name a program")
        return Probe("exec", command=command, **timing)
    fields = {"port", "host"} | ({"path", "scheme", "httpHeaders"} if action == "httpGet" else set())
    d = reader.mapping(p[action], w, fields, required=("port",))
    if d.get("host"):
        reader.fail(f"{w}.host", "not supported: the probe goes to the pod's address")
    if d.get("scheme", "HTTP") != "HTTP":
        reader.fail(f"{w}.scheme", f"{d['scheme']!r}: only HTTP probes are supported")
    port = d["port"]
    if isinstance(port, str) and not port.isdigit():
        if container.port_number(port) is None:
            reader.fail(f"{w}.port", f"{port!r} is not the name of one of the container's ports")
    else:
        port = reader.integer(int(port) if isinstance(port, str) else port, f"{w}.port", 1, 65535)
    path, headers = "/", ()
    if action == "httpGet":
        path = d.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/") or any(
                ch.isspace() for ch in path):
            reader.fail(f"{w}.path", f"{path!r} is not an absolute URL path")
        raw_headers = d.get("httpHeaders") or []
        if not isinstance(raw_headers, list):
            reader.fail(f"{w}.httpHeaders", "must be a list of {name, value}")
        found = []
        for n, h in enumerate(raw_headers):
            h = reader.mapping(h, f"{w}.httpHeaders[{n}]", {"name", "value"},
                               required=("name", "value"))
            if any(ch in str(h["name"]) + str(h["value"]) for ch in "\r\n"):
                reader.fail(f"{w}.httpHeaders[{n}]", "a header may not hold a line break")
            found.append((str(h["name"]), str(h["value"])))
        headers = tuple(found)
    return Probe(action, port=port, path=path, headers=headers, **timing)
