"""`vrouter apply | get | delete`: Kubernetes objects in the cluster's store, as kubectl does
them against an API server (cluster.datastore type etcd).

apply validates what it is given exactly as a cluster file is validated, together with what the
store and the file hold already (vrouter.model.live), and writes it in one transaction: an
invalid object is refused with its file, field and problem, and nothing of that apply is
written. A Pod's status (its address, given by its node) survives a re-apply; its nodeName
cannot change. get prints kubectl's columns, or a `List` as Kubernetes prints one (-o json,
yaml); delete removes objects by kind and name or as a file names them.

With the file store (cluster.datastore type file) they change nothing and say what to do.
"""
from __future__ import annotations

import datetime
import json
import sys
import uuid
from pathlib import Path

import yaml

from vrouter.model import config, live
from vrouter.model.reader import Reader, documents, read_text
from vrouter.model.types import ConfigError
from vrouter.ops.common import EXIT_CONFIG, EXIT_HOST, load_cluster, store_items
from vrouter.store.base import OBJECT_KINDS, StoreError, object_key

COMMIT_ATTEMPTS = 5   # the store changed under an apply: read and check it again
KINDS = {   # what get and delete take, as kubectl spells them
    "nodes": "Node", "node": "Node", "no": "Node",
    "pods": "Pod", "pod": "Pod", "po": "Pod",
    "services": "Service", "service": "Service", "svc": "Service",
    "networkpolicies": "NetworkPolicy", "networkpolicy": "NetworkPolicy", "netpol": "NetworkPolicy",
    "namespaces": "Namespace", "namespace": "Namespace", "ns": "Namespace",
    "deployments": "Deployment", "deployment": "Deployment", "deploy": "Deployment",
    "replicasets": "ReplicaSet", "replicaset": "ReplicaSet", "rs": "ReplicaSet",
    "statefulsets": "StatefulSet", "statefulset": "StatefulSet", "sts": "StatefulSet",
    "daemonsets": "DaemonSet", "daemonset": "DaemonSet", "ds": "DaemonSet",
}
RESOURCE = {"Node": "node", "Pod": "pod", "Service": "service",
            "NetworkPolicy": "networkpolicy.networking.k8s.io", "Namespace": "namespace",
            "Deployment": "deployment.apps", "ReplicaSet": "replicaset.apps",
            "StatefulSet": "statefulset.apps", "DaemonSet": "daemonset.apps"}
API_VERSION = {"NetworkPolicy": "networking.k8s.io/v1", "Deployment": "apps/v1",
               "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1"}
WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet")


def kind_of(parsed: list) -> str:
    """The kind of a check_object result (a workload's is its own: Deployment, ...)."""
    kind, obj = parsed[0]
    return obj.kind if kind == "Workload" else kind


def _file_mode(cluster, command: str) -> int:
    print(f"vrouter: cluster {cluster.name!r} keeps its state in its cluster file "
          f"{cluster.source} (cluster.datastore type file): `vrouter {command}` reads and "
          "changes nothing there. Edit the file (or a --manifests directory) and run `vrouter "
          f"reload {cluster.name}`; `vrouter status {cluster.name}` and `vrouter check "
          f"{cluster.source}` show what runs. With cluster.datastore {{type: etcd, endpoints: "
          "[...]} the objects live in etcd and apply, get and delete work on them.",
          file=sys.stderr)
    return EXIT_CONFIG


def _open(args, command: str):
    cluster = load_cluster(args.cluster, check_host=False)
    if cluster.datastore.type == "file":
        raise SystemExit(_file_mode(cluster, command))
    return cluster


