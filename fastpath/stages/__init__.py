"""The fast path's stages, declared once.

Each stage looks at one frame, uses some groups of tables, and either finishes the frame with a
verdict (an action and the counter that explains it: `finish`, which returns DONE) or hands it
on: it returns NEXT, or BRANCH where it has a second way out. Which stage NEXT and BRANCH lead
to is said here, in STAGES, and nowhere else; so is what each stage is called with, what it
writes (vrouter trace runs a packet on copies of exactly that) and when it is skipped.

From STAGES come the constants S_<NAME> (a stage's number, importable from this module),
STAGE_NAMES (what `vrouter trace` prints) and the dispatch, fastpath/stages/run.py, generated
by `python3 -m fastpath.stages.generate` and checked in (numba caches only code in a file; a
test fails when it is stale). A stage that can be skipped (`run_if`) is `linked`: the dispatch
calls it through its compiled code's address in tables.code, which fastpath.stages.link fills
once some node's tables need it, so until then it is not even compiled; the others are called
by name. Adding a stage: write its function, add one Stage here, point a stage before it at
it, regenerate. The order, as declared below:

  pod_in | outside_in | overlay_in | gateway_in      ingress checks, by where the frame came from
  -> services                                         Service NAT, masquerade and conntrack
  -> policy                                           NetworkPolicy, for new connections
  -> switch -> bridge                                 pods' frames: L2 by destination MAC...
            -> route                                  ...or L3 (the gateway MAC, other ingress)
  -> to_overlay                                       a remote node: MTU, liveness, encapsulation
  -> local (-> route)                                 for the node itself: echo answered in place

Verdicts that deliver then become output rows; super-frames for the overlay are segmented
(fastpath.stages.gso) and overlay segments for pods coalesced (fastpath.stages.gro).
"""
from __future__ import annotations

from typing import NamedTuple

from fastpath.jit import inlined
from fastpath.layout import M_ACTION, M_OUT, M_REASON

DONE = -1     # a verdict is in M_ACTION / M_REASON
NEXT = 0      # on to the stage's `next`
BRANCH = 1    # on to the stage's `branch`

# what a stage can be called with after (buf, meta, i): these, or a group of fastpath.groups.Tables
SCALARS = ("now", "params", "counters")


class Stage(NamedTuple):
    name: str
    function: str                 # "module.function" in fastpath.stages
    args: tuple[str, ...]         # after (buf, meta, i): SCALARS or Tables groups, in order
    next: str | None = None       # where NEXT leads (None: the stage always gives a verdict)
    branch: str | None = None     # where BRANCH leads
    writes: tuple[str, ...] = ()  # "group" or "group.field" of Tables the stage may change
    run_if: str | None = None     # "group.field": skipped (straight to `next`) while field[0] == 0
    entry: bool = False           # where frames start (fastpath.dispatch.first_stage picks one)

    @property
    def linked(self) -> bool:
        """Called through its code's address in tables.code (fastpath.stages.link), and so
        compiled only when some tables need it; else by name, compiled into forward."""
        return self.run_if is not None


STAGES = (
    Stage("pod_in", "ingress.pod_in", ("now", "params", "counters", "ports", "bridge"),
          next="services", writes=("counters", "bridge"), entry=True),
    Stage("outside_in", "outside.outside_in", ("now", "params", "counters", "outside"),
          next="services", writes=("counters", "outside"), entry=True),
    Stage("overlay_in", "overlay.overlay_in", ("now", "params", "counters", "peers"),
          next="services", writes=("counters", "peers.peer_seen"), entry=True),
    Stage("gateway_in", "ingress.gateway_in", (), next="services", entry=True),
    Stage("services", "services.services_stage",
          ("now", "params", "counters", "services", "conntrack"),
          next="policy", writes=("counters", "services.fe_new", "conntrack")),
    # no pod of this node selected by a policy: nothing to judge
    Stage("policy", "policy.policy_stage",
          ("now", "params", "counters", "policy", "routes", "conntrack"),
          next="switch", writes=("counters", "policy.drops", "conntrack"),
          run_if="policy.active"),
    Stage("switch", "bridge.switch", ("params",), next="bridge", branch="route"),
    Stage("bridge", "bridge.bridge_stage", ("now", "params", "bridge")),
    Stage("route", "route.route_stage", ("now", "params", "ports", "routes", "outside"),
          next="to_overlay", branch="local", writes=("outside",)),
    Stage("to_overlay", "overlay.to_overlay", ("now", "params", "peers")),
    Stage("local", "local.local_stage", ("params", "counters"), next="route",
          writes=("counters",)),
)

STAGE_NAMES = tuple(s.name for s in STAGES)
STAGE_COUNT = len(STAGES)

# S_POD_IN = 0, S_OUTSIDE_IN = 1, ...: numba reads them as compile-time constants
for _index, _stage in enumerate(STAGES):
    globals()["S_" + _stage.name.upper()] = _index


def writes() -> tuple[str, ...]:
    """Everything some stage may change, as "group" / "group.field" (without duplicates)."""
    return tuple(dict.fromkeys(w for s in STAGES for w in s.writes))


def _check() -> None:
    names = set(STAGE_NAMES)
    assert len(names) == STAGE_COUNT, "duplicate stage name"
    for s in STAGES:
        for target in (s.next, s.branch):
            assert target is None or (target in names and not STAGES[STAGE_NAMES.index(
                target)].entry), f"stage {s.name}: no stage {target!r} to go on to"
        assert s.run_if is None or s.next is not None, f"stage {s.name}: skipped to where?"


_check()


@inlined
def finish(meta, i, action, out, reason):
    """End the frame's walk through the stages with a verdict; returns DONE."""
    meta[i, M_ACTION] = action
    meta[i, M_OUT] = out
    meta[i, M_REASON] = reason
    return DONE


def __getattr__(name: str):   # a clear error for a misspelt S_ constant
    raise AttributeError(f"fastpath.stages has no {name!r}; stages are declared in STAGES")
