"""`apps/v1` Deployments, ReplicaSets, StatefulSets and DaemonSets, and the pods they make.

A workload is read as Kubernetes validates it (a selector that matches the template's labels,
replicas of 0 or more, a StatefulSet's serviceName) and becomes pods as the Kubernetes
controllers name and label them:
  Deployment   a ReplicaSet NAME-HASH per pod template (HASH: the pod-template-hash label),
               pods NAME-HASH-SUFFIX
  ReplicaSet   pods NAME-SUFFIX
  StatefulSet  pods NAME-0 .. NAME-(N-1), each with hostname NAME-K and subdomain serviceName,
               so that NAME-K.SERVICE.NS.svc.<zone> resolves (vrouter.model.dns)
  DaemonSet    one pod NAME-SUFFIX per node its nodeSelector admits
Kubernetes' SUFFIX is random; here it is a hash of the pod's identity, so one cluster file gives
the same pod names (and addresses, and nodes: vrouter.model.scheduler) every time.

What exists of a workload at a moment is a list of *revisions*: a pod template (as written, with
its hash) and the members made from it (replica indices, ordinals, or node names). Without a
record (vrouter.model.revisions) a workload is its file's template at full size (`initial`);
the controllers (vrouter.model.controllers) move from there to what the file asks, a step at a
time. `expand` turns the revisions of every workload into pods, with their nodes and addresses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from dataclasses import dataclass

from vrouter.model import podspec, scheduler
from vrouter.model.names import DNS_LABEL as _DNS_LABEL
from vrouter.model.reader import Reader as _Reader
from vrouter.model.types import ConfigError, Pod, mac_from_ip
from vrouter.model.names import DNS_LABEL_MAX

KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet")
API_VERSION = "apps/v1"
# Kubernetes' alphabet for generated names (k8s.io/apimachinery/pkg/util/rand): no vowels, no
# digits or letters that are easily confused, so no word is spelled by accident
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LENGTH = 5
TEMPLATE_HASH_LABEL = "pod-template-hash"
REVISION_LABEL = "controller-revision-hash"
STS_POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
STS_POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"

_SPEC_FIELDS = {
    "Deployment": {"replicas", "selector", "template", "strategy", "minReadySeconds",
                   "revisionHistoryLimit", "progressDeadlineSeconds", "paused"},
    "ReplicaSet": {"replicas", "selector", "template", "minReadySeconds"},
    "StatefulSet": {"replicas", "selector", "template", "serviceName", "podManagementPolicy",
                    "updateStrategy", "revisionHistoryLimit", "minReadySeconds",
                    "volumeClaimTemplates", "persistentVolumeClaimRetentionPolicy", "ordinals"},
    "DaemonSet": {"selector", "template", "updateStrategy", "minReadySeconds",
                  "revisionHistoryLimit"},
}
_TEMPLATE_METADATA = {"labels", "annotations", "name", "namespace", "generateName",
                      "creationTimestamp", "finalizers"}


@dataclass(frozen=True)
class Strategy:
    """How a template change is rolled out: Deployment `strategy`, StatefulSet and DaemonSet
    `updateStrategy`. Surge and unavailability stay as written (a number or "N%") until the
    replica count is known (`fenceposts`)."""
    type: str = "RollingUpdate"      # RollingUpdate | Recreate (Deployment) | OnDelete
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"
    partition: int = 0               # StatefulSet: ordinals below it keep their revision


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    namespace: str
    replicas: int                    # DaemonSet: unused (one pod per admitted node)
    selector: object                 # policy.Selector
    template: dict                   # spec.template as written (revisions keep it)
    labels: tuple[tuple[str, str], ...]
    spec: podspec.PodSpec
    strategy: Strategy = Strategy()
    service_name: str = ""           # StatefulSet
    pod_management: str = "OrderedReady"   # StatefulSet: OrderedReady | Parallel
    first_ordinal: int = 0           # StatefulSet spec.ordinals.start
    min_ready_seconds: int = 0
    paused: bool = False             # Deployment: template changes wait until unpaused
    source: str = ""
    where: str = ""                  # "document 2", for errors

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def template_hash(self) -> str:
        return template_hash(self.template)


@dataclass(frozen=True)
class Revision:
    """One pod template of a workload and what exists of it: replica indices (Deployment's
    ReplicaSet, ReplicaSet), ordinals (StatefulSet) or node names (DaemonSet)."""
    hash: str
    template: dict
    members: tuple = ()

    def to_json(self) -> dict:
        return {"hash": self.hash, "template": self.template, "members": list(self.members)}

    @staticmethod
    def from_json(d: dict) -> "Revision":
        members = d.get("members") or []
        if not isinstance(d.get("hash"), str) or not isinstance(d.get("template"), dict) or \
                not isinstance(members, list) or \
                not all(isinstance(m, (int, str)) and not isinstance(m, bool) for m in members):
            raise ValueError("not a revision")
        return Revision(d["hash"], d["template"], tuple(members))


# --- names -----------------------------------------------------------------------------------

def _fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """Kubernetes' rand.SafeEncodeString: every character mapped into ALPHANUMS."""
    return "".join(ALPHANUMS[ord(c) % len(ALPHANUMS)] for c in text)