def _items(cluster) -> dict[str, bytes]:
    try:
        return store_items(cluster)
    except StoreError as exc:
        print(f"vrouter: the datastore does not answer: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_HOST) from None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat() \
        .replace("+00:00", "Z")


# --- reading manifests -----------------------------------------------------------------------

def read_manifests(paths: list[str]) -> list[tuple[str, dict, list]]:
    """(key, document, parsed) of every object in the files (and directories' .yaml, .yml,
    .json files) given, each checked on its own (ConfigError)."""
    files = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files += [str(f) for f in sorted(p.iterdir())
                      if f.suffix in (".yaml", ".yml", ".json") and f.is_file()]
        else:
            files.append(path)
    found: dict[str, tuple[str, dict, list]] = {}
    where_of: dict[str, str] = {}
    for file in files:
        reader = Reader(file)
        for n, doc in enumerate(documents(read_text(file), file)):
            where = f"document {n + 1}"
            items = [(where, doc)]
            if isinstance(doc, dict) and doc.get("kind") == "List":
                raw = doc.get("items") or []
                if not isinstance(raw, list):
                    reader.fail(f"{where}.items", "must be a list of objects")
                items = [(f"{where}.items[{k}]", item) for k, item in enumerate(raw)]
            for at, item in items:
                parsed = config.check_object(reader, item, at, file)
                kind = kind_of(parsed)
                if kind not in OBJECT_KINDS:
                    reader.fail(f"{at}.kind", f"{kind!r} cannot be applied")
                clean = _normal(item, kind)
                meta = clean["metadata"]
                key = object_key(kind, meta["name"], meta.get("namespace"))
                if key in found:
                    reader.fail(at, f"{kind} {key.split('/', 1)[1]} is given twice (also "
                                f"{where_of[key]})")
                found[key] = (key, clean, parsed)
                where_of[key] = f"{file}: {at}"
    return list(found.values())


def _normal(doc: dict, kind: str) -> dict:
    """The object as the store keeps it: apiVersion and kind, namespace filled in, a Pod's
    status left out (its node reports that)."""
    clean = json.loads(json.dumps(doc))   # a copy, and JSON-safe
    clean.setdefault("apiVersion", API_VERSION.get(kind, "v1"))
    meta = clean.setdefault("metadata", {})
    if OBJECT_KINDS[kind][1]:
        meta.setdefault("namespace", "default")
    for generated in ("uid", "resourceVersion", "creationTimestamp", "generation",
                      "managedFields", "selfLink"):
        meta.pop(generated, None)
    if kind == "Pod":
        clean.pop("status", None)
    return clean


def _same(a: dict, b: dict) -> bool:
    def core(d):
        d = json.loads(json.dumps(d))
        for generated in ("uid", "creationTimestamp"):
            d.get("metadata", {}).pop(generated, None)
        d.pop("status", None)
        return d
    return core(a) == core(b)


# --- apply -----------------------------------------------------------------------------------

def cmd_apply(args) -> int:
    cluster = _open(args, "apply")
    try:
        wanted = read_manifests(args.filename)
    except ConfigError as exc:
        print(f"vrouter: config error: {exc}; nothing was applied", file=sys.stderr)
        return EXIT_CONFIG
    if not wanted:
        print("vrouter: no objects in " + ", ".join(args.filename), file=sys.stderr)
        return EXIT_CONFIG
    from vrouter.store import run

    for _attempt in range(COMMIT_ATTEMPTS):
        items, revisions = _read(cluster)
        try:
            puts, outcome = _plan(cluster, items, wanted)
        except ConfigError as exc:
            print(f"vrouter: config error: {exc}; nothing was applied", file=sys.stderr)
            return EXIT_CONFIG
        expect = {key: revisions.get(key, 0) for key in puts}

        async def commit(store):
            return await store.commit(puts, expect=expect)
        try:
            done = not puts or run(cluster, commit)
        except StoreError as exc:
            print(f"vrouter: the datastore does not answer: {exc}; nothing was applied",
                  file=sys.stderr)
            return EXIT_HOST
        if done:
            for line in outcome:
                print(line)
            return 0
    print("vrouter: the store kept changing under this apply; nothing was applied",
          file=sys.stderr)
    return EXIT_HOST


def _read(cluster) -> tuple[dict[str, bytes], dict[str, int]]:
    """Every key's value and revision, in one read."""
    from vrouter.store import run

    async def read(store):
        snapshot = await store.list("")
        return snapshot.values(), {k: i.revision for k, i in snapshot.items.items()}
    try:
        return run(cluster, read)
    except StoreError as exc:
        print(f"vrouter: the datastore does not answer: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_HOST) from None


def _plan(cluster, items: dict, wanted: list) -> tuple[dict, list[str]]:
    """What to write (key -> value) and what to say; ConfigError for an object that does not
    fit with the others (the file's, the store's, this apply's)."""
    now = _now()
    docs = []
    for key, doc, parsed in wanted:
        old = None
        if key in items:
            try:
                old = json.loads(items[key])
            except ValueError:
                old = None   # a corrupt key is replaced
        if old is not None and parsed[0][0] == "Pod":
            before = (old.get("spec") or {}).get("nodeName")
            if before != doc["spec"].get("nodeName"):
                entry = parsed[0][1]
                entry.reader.fail(entry.at("node"), f"pod {doc['metadata']['name']!r} runs on "
                                  f"node {before!r}: a Pod's nodeName cannot change (delete it "
                                  "first)")
            if old.get("status"):
                doc = {**doc, "status": old["status"]}
                # its address stays the one its node gave it
                parsed = config.check_object(parsed[0][1].reader, doc, parsed[0][1].where,
                                             parsed[0][1].reader.path, stored=True)
        meta = doc["metadata"]
        old_meta = (old or {}).get("metadata") or {}
        meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old_meta.get("creationTimestamp") or now
        docs.append((key, doc, parsed, old))
    model = live.build(cluster, items, extra=[(k, d, p) for k, d, p, _ in docs])
    for key, doc, parsed, _ in docs:
        if key in model.problems:
            raise _as_error(model.problems[key])
    _check_pod_names(model, docs)
    puts, outcome = {}, []
    for key, doc, parsed, old in docs:
        kind = kind_of(parsed)
        name = RESOURCE[kind] + "/" + doc["metadata"]["name"]
        if old is not None and _same(old, doc):
            outcome.append(f"{name} unchanged")
            continue
        puts[key] = json.dumps(doc, sort_keys=True).encode()
        note = ""
        if kind == "Pod" and any(k == key for k, _ in model.held):
            note = f" (node {doc['spec']['nodeName']!r} is not registered: the pod waits for it)"
        outcome.append(f"{name} {'configured' if old is not None else 'created'}{note}")
    return puts, outcome


def _as_error(message: str) -> ConfigError:
    error = ConfigError("", "", message)
    error.args = (message,)
    return error


def _check_pod_names(model, docs) -> None:
    """Pod names name network namespaces: unique across Kubernetes namespaces, as in a file."""
    owners = {}
    for pod in model.cluster.pods:
        owners[pod.name] = f"pod {pod.namespace}/{pod.name} on node {pod.node}"
    for key, doc in [*model.pending, *[(k, model.objects[k]) for k, _ in model.held]]:
        meta = doc["metadata"]
        owners.setdefault(meta["name"], f"pod {meta.get('namespace', 'default')}/{meta['name']}")
    for key, doc, parsed, _ in docs:
        if parsed[0][0] != "Pod":
            continue
        meta = doc["metadata"]
        mine = f"pod {meta['namespace']}/{meta['name']}"
        other = owners.get(meta["name"])
        if other and not other.startswith(mine + " ") and other != mine:
            entry = parsed[0][1]
            entry.reader.fail(entry.at("name"), f"pod name {meta['name']!r} is taken by "
                              f"{other}: pod names name network namespaces, so they are unique "
                              "across namespaces")


# --- get -------------------------------------------------------------------------------------

def cmd_get(args) -> int:
    kind = KINDS.get(args.kind.lower())
    if kind is None:
        print(f"vrouter: the server doesn't have a resource type {args.kind!r} (vrouter has "
              "nodes, pods, services, networkpolicies, namespaces, deployments, replicasets, "
              "statefulsets, daemonsets)", file=sys.stderr)
        return EXIT_CONFIG
    cluster = _open(args, "get")
    model = live.build(cluster, _items(cluster))
    rows = _rows(kind, cluster, model)
    if kind != "Node" and kind != "Namespace" and not args.all_namespaces:
        rows = [r for r in rows if r["namespace"] == (args.namespace or "default")]
    if args.name:
        rows = [r for r in rows if r["name"] == args.name]
        if not rows:
            print(f'Error from server (NotFound): {RESOURCE[kind].split(".")[0]}s '
                  f'"{args.name}" not found', file=sys.stderr)
            return 1
    if args.output in ("json", "yaml"):
        listing = {"apiVersion": "v1", "kind": "List", "items": [r["object"] for r in rows],
                   "metadata": {"resourceVersion": ""}}
        if args.output == "json":
            print(json.dumps(listing, indent=4))
        else:
            print(yaml.safe_dump(listing, sort_keys=False, default_flow_style=False), end="")
        return 0
    if not rows:
        where = "" if kind in ("Node", "Namespace") or args.all_namespaces else \
            f" in {args.namespace or 'default'} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    columns = COLUMNS[kind] + (WIDE[kind] if args.output == "wide" else [])
    if args.all_namespaces and kind not in ("Node", "Namespace"):
        columns = ["NAMESPACE"] + columns
    for r in rows:
        r["NAME"] = r["name"]
    table = [columns] + [[str(r.get(c, "<none>")) for c in columns] for r in rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(columns))]
    for row in table:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


COLUMNS = {"Node": ["NAME", "STATUS", "AGE", "PODCIDR", "INTERNAL-IP"],
           "Pod": ["NAME", "STATUS", "AGE", "IP", "NODE"],
           "Service": ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
           "NetworkPolicy": ["NAME", "POD-SELECTOR", "AGE"],
           "Namespace": ["NAME", "STATUS", "AGE"],
           "Deployment": ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
           "ReplicaSet": ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
           "StatefulSet": ["NAME", "READY", "AGE"],
           "DaemonSet": ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE",
                         "AGE"]}
