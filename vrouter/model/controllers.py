"""The workload controllers' decisions, sans-IO: from what exists of a workload (its revisions,
vrouter.model.workloads.Revision) and which of its pods are available, the next state, as the
Kubernetes controllers would reach it. The node that leads (vrouter.node.controllers) calls
`step` whenever something changed and writes what it returns; every node then makes the pods.

- Deployment (pkg/controller/deployment): a template change makes a new ReplicaSet; with
  RollingUpdate (maxSurge 25% rounded up, maxUnavailable 25% rounded down, and 1 unavailable if
  both come to 0) it is scaled up while all pods stay within replicas + maxSurge, and the old
  ones are scaled down (their unavailable pods first) while available pods stay at replicas -
  maxUnavailable, counting the new ReplicaSet's unavailable pods against it; one move per
  step. Recreate removes the old pods first. A change of `replicas` alone scales at once.
- ReplicaSet: only the count: new pods from the current template, the others kept as they are
  (a template change does not touch existing pods in Kubernetes either).
- StatefulSet: OrderedReady creates ordinal k once 0..k-1 are available and removes from the
  highest ordinal down, one at a time; Parallel does both at once. A template change replaces
  one pod at a time from the highest ordinal down to `partition`, each available again before
  the next; OnDelete leaves the pods be.
- DaemonSet: a pod on every admitted node; a template change replaces pods node by node with at
  most maxUnavailable (default 1) unavailable, or with maxSurge a new pod beside the old one,
  which goes once the new one is available.
Pods to remove go unavailable ones first, then from the highest index (Kubernetes ranks not-ready
pods first when it scales down).
"""
from __future__ import annotations

import dataclasses

from vrouter.model.workloads import (Revision, Workload, eligible_nodes, fenceposts, initial,
                                     pod_name, ready_key, scaled)


def step(w: Workload, revisions: tuple[Revision, ...] | None, nodes,
         available: set[str]) -> tuple[Revision, ...]:
    """The next state of `w` (the same when nothing is to be done). `available`: ready_key()s
    of available pods (ready for minReadySeconds)."""
    revisions = tuple(revisions or initial(w, nodes))
    if w.kind == "Deployment":
        return _deployment(w, revisions, available)
    if w.kind == "ReplicaSet":
        return _replicaset(w, revisions, available)
    if w.kind == "StatefulSet":
        return _statefulset(w, revisions, available)
    return _daemonset(w, revisions, nodes, available)


def _up(w: Workload, r: Revision, member, available: set[str]) -> bool:
    return ready_key(pod_name(w, r.hash, member), r.hash) in available


def _count_up(w: Workload, r: Revision, available) -> int:
    return sum(1 for m in r.members if _up(w, r, m, available))


def _shrink(w: Workload, r: Revision, count: int, available) -> Revision:
    """`r` with `count` members fewer: unavailable ones first, then the highest."""
    ranked = sorted(r.members, key=lambda m: (_up(w, r, m, available), -_order(m)))
    gone = set(ranked[:max(0, count)])
    return dataclasses.replace(r, members=tuple(m for m in r.members if m not in gone))


def _order(member) -> int:
    return member if isinstance(member, int) else 0


def _grow(r: Revision, count: int, used: set) -> Revision:
    """`r` with `count` more members, the lowest free indices (a gap left by a removed pod is
    filled first, on the node that pod had)."""
    members, k = list(r.members), 0
    while count > 0:
        if k not in used and k not in members:
            members.append(k)
            count -= 1
        k += 1
    return dataclasses.replace(r, members=tuple(sorted(members)))


def _resize(w: Workload, r: Revision, size: int, available, used=frozenset()) -> Revision:
    if len(r.members) > size:
        return _shrink(w, r, len(r.members) - size, available)
    if len(r.members) < size:
        return _grow(r, size - len(r.members), set(used))
    return r


def _current(w: Workload, revisions) -> Revision:
    return Revision(w.template_hash, w.template, ())