def template_hash(template: dict) -> str:
    """The pod-template-hash of a template: as Kubernetes computes it (an FNV-1a 32 hash,
    its decimal digits encoded with safe_encode), over the template's canonical JSON (Kubernetes
    hashes Go's printing of the object, so the values differ from a real cluster's)."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"), default=str)
    return safe_encode(str(_fnv1a32(canonical.encode())))


def suffix(*identity) -> str:
    """The 5 characters Kubernetes draws at random for a generated name, drawn from a hash of
    the pod's identity instead."""
    digest = hashlib.sha256("/".join(map(str, identity)).encode()).digest()
    return "".join(ALPHANUMS[b % len(ALPHANUMS)] for b in digest[:SUFFIX_LENGTH])


def replicaset_name(w: Workload, revision_hash: str) -> str:
    return f"{w.name}-{revision_hash}"


def pod_name(w: Workload, revision_hash: str, member) -> str:
    if w.kind == "Deployment":
        rs = replicaset_name(w, revision_hash)
        return f"{rs}-{suffix(w.namespace, rs, member)}"
    if w.kind == "ReplicaSet":
        return f"{w.name}-{suffix(w.namespace, w.name, member)}"
    if w.kind == "StatefulSet":
        return f"{w.name}-{member}"
    return f"{w.name}-{suffix(w.namespace, w.name, revision_hash, member)}"


def ready_key(name: str, revision: str) -> str:
    """What a node says is ready: a pod of one revision (a StatefulSet's pod keeps its name
    across revisions; readiness of the old one must not count for the new)."""
    return f"{name}@{revision}" if revision else name


# --- parsing ---------------------------------------------------------------------------------