WIDE = {"Node": ["EXTERNAL-IP", "VTEP-MAC", "SOURCE"], "Pod": ["MAC", "NETNS", "OWNER", "SOURCE"],
        "Service": ["SELECTOR"], "NetworkPolicy": ["POLICY-TYPES"], "Namespace": ["LABELS"],
        **{k: ["SELECTOR", "SOURCE"] for k in WORKLOAD_KINDS}}


def age(timestamp: str | None) -> str:
    """kubectl's AGE: 45s, 12m, 5h, 3d."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= 120):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _created(doc: dict | None) -> str | None:
    return ((doc or {}).get("metadata") or {}).get("creationTimestamp")


def _selector(pairs) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs) or "<none>"


def _rows(kind: str, cluster, model) -> list[dict]:
    c = model.cluster
    if kind == "Node":
        rows = []
        for node in c.nodes:
            doc = model.registrations.get(node.name) or live.node_document(node)
            listed = any(n.name == node.name for n in cluster.nodes)
            rows.append({"name": node.name, "namespace": None,
                         "STATUS": "Ready" if node.name in model.running else "NotReady",
                         "AGE": age(_created(doc)), "PODCIDR": str(node.pod_cidr),
                         "INTERNAL-IP": str(node.underlay), "EXTERNAL-IP": str(node.address),
                         "VTEP-MAC": node.vtep_mac,
                         "SOURCE": "file" if listed else "registered",
                         "object": {**doc, "spec": {**doc.get("spec", {}),
                                                    "podCIDR": str(node.pod_cidr)},
                                    "status": {**doc.get("status", {}), "addresses": [
                                        {"type": "InternalIP", "address": str(node.underlay)},
                                        {"type": "ExternalIP", "address": str(node.address)},
                                        {"type": "Hostname", "address": node.name}]}}})
        return rows
    if kind == "Pod":
        return _pod_rows(cluster, model)
    if kind in WORKLOAD_KINDS:
        return _workload_rows(kind, cluster, model)
    if kind == "Service":
        rows = []
        for svc in c.services:
            key = object_key("Service", svc.name, svc.namespace)
            doc = model.objects.get(key)
            ports = ",".join(f"{p.port}{':' + str(p.node_port) if p.node_port else ''}/"
                             f"{p.protocol}" for p in svc.ports) or "<none>"
            obj = json.loads(json.dumps(doc)) if doc else {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": svc.name, "namespace": svc.namespace},
                "spec": {"type": svc.type, "selector": dict(svc.selector),
                         "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port,
                                    "targetPort": p.target_port} for p in svc.ports]}}
            spec = obj.setdefault("spec", {})
            spec["clusterIP"] = str(svc.cluster_ip) if svc.cluster_ip else "None"
            for port, sp in zip(spec.get("ports") or [], svc.ports):
                if sp.node_port:
                    port["nodePort"] = sp.node_port
            rows.append({"name": svc.name, "namespace": svc.namespace, "TYPE": svc.type,
                         "CLUSTER-IP": str(svc.cluster_ip) if svc.cluster_ip else "None",
                         "EXTERNAL-IP": ",".join(map(str, svc.external_ips)) or
                         (svc.external_name or "<none>"),
                         "PORT(S)": ports, "AGE": age(_created(doc)),
                         "SELECTOR": _selector(svc.selector), "NAMESPACE": svc.namespace,
                         "object": obj})
        return rows
    if kind == "NetworkPolicy":
        rows = []
        for pol in c.policies:
            key = object_key("NetworkPolicy", pol.name, pol.namespace)
            doc = model.objects.get(key) or {
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": pol.name, "namespace": pol.namespace},
                "spec": {"podSelector": {"matchLabels": dict(pol.pod_selector.match_labels)},
                         "policyTypes": list(pol.types)}}
            rows.append({"name": pol.name, "namespace": pol.namespace, "NAMESPACE": pol.namespace,
                         "POD-SELECTOR": _selector(pol.pod_selector.match_labels),
                         "AGE": age(_created(model.objects.get(key))),
                         "POLICY-TYPES": ",".join(pol.types), "object": doc})
        return rows
    names = {ns.name: ns for ns in c.namespaces}
    for name in {"default", "kube-system", *(p.namespace for p in c.pods),
                 *(s.namespace for s in c.services)}:
        names.setdefault(name, None)
    rows = []
    for name in sorted(names):
        key = object_key("Namespace", name)
        ns = names[name]
        labels = dict(ns.labels) if ns else {}
        doc = model.objects.get(key) or {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": name, "labels": labels}}
        rows.append({"name": name, "namespace": None, "STATUS": "Active",
                     "AGE": age(_created(model.objects.get(key))),
                     "LABELS": _selector(sorted(labels.items())), "object": doc})
    return rows


def _workload_rows(kind: str, cluster, model) -> list[dict]:
    """Workloads of the file and the store, with what their controllers made so far."""
    from vrouter.model import controllers
    rows = []
    for w in model.cluster.workloads:
        if w.kind != kind:
            continue
        key = object_key(kind, w.name, w.namespace)
        doc = model.objects.get(key)
        p = controllers.progress(w, model.revisions.get(w.key), model.ready)
        desired = p["desired"] if p["desired"] is not None else p["pods"]
        obj = json.loads(json.dumps(doc)) if doc else {
            "apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": w.name, "namespace": w.namespace},
            "spec": {"selector": {"matchLabels": dict(w.selector.match_labels)},
                     "template": w.template}}
        obj["status"] = {"replicas": p["pods"], "updatedReplicas": p["updated"],
                         "readyReplicas": p["available"], "availableReplicas": p["available"]}
        rows.append({"name": w.name, "namespace": w.namespace, "NAMESPACE": w.namespace,
                     "READY": f"{p['available']}/{desired}", "UP-TO-DATE": p["updated"],
                     "AVAILABLE": p["available"], "DESIRED": desired, "CURRENT": p["pods"],
                     "AGE": age(_created(doc)), "SELECTOR": _selector(w.selector.match_labels),
                     "SOURCE": "store" if doc else "file", "object": obj})
    return rows


def _owner_reference(pod) -> list[dict]:
    if not pod.owner:
        return []
    kind, name = pod.owner.split("/", 1)
    return [{"apiVersion": "apps/v1", "kind": kind, "name": name, "controller": True}]


def _pod_rows(cluster, model) -> list[dict]:
    c = model.cluster
    rows = []
    file_pods = {p.name for p in cluster.pods}
    for pod in c.pods:
        key = object_key("Pod", pod.name, pod.namespace)
        doc = model.objects.get(key)
        running = pod.node in model.running
        status = ("Pending" if pod.awaiting_cni else "Running") if running else "Unknown"
        source = "store" if doc else ("workload" if pod.workload else "file"
                                      if pod.name in file_pods else "attached")
        obj = json.loads(json.dumps(doc)) if doc else {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace,
                         "labels": dict(pod.labels)},
            "spec": {"nodeName": pod.node}}
        obj["status"] = {**(obj.get("status") or {}), "phase": status,
                         "podIP": str(pod.ip), "podIPs": [{"ip": str(pod.ip)}]}
        if pod.owner:
            obj["metadata"]["ownerReferences"] = _owner_reference(pod)
        if pod.gated:
            obj["status"]["conditions"] = [{"type": "Ready",
                                            "status": "True" if pod.ready else "False"}]
        rows.append({"name": pod.name, "namespace": pod.namespace, "NAMESPACE": pod.namespace,
                     "STATUS": status, "AGE": age(_created(doc)), "IP": str(pod.ip),
                     "NODE": pod.node, "MAC": pod.mac, "NETNS": pod.netns, "SOURCE": source,
                     "OWNER": pod.owner or "<none>", "object": obj})
    waiting = [(key, doc, "Pending") for key, doc in model.pending]
    waiting += [(key, model.objects[key], "Pending") for key, _ in model.held]
    for key, doc, status in waiting:
        meta = doc["metadata"]
        obj = {**doc, "status": {"phase": status}}
        rows.append({"name": meta["name"], "namespace": meta.get("namespace", "default"),
                     "NAMESPACE": meta.get("namespace", "default"), "STATUS": status,
                     "AGE": age(_created(doc)), "IP": "<none>",
                     "NODE": (doc.get("spec") or {}).get("nodeName", "<none>"), "MAC": "<none>",
                     "NETNS": "<none>", "SOURCE": "store", "object": obj})
    return sorted(rows, key=lambda r: (r["namespace"], r["name"]))


# --- delete ----------------------------------------------------------------------------------

def cmd_delete(args) -> int:
    cluster = _open(args, "delete")
    if args.filename:
        if args.kind or args.name:
            print("vrouter: delete -f FILE takes no KIND NAME", file=sys.stderr)
            return EXIT_CONFIG
        try:
            targets = [(key, kind_of(parsed), doc["metadata"]["name"])
                       for key, doc, parsed in read_manifests(args.filename)]
        except ConfigError as exc:
            print(f"vrouter: config error: {exc}; nothing was deleted", file=sys.stderr)
            return EXIT_CONFIG
    else:
        kind = KINDS.get((args.kind or "").lower())
        if kind is None or not args.name:
            print("vrouter: delete KIND NAME [-n NS] (KIND: pod, service, networkpolicy, "
                  "namespace, deployment, replicaset, statefulset, daemonset) or delete -f "
                  "FILE", file=sys.stderr)
            return EXIT_CONFIG
        if kind == "Node":
            print("vrouter: a node leaves when it stops: `vrouter down` on its host, or its "
                  f"lease ({cluster.datastore.lease_ttl} s) expires after it died",
                  file=sys.stderr)
            return EXIT_CONFIG
        targets = [(object_key(kind, args.name, args.namespace or "default"), kind, args.name)]
    items = _items(cluster)
    model = live.build(cluster, items)
    deletes, said, missing = [], [], False
    for key, kind, name in targets:
        if key not in items:
            missing = True
            print(f'Error from server (NotFound): {RESOURCE[kind].split(".")[0]}s "{name}" '
                  f"not found{_elsewhere(kind, name, cluster, model)}", file=sys.stderr)
            continue
        deletes.append(key)
        if kind == "Namespace":   # as Kubernetes' namespace controller: what is in it goes
            deletes += [k for k in items if k not in deletes and any(
                k.startswith(OBJECT_KINDS[other][0] + name + "/") for other in OBJECT_KINDS
                if OBJECT_KINDS[other][1])]
        said.append(f'{RESOURCE[kind]} "{name}" deleted')
    if deletes:
        from vrouter.store import run

        async def remove(store):
            return await store.commit({}, deletes=deletes)
        try:
            run(cluster, remove)
        except StoreError as exc:
            print(f"vrouter: the datastore does not answer: {exc}; nothing was deleted",
                  file=sys.stderr)
            return EXIT_HOST
    for line in said:
        print(line)
    return 1 if missing else 0


def _elsewhere(kind: str, name: str, cluster, model) -> str:
    """Where an object that is not in the store comes from, if it is in the model."""
    if kind == "Pod" and any(p.name == name for p in model.cluster.pods):
        if any(p.name == name for p in cluster.pods):
            return f" in the store (it is in the cluster file {cluster.source}: remove it there " \
                   "and `vrouter reload`)"
        return " in the store (it is attached at runtime: `vrouter detach`)"
    if kind == "Service" and any(s.name == name for s in model.cluster.services):
        return f" in the store (it is in the cluster file {cluster.source} or is cluster DNS)"
    return ""


def add_parsers(sub) -> None:
    p = sub.add_parser("apply", help="write Kubernetes objects into the cluster's store "
                       "(etcd), validated as a cluster file is, in one transaction")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR")
    p.add_argument("--cluster", required=True, metavar="CONFIG", help="the cluster file")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("get", help="list nodes, pods, services, networkpolicies, namespaces, "
                       "deployments, replicasets, statefulsets, daemonsets")
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("--cluster", required=True, metavar="CONFIG")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-n", "--namespace")
    group.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=("wide", "yaml", "json"))
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("delete", help="delete objects from the cluster's store by kind and "
                       "name, or as files name them")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR")
    p.add_argument("--cluster", required=True, metavar="CONFIG")
    p.set_defaults(func=cmd_delete)
