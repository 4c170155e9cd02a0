"""The stage declaration (fastpath.stages.STAGES) is the one truth: the generated dispatch is
current, every stage is called as its function is written, every stage can be reached, and
what the fast path changes is what the stages (and the dispatch loop) declare they write."""
import inspect
from pathlib import Path

import numpy as np
import pytest

from fastpath import stages as declared
from fastpath.dispatch import WRITES as DISPATCH_WRITES
from fastpath.groups import Tables
from fastpath.stages import SCALARS, STAGE_NAMES, STAGES, generate

from tests.fuzz import fastpath_node

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"


def test_the_generated_dispatch_is_current():
    assert generate.TARGET.read_text() == generate.source(), \
        "fastpath/stages/run.py is stale: python3 -m fastpath.stages.generate"


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_NAMES)
def test_each_stage_is_called_as_its_function_is_written(stage):
    module, name = stage.function.split(".")
    function = getattr(__import__(f"fastpath.stages.{module}", fromlist=[name]), name)
    parameters = list(inspect.signature(function.py_func).parameters)
    assert parameters == ["buf", "meta", "i", *stage.args]
    assert all(a in SCALARS or a in Tables._fields for a in stage.args)
    for path in stage.writes + (() if stage.run_if is None else (stage.run_if,)):
        group, _, field = path.partition(".")
        assert group in Tables._fields, f"{stage.name}: no table group {group!r}"
        group_type = Tables.__annotations__.get(group)
        if field:
            assert field in group_type._fields, f"{stage.name}: {group} has no {field!r}"


def test_every_stage_is_reached_from_where_frames_enter():
    seen = {s.name for s in STAGES if s.entry}
    assert seen == {"pod_in", "outside_in", "overlay_in", "gateway_in"}
    by_name = {s.name: s for s in STAGES}
    todo = list(seen)
    while todo:
        s = by_name[todo.pop()]
        for target in (s.next, s.branch):
            if target is not None and target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(STAGE_NAMES)


def test_constants_follow_the_declaration():
    assert [getattr(declared, "S_" + n.upper()) for n in STAGE_NAMES] == list(range(len(STAGES)))
    with pytest.raises(AttributeError, match="declared in STAGES"):
        declared.S_NO_SUCH_STAGE


def _arrays(value, path=""):
    """(path, array) for every array of a group, "group.field" as the declaration names them."""
    if isinstance(value, np.ndarray):
        yield path, value
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field, v in zip(value._fields, value):
            yield from _arrays(v, f"{path}.{field}" if path else field)


def _declared(path: str, writes) -> bool:
    return any(path == w or path.startswith(w + ".") for w in writes)


def test_the_fast_path_changes_only_what_the_stages_declare():
    """Every seed of the fast-path fuzz targets (all the stages branch on: pods, the outside
    network, the overlay, Services, a policy, full tables) runs on the fuzzers' node; any
    array it changes must be declared written, or vrouter trace would change the real one."""
    node = fastpath_node.Node("node-a")
    writes = declared.writes() + DISPATCH_WRITES
    changed = set()
    inputs = [(fastpath_node.run_pod_reads, f) for f in sorted((CORPUS / "pod_frames").iterdir())]
    inputs += [(fastpath_node.run_datagrams, f)
               for f in sorted((CORPUS / "overlay_datagrams").iterdir())]
    for run, seed in inputs:
        node.reset()
        before = {p: a.copy() for p, a in _arrays(node.dp.tables)}
        run(node, seed.read_bytes())
        changed |= {p for p, a in _arrays(node.dp.tables) if not np.array_equal(a, before[p])}
    undeclared = sorted(p for p in changed if not _declared(p, writes))
    assert undeclared == []
    # the seeds reach the stages that write: a table of each kind changed
    assert {"counters", "conntrack.recs", "services.fe_new", "policy.drops",
            "budgets.port_used"} <= changed