def parse(reader: _Reader, doc: dict, where: str, source: str) -> Workload:
    """One apps/v1 workload manifest, validated as the API server would (file, field,
    problem for anything wrong)."""
    from vrouter.model import policy
    kind = doc["kind"]
    reader.mapping(doc, where, {"apiVersion", "kind", "metadata", "spec", "status"},
                   required=("metadata", "spec"))
    if doc.get("apiVersion") != API_VERSION:
        reader.fail(f"{where}.apiVersion", f"{doc.get('apiVersion')!r}: {kind}s are apiVersion "
                    f"{API_VERSION}")
    _, name, namespace = reader.metadata(doc, where)
    w = f"{where}.spec"
    spec = reader.mapping(doc["spec"], w, _SPEC_FIELDS[kind], required=("selector", "template"))
    replicas = 1
    if kind != "DaemonSet":
        raw = spec.get("replicas", 1)
        if isinstance(raw, bool) or not isinstance(raw, int):
            reader.fail(f"{w}.replicas", f"must be an integer, got {raw!r}")
        if raw < 0:
            reader.fail(f"{w}.replicas", f"{raw}: must be greater than or equal to 0")
        replicas = reader.integer(raw, f"{w}.replicas", 0, 4096)
    selector = policy.parse_selector(reader, spec["selector"], f"{w}.selector")
    if not selector.match_labels and not selector.expressions:
        reader.fail(f"{w}.selector", f"empty selector is invalid for a {kind}: it selects "
                    "the pods by their labels (matchLabels: the template's labels)")
    labels, pod = parse_template(reader, spec["template"], f"{w}.template", source)
    if not selector.matches(dict(labels)):
        reader.fail(f"{w}.template.metadata.labels", f"{dict(labels)}: `selector` "
                    f"({selector.describe()}) does not match template `labels`")
    min_ready = reader.integer(spec.get("minReadySeconds", 0), f"{w}.minReadySeconds", 0, 86400)
    for key in ("revisionHistoryLimit", "progressDeadlineSeconds"):
        if key in spec:
            reader.integer(spec[key], f"{w}.{key}", 0, 1 << 31)
    fields = {}
    if kind == "Deployment":
        fields["strategy"] = _deployment_strategy(reader, spec.get("strategy"), f"{w}.strategy")
        paused = spec.get("paused", False)
        if not isinstance(paused, bool):
            reader.fail(f"{w}.paused", f"{paused!r} is not true or false")
        fields["paused"] = paused
    elif kind == "StatefulSet":
        if not spec.get("serviceName"):
            reader.fail(f"{w}.serviceName", "required field is missing: it names the headless "
                        "Service that gives the pods their DNS names (NAME-K.SERVICE.NS.svc."
                        "<zone>)")
        fields["service_name"] = reader.string(spec["serviceName"], f"{w}.serviceName",
                                               _DNS_LABEL, "a DNS label (a Service's name)")
        policy_name = spec.get("podManagementPolicy", "OrderedReady")
        if policy_name not in ("OrderedReady", "Parallel"):
            reader.fail(f"{w}.podManagementPolicy", f"{policy_name!r}: supported values: "
                        "OrderedReady, Parallel")
        fields["pod_management"] = policy_name
        fields["strategy"] = _update_strategy(reader, spec.get("updateStrategy"),
                                              f"{w}.updateStrategy", kind)
        if spec.get("ordinals") is not None:
            o = reader.mapping(spec["ordinals"], f"{w}.ordinals", {"start"})
            fields["first_ordinal"] = reader.integer(o.get("start", 0), f"{w}.ordinals.start",
                                                     0, 1 << 20)
    elif kind == "DaemonSet":
        fields["strategy"] = _update_strategy(reader, spec.get("updateStrategy"),
                                              f"{w}.updateStrategy", kind)
    workload = Workload(kind=kind, name=name, namespace=namespace, replicas=replicas,
                        selector=selector, template=spec["template"], labels=labels, spec=pod,
                        min_ready_seconds=min_ready, source=source, where=where, **fields)
    longest = pod_name(workload, "x" * 10, 10 ** len(str(max(replicas, 1))) - 1 +
                       workload.first_ordinal)
    if len(longest) > DNS_LABEL_MAX:
        reader.fail(f"{where}.metadata.name", f"{name!r} is too long: its pods would be named "
                    f"like {longest!r}, more than {DNS_LABEL_MAX} characters (a pod's name names "
                    "its network namespace and is a DNS label)")
    return workload


def parse_template(reader: _Reader, raw, where: str, source: str
                   ) -> tuple[tuple[tuple[str, str], ...], podspec.PodSpec]:
    """A pod template: (its labels, its PodSpec). Workload pods restart Always, as Kubernetes
    requires of every controller's template."""
    t = reader.mapping(raw, where, {"metadata", "spec"}, required=("spec",))
    meta = reader.mapping(t.get("metadata") or {}, f"{where}.metadata", _TEMPLATE_METADATA)
    labels = reader.labels(meta.get("labels") or {}, f"{where}.metadata.labels")
    spec = podspec.parse(reader, t["spec"], f"{where}.spec", restart_policies=("Always",),
                         source=source)
    return labels, spec


def _int_or_percent(reader: _Reader, value, where: str, limit_percent: bool):
    if isinstance(value, bool):
        reader.fail(where, f"{value!r} is not a number or a percentage")
    if isinstance(value, int):
        return reader.integer(value, where, 0, 1 << 20)
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        if limit_percent and int(value[:-1]) > 100:
            reader.fail(where, f"{value}: must not be greater than 100%")
        return value
    reader.fail(where, f"{value!r} is not a number or a percentage such as 25%")