def _deployment(w: Workload, revisions, available) -> tuple[Revision, ...]:
    revs = list(revisions)
    new = next((r for r in revs if r.hash == w.template_hash), None)
    if new is None:
        if w.paused:   # a paused Deployment scales, but rolls nothing out
            newest = revs[-1]
            others = sum(len(r.members) for r in revs[:-1])
            revs[-1] = _resize(w, newest, max(0, w.replicas - others), available)
            return tuple(r for r in revs if r.members or r is revs[-1])
        new = _current(w, revs)
        revs.append(new)
    olds = [r for r in revs if r is not new and r.members]
    n = w.replicas
    if not olds:   # nothing to roll: a scale (or the end of a rollout)
        return (_resize(w, new, n, available),)
    if w.strategy.type == "Recreate":
        if any(r.members for r in olds):   # every old pod goes first
            return tuple(dataclasses.replace(r, members=()) for r in olds) + (new,)
        return (_resize(w, new, n, available),)
    surge, unavailable = fenceposts(w.strategy, n)
    unavailable = min(unavailable, n)
    # scale up the new ReplicaSet, within replicas + maxSurge (reconcileNewReplicaSet)
    if len(new.members) > n:
        return _keep(olds, _resize(w, new, n, available))
    if len(new.members) < n:
        total = sum(len(r.members) for r in revs)
        if total < n + surge:
            grow = min(n + surge - total, n - len(new.members))
            return _keep(olds, _resize(w, new, len(new.members) + grow, available))
    # scale down the old ones, keeping replicas - maxUnavailable available
    # (reconcileOldReplicaSets: unhealthy pods first, then scaleDownOldReplicaSetsForRollingUpdate)
    total = sum(len(r.members) for r in revs)
    min_available = n - unavailable
    new_unavailable = len(new.members) - _count_up(w, new, available)
    budget = total - min_available - new_unavailable
    if budget <= 0:
        return _keep(olds, new)
    cleaned = []
    for r in olds:   # oldest first
        unhealthy = len(r.members) - _count_up(w, r, available)
        take = min(budget, unhealthy)
        budget -= take
        cleaned.append(_shrink(w, r, take, available))
    up = sum(_count_up(w, r, available) for r in cleaned) + _count_up(w, new, available)
    down = max(0, up - min_available)
    result = []
    for r in cleaned:
        take = min(len(r.members), down)
        down -= take
        result.append(_shrink(w, r, take, available))
    return _keep(result, new)


def _keep(olds, new) -> tuple[Revision, ...]:
    """The old revisions that still have pods, oldest first, then the new one."""
    return tuple(r for r in olds if r.members) + (new,)


def _replicaset(w: Workload, revisions, available) -> tuple[Revision, ...]:
    revs = list(revisions)
    total = sum(len(r.members) for r in revs)
    if total > w.replicas:   # remove across revisions: unavailable first, then the highest
        ranked = sorted(((not _up(w, r, m, available), m, k) for k, r in enumerate(revs)
                         for m in r.members), reverse=True)
        gone = {(k, m) for _, m, k in ranked[:total - w.replicas]}
        revs = [dataclasses.replace(r, members=tuple(m for m in r.members if (k, m) not in gone))
                for k, r in enumerate(revs)]
    elif total < w.replicas:   # new pods come from the template the file has now
        used = {m for r in revs for m in r.members}
        current = next((r for r in revs if r.hash == w.template_hash), None)
        if current is None:
            current = _current(w, revs)
            revs.append(current)
        k = revs.index(current)
        revs[k] = _grow(current, w.replicas - total, used)
    return tuple(r for r in revs if r.members) or (_current(w, revs),)


