"""A first compile shared with a forked worker (vrouter.node.compiling): the worker's part is
what serve loads from the cache, and a worker that fails only costs time."""
import json
import os
import subprocess
import sys
import tempfile

import numba
import pytest

from vrouter.node import compiling

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPORT = """
import json
from fastpath import compiled_marker
from fastpath.conntrack import CTS_FREE
from fastpath.stages import S_POLICY
from vrouter.model import config
from vrouter.node.compiling import (
    _fastpath_dispatchers, ensure_compiled, entry_points, _throwaway_datapath)
from vrouter.node.dataplane import Dataplane
demo = config.load("configs/demo.yaml", check_host=False)   # no NetworkPolicy
ensure_compiled(demo)
with _throwaway_datapath() as datapath:
    entries = entry_points(datapath)
def misses():
    return {id(d): sum(d.stats.cache_misses.values()) for d in _fastpath_dispatchers()}
def since(before):
    return sorted(d.py_func.__qualname__ for d in _fastpath_dispatchers()
                  if sum(d.stats.cache_misses.values()) > before.get(id(d), 0))
compiled = misses()
# what a node calls from Python besides serve, as it runs: its sweep with connections in use
dp = Dataplane(demo, "node-a")
dp.tables.conntrack.stats[CTS_FREE] -= 1
dp.sweep()
dp.conntrack_fill()
compiled_later = since(compiled)
policy_unlinked = int(dp.tables.code[S_POLICY]) == 0
# a NetworkPolicy that selects the node's pods: only now is the policy stage compiled
compiled = misses()
closed = config.load("configs/policies.yaml", check_host=False)
dp_policy = Dataplane(closed, closed.nodes[0].name)
print(json.dumps({"marker": compiled_marker().exists(), "compiled_later": compiled_later,
    "policy_unlinked": policy_unlinked, "policy_active": int(dp_policy.tables.policy.active[0]),
    "policy_linked": int(dp_policy.tables.code[S_POLICY]) != 0,
    "compiled_for_policy": since(compiled),
    "entries": {name: [len(f.signatures), sum(f.stats.cache_hits.values()),
                       sum(f.stats.cache_misses.values())] for name, (f, _) in entries.items()}}))
"""


def test_a_first_compile_loads_the_workers_share_from_the_cache_and_compiles_each_part_once():
    """From an empty cache, for a cluster without a NetworkPolicy: each entry point has one
    signature (the argument types entry_points derives are the ones serve and a node's linking
    pass); the worker's share was loaded from the cache (a hit, no compile here), except
    serve's I/O functions, which nothing here needs (serve's cached code holds them); this
    process's share was compiled here, but not the policy stage; what a node calls later (its
    sweep with connections in use) compiles nothing more; and a node whose pods a policy
    selects compiles the policy stage then, and links it."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("needs two cores for the worker")
    with tempfile.TemporaryDirectory(prefix="vrouter-test-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=ROOT)
        result = subprocess.run([sys.executable, "-c", REPORT], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "vrouter: fast path compiled in" in result.stderr, result.stderr[-3000:]
        report = json.loads(result.stdout.splitlines()[-1])
        leftovers = [n for n in os.listdir(tempfile.gettempdir())
                     if n.startswith("vrouter-compile-")]
    assert report["marker"]
    assert report["compiled_later"] == []   # each node would compile these itself
    assert report["policy_unlinked"]
    assert report["policy_active"] == 1 and report["policy_linked"]
    assert "policy_stage" in report["compiled_for_policy"]
    entries = report["entries"]
    assert set(compiling.WORKER_SHARE) <= set(entries) and len(entries) > len(compiling.WORKER_SHARE)
    serve_only = ("write_out", "read_tap", "recv_overlay")
    assert set(serve_only) < set(compiling.WORKER_SHARE)
    for name, (signatures, hits, misses) in entries.items():
        if name in serve_only:
            assert (signatures, hits, misses) == (0, 0, 0), (name, "loaded here", entries)
        elif name in compiling.WORKER_SHARE:
            assert (signatures, hits, misses) == (1, 1, 0), (name, "not loaded", entries)
        elif name in compiling.OPTIONAL:   # compiled by dp_policy, after the report's counts
            assert misses == 1 and hits == 0, (name, "compiled at first start", entries)
        else:
            assert (signatures, hits, misses) == (1, 0, 1), (name, entries)
    assert not leftovers, leftovers   # the worker's scratch cache is removed


@numba.njit
def _adds_one(x):
    return x + 1


def test_a_worker_that_fails_ends_and_reports_only_what_it_compiled(tmp_path):
    """The second part cannot compile (a tuple has no + 1): the worker reports the first, then
    ends; waiting for both returns, and nothing is left running."""
    entries = {"fine": (_adds_one, (numba.int64,)),
               "broken": (_adds_one, (numba.types.UniTuple(numba.int64, 2),))}
    worker = compiling._Worker(entries, ("fine", "broken"), str(tmp_path))
    pid = worker.pid
    try:
        worker.wait_for(("fine", "broken"))
        assert worker.done == {"fine"}
    finally:
        worker.end()
    try:
        os.waitpid(pid, os.WNOHANG)
        raise AssertionError("the worker was not reaped")
    except ChildProcessError:
        pass