def scaled(value: int | str, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: a number, or a percentage of `total`."""
    if isinstance(value, int):
        return value
    percent = int(value[:-1])
    whole, rest = divmod(percent * total, 100)
    return whole + (1 if round_up and rest else 0)


def fenceposts(strategy: Strategy, desired: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) for `desired` pods: surge rounded up, unavailability down,
    and if both come to 0, one may be unavailable (Kubernetes' ResolveFenceposts)."""
    surge = scaled(strategy.max_surge, desired, True)
    unavailable = scaled(strategy.max_unavailable, desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _deployment_strategy(reader: _Reader, raw, where: str) -> Strategy:
    if raw is None:
        return Strategy()
    s = reader.mapping(raw, where, {"type", "rollingUpdate"})
    kind = s.get("type", "RollingUpdate")
    if kind not in ("RollingUpdate", "Recreate"):
        reader.fail(f"{where}.type", f"{kind!r}: supported values: RollingUpdate, Recreate")
    if kind == "Recreate":
        if s.get("rollingUpdate") is not None:
            reader.fail(f"{where}.rollingUpdate", "may not be specified when strategy `type` "
                        "is 'Recreate'")
        return Strategy(type="Recreate")
    r = reader.mapping(s.get("rollingUpdate") or {}, f"{where}.rollingUpdate",
                       {"maxSurge", "maxUnavailable"})
    surge = _int_or_percent(reader, r.get("maxSurge", "25%"), f"{where}.rollingUpdate.maxSurge",
                            False)
    unavailable = _int_or_percent(reader, r.get("maxUnavailable", "25%"),
                                  f"{where}.rollingUpdate.maxUnavailable", True)
    if scaled(surge, 100, True) == 0 and scaled(unavailable, 100, True) == 0:
        reader.fail(f"{where}.rollingUpdate.maxUnavailable", "may not be 0 when `maxSurge` is 0")
    return Strategy(type="RollingUpdate", max_surge=surge, max_unavailable=unavailable)


def _update_strategy(reader: _Reader, raw, where: str, kind: str) -> Strategy:
    """StatefulSet and DaemonSet updateStrategy. A StatefulSet updates one pod at a time, from
    the highest ordinal down to `partition`; a DaemonSet at most maxUnavailable nodes at once
    (default 1, surge 0)."""
    default = Strategy(max_surge=0, max_unavailable=1)
    if raw is None:
        return default
    s = reader.mapping(raw, where, {"type", "rollingUpdate"})
    kind_name = s.get("type", "RollingUpdate")
    if kind_name not in ("RollingUpdate", "OnDelete"):
        reader.fail(f"{where}.type", f"{kind_name!r}: supported values: RollingUpdate, OnDelete")
    if kind_name == "OnDelete":
        return dataclasses.replace(default, type="OnDelete")
    w = f"{where}.rollingUpdate"
    if kind == "StatefulSet":
        r = reader.mapping(s.get("rollingUpdate") or {}, w, {"partition", "maxUnavailable"})
        if r.get("maxUnavailable", 1) != 1:
            reader.fail(f"{w}.maxUnavailable", "only 1 is supported (the field is alpha in "
                        "Kubernetes): pods are updated one at a time")
        return dataclasses.replace(default, partition=reader.integer(
            r.get("partition", 0), f"{w}.partition", 0, 1 << 20))
    r = reader.mapping(s.get("rollingUpdate") or {}, w, {"maxSurge", "maxUnavailable"})
    surge = _int_or_percent(reader, r.get("maxSurge", 0), f"{w}.maxSurge", True)
    unavailable = _int_or_percent(reader, r.get("maxUnavailable", 1), f"{w}.maxUnavailable", True)
    if scaled(surge, 100, True) == 0 and scaled(unavailable, 100, True) == 0:
        reader.fail(f"{w}.maxUnavailable", "may not be 0 when `maxSurge` is 0")
    if scaled(surge, 100, True) and scaled(unavailable, 100, True):
        reader.fail(f"{w}.maxSurge", "may not be set when maxUnavailable is not 0")
    return Strategy(type="RollingUpdate", max_surge=surge, max_unavailable=unavailable)


# --- pods ------------------------------------------------------------------------------------

def eligible_nodes(w: Workload, spec: podspec.PodSpec, nodes) -> list:
    return scheduler.eligible(nodes, spec.node_name, spec.node_selector)


def initial(w: Workload, nodes) -> tuple[Revision, ...]:
    """What a workload is when vrouter first meets it: its template at full size (every
    ordinal at once, for a StatefulSet too: see the README)."""
    if w.kind == "DaemonSet":
        members = tuple(n.name for n in eligible_nodes(w, w.spec, nodes))
    elif w.kind == "StatefulSet":
        members = tuple(range(w.first_ordinal, w.first_ordinal + w.replicas))
    else:
        members = tuple(range(w.replicas))
    return (Revision(w.template_hash, w.template, members),)


@dataclass(frozen=True)
class _Planned:
    name: str
    node: str
    revision: str
    labels: tuple
    spec: podspec.PodSpec
    owner: str
    hostname: str
    subdomain: str
    workload: Workload


def _templates(w: Workload, revisions):
    """Each revision's (labels, spec): the workload's own for its current template, parsed
    again (it was valid when recorded) for older ones."""
    found = {}
    for r in revisions:
        if r.hash == w.template_hash:
            found[r.hash] = (w.labels, w.spec)
        elif r.hash not in found:
            # at the same field: its containers' errors name where the template was
            found[r.hash] = parse_template(_Reader(w.source), r.template,
                                           f"{w.where}.spec.template", w.source)
    return found


def _plan(w: Workload, revisions, nodes) -> list[_Planned]:
    templates = _templates(w, revisions)
    node_names = {n.name for n in nodes}
    planned = []
    for r in revisions:
        labels, spec = templates[r.hash]
        if w.kind == "DaemonSet":
            places = {m: m for m in r.members if m in node_names}
        else:
            candidates = eligible_nodes(w, spec, nodes)
            if not candidates and r.members:
                where = (f"{w.where}.spec.template.spec.nodeName" if spec.node_name
                         else f"{w.where}.spec.template.spec.nodeSelector")
                raise ConfigError(w.source, where, _no_node(spec, nodes))
            order = scheduler.spread(candidates, max(r.members, default=-1) + 1 -
                                     (w.first_ordinal if w.kind == "StatefulSet" else 0))
            base = w.first_ordinal if w.kind == "StatefulSet" else 0
            places = {m: order[m - base] for m in r.members}
        for member, node in places.items():
            name = pod_name(w, r.hash, member)
            extra, owner = (), f"{w.kind}/{w.name}"
            hostname, subdomain = spec.hostname, spec.subdomain
            if w.kind == "Deployment":
                extra = ((TEMPLATE_HASH_LABEL, r.hash),)
                owner = f"ReplicaSet/{replicaset_name(w, r.hash)}"
            elif w.kind == "StatefulSet":
                extra = ((REVISION_LABEL, f"{w.name}-{r.hash}"), (STS_POD_NAME_LABEL, name),
                         (STS_POD_INDEX_LABEL, str(member)))
                hostname, subdomain = name, w.service_name   # the controller sets both
            elif w.kind == "DaemonSet":
                extra = ((REVISION_LABEL, r.hash),)
            merged = tuple(sorted({**dict(labels), **dict(extra)}.items()))
            planned.append(_Planned(name, node, r.hash, merged, spec, owner, hostname,
                                    subdomain, w))
    return planned


def _no_node(spec: podspec.PodSpec, nodes) -> str:
    if spec.node_name:
        if not any(n.name == spec.node_name for n in nodes):
            return f"unknown node {spec.node_name!r} (nodes: {', '.join(n.name for n in nodes)})"
        return f"node {spec.node_name!r} is served by the Linux kernel (kernel: true): it runs " \
               "no programs and takes no workload pods"
    wanted = ", ".join(f"{k}={v}" for k, v in spec.node_selector)
    return f"no node has the labels {wanted} (nodes: " + "; ".join(
        f"{n.name}: " + ",".join(f"{k}={v}" for k, v in scheduler.node_labels(n).items())
        for n in nodes if not n.kernel) + ")"


def expand(workloads, revisions: dict[str, tuple[Revision, ...]], nodes, fixed_pods
           ) -> list[Pod]:
    """Every workload's pods, with their nodes and addresses. `revisions`: workload key ->
    what exists of it (missing: `initial`); `fixed_pods`: the file's own pods (pods:, Pod
    manifests, DNS server pods), whose names and addresses are theirs. ConfigError for a pod
    that cannot be made (a name taken, no node, no address left)."""
    names = {p.name: f"pod {p.name!r}" for p in fixed_pods}
    planned = []
    for w in workloads:
        for p in _plan(w, revisions.get(w.key) or initial(w, nodes), nodes):
            if p.name in names:
                raise ConfigError(w.source, f"{w.where}.metadata.name",
                                  f"{w.kind} {w.name!r} would make pod {p.name!r}, a name "
                                  f"{names[p.name]} has already")
            names[p.name] = f"{w.kind} {w.name!r}"
            planned.append(p)
    return _addresses(planned, nodes, fixed_pods)


def _addresses(planned: list[_Planned], nodes, fixed_pods) -> list[Pod]:
    """A stable address per pod: the first free one from a hash of its name, in its node's
    podCIDR, around the file's pods (whose addresses come from the bottom up). A pod keeps its
    address as long as it exists, whatever else is added (unless two names share a slot)."""
    by_node = {n.name: n for n in nodes}
    macs = {p.mac: p.name for p in fixed_pods}
    pods = []
    for node_name in sorted({p.node for p in planned}):
        node = by_node[node_name]
        cidr = node.pod_cidr
        size = cidr.num_addresses
        first = int(cidr.network_address)
        taken = {int(p.ip) for p in fixed_pods if p.node == node_name} | {
            first, first + 1, first + size - 1}
        here = [p for p in planned if p.node == node_name]
        if len(here) > size - len(taken):
            w = here[0].workload
            raise ConfigError(w.source, f"{w.where}.spec", f"node {node_name!r}'s podCIDR {cidr} "
                              f"has no free address left for pod {here[-1].name!r}")
        homes = {p.name: int.from_bytes(hashlib.sha256(p.name.encode()).digest()[:4], "big")
                 % size for p in here}
        for p in sorted(here, key=lambda p: (homes[p.name], p.name)):
            slot = homes[p.name]
            while first + slot in taken:
                slot = (slot + 1) % size
            taken.add(first + slot)
            ip = ipaddress.IPv4Address(first + slot)
            mac = mac_from_ip("0a:58", ip)
            if mac in macs:
                w = p.workload
                raise ConfigError(w.source, f"{w.where}.metadata.name", f"pod {p.name!r} would "
                                  f"get MAC {mac}, which pod {macs[mac]!r} has")
            macs[mac] = p.name
            pods.append(_pod(p, ip, mac))
    order = {p.name: k for k, p in enumerate(planned)}
    return sorted(pods, key=lambda p: order[p.name])


def _pod(p: _Planned, ip, mac: str) -> Pod:
    w, spec = p.workload, p.spec
    return Pod(name=p.name, namespace=w.namespace, node=p.node, ip=ip, mac=mac, netns=p.name,
               owns_netns=True, labels=p.labels, ports=spec.ports, hostname=p.hostname,
               subdomain=p.subdomain, containers=spec.containers,
               restart_policy=spec.restart_policy, grace_seconds=spec.grace_seconds,
               owner=p.owner, workload=w.key, revision=p.revision, source=w.source)


def fixed_pods(pods) -> tuple[Pod, ...]:
    """The pods no workload made."""
    return tuple(p for p in pods if not p.workload)


def with_revisions(cluster, revisions: dict[str, tuple[Revision, ...]]):
    """The cluster with its workloads' pods made from `revisions` (what the controllers have
    made of them so far) instead of from the file alone."""
    fixed = fixed_pods(cluster.pods)
    made = expand(cluster.workloads, revisions, cluster.nodes, fixed)
    return dataclasses.replace(cluster, pods=fixed + tuple(made))