def _statefulset(w: Workload, revisions, available) -> tuple[Revision, ...]:
    owner = {m: r.hash for r in revisions for m in r.members}
    templates = {r.hash: r.template for r in revisions}
    update = w.template_hash
    templates[update] = w.template
    wanted = range(w.first_ordinal, w.first_ordinal + w.replicas)

    def up(ordinal) -> bool:
        h = owner[ordinal]
        return ready_key(pod_name(w, h, ordinal), h) in available

    def result():
        by_hash: dict[str, list] = {}
        for ordinal, h in sorted(owner.items()):
            by_hash.setdefault(h, []).append(ordinal)
        order = [r.hash for r in revisions if r.hash in by_hash]
        order += [h for h in by_hash if h not in order]
        return tuple(Revision(h, templates[h], tuple(by_hash[h])) for h in order) or (
            Revision(update, w.template, ()),)

    condemned = sorted((o for o in owner if o not in wanted), reverse=True)
    missing = [o for o in wanted if o not in owner]
    if w.pod_management == "Parallel":
        if condemned or missing:
            for o in condemned:
                del owner[o]
            for o in missing:
                owner[o] = update
            return result()
    else:
        for o in wanted:   # one at a time, each available before the next
            if o not in owner:
                owner[o] = update
                return result()
            if not up(o):
                return result()
        if condemned:   # from the highest ordinal down, once every other pod is available
            del owner[condemned[0]]
            return result()
    if w.strategy.type == "RollingUpdate":
        for o in reversed(wanted):
            if o < w.first_ordinal + w.strategy.partition:
                break
            if owner[o] != update:
                owner[o] = update   # the pod is made again from the new template
                return result()
            if not up(o):
                return result()   # wait until the one updated last is available
    return result()


def _daemonset(w: Workload, revisions, nodes, available) -> tuple[Revision, ...]:
    update = w.template_hash
    admitted = [n.name for n in eligible_nodes(w, w.spec, nodes)]
    on: dict[str, list[str]] = {}   # node -> hashes of its pods, oldest first
    templates = {r.hash: r.template for r in revisions}
    templates[update] = w.template
    for r in revisions:
        for node in r.members:
            on.setdefault(node, []).append(r.hash)

    def up(node, h) -> bool:
        return ready_key(pod_name(w, h, node), h) in available

    for node in list(on):   # pods on nodes the template no longer admits go at once
        if node not in admitted:
            del on[node]
    for node in admitted:   # and every admitted node gets one, at once
        on.setdefault(node, [update])
    if w.strategy.type == "RollingUpdate":
        old = [n for n in admitted if any(h != update for h in on[n])]
        surge = scaled(w.strategy.max_surge, len(admitted), True)
        max_unavailable = scaled(w.strategy.max_unavailable, len(admitted), True)
        if surge == 0 and max_unavailable == 0:
            max_unavailable = 1
        if surge:
            in_flight = [n for n in old if update in on[n]]
            for node in in_flight:   # the new pod is available: the old one goes
                if up(node, update):
                    on[node] = [update]
            starting = surge - sum(1 for n in in_flight if len(on[n]) > 1)
            for node in old:
                if update not in on[node] and starting > 0:
                    on[node] = on[node] + [update]
                    starting -= 1
        else:
            unavailable = sum(1 for n in admitted if not any(up(n, h) for h in on[n]))
            budget = max_unavailable - unavailable
            for node in old:
                if not any(up(node, h) for h in on[node]):
                    on[node] = [update]   # unavailable anyway: replaced at no cost
                elif budget > 0:
                    on[node] = [update]
                    budget -= 1
    hashes = [r.hash for r in revisions]
    hashes += [update] if update not in hashes else []
    made = tuple(Revision(h, templates[h], tuple(n for n in admitted if h in on.get(n, ())))
                 for h in hashes)
    return tuple(r for r in made if r.members) or (Revision(update, w.template, ()),)


def progress(w: Workload, revisions: tuple[Revision, ...] | None, available: set[str]) -> dict:
    """What `vrouter status` says of a workload: pods, up to date, available."""
    revisions = revisions or ()
    pods = sum(len(r.members) for r in revisions)
    updated = sum(len(r.members) for r in revisions if r.hash == w.template_hash)
    up = sum(_count_up(w, r, available) for r in revisions)
    return {"workload": w.key, "desired": None if w.kind == "DaemonSet" else w.replicas,
            "pods": pods, "updated": updated, "available": up,
            "revisions": [{"hash": r.hash, "pods": len(r.members)} for r in revisions]}
