"""Bounded fuzzing in CI: every atheris target for a fixed number of runs (a fixed seed, so a
run is reproducible), the fast path's with numba's bounds checks compiled in; and the
fast-path mutation tests (tests/fastpath/test_fuzz.py) with bounds checks too.

The budget of a target is its parameter below; VROUTER_FUZZ_RUNS=N gives every target N runs
(longer runs: see the README, Tests). Each run is a subprocess: bounds checks must be on before
numba compiles anything, and they get a numba cache of their own (fastpath/__init__.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
FAST_PATH = {"pod_frames", "overlay_datagrams"}
BUDGETS = [   # (target, runs): a few minutes in all on 2 cores, compiling included
    ("pod_frames", 20000),
    ("overlay_datagrams", 20000),
    ("dns_query", 30000),
    ("control_request", 5000),
    ("cni_call", 10000),
    ("cluster_file", 3000),
]
TIMEOUT = 900   # seconds for one subprocess: the first bounds-checked compile takes minutes


def environment(bounds_checked: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    env.pop("NUMBA_DISABLE_JIT", None)
    if bounds_checked:
        env["NUMBA_BOUNDSCHECK"] = "1"
    return env


def report(stderr: str) -> str:
    """The finding in libFuzzer's output (which ends with its dictionary)."""
    for mark in ("=== Uncaught Python exception", "ERROR: libFuzzer", "ERROR:"):
        start = stderr.find(mark)
        if start >= 0:
            return stderr[start:start + 5000]
    return stderr[-5000:]


def runs(budget: int) -> int:
    return int(os.environ.get("VROUTER_FUZZ_RUNS", budget))


@pytest.mark.parametrize("target, budget", BUDGETS, ids=[t for t, _ in BUDGETS])
def test_fuzz_target_finds_nothing(target, budget, tmp_path):
    new = tmp_path / "new"          # libFuzzer writes what it finds interesting to the first
    new.mkdir()                     # directory: never the repository's corpus
    command = [sys.executable, "-m", f"tests.fuzz.{target}", f"-runs={runs(budget)}", "-seed=1",
               "-timeout=60", "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/",
               str(new), str(CORPUS / target)]
    result = subprocess.run(command, cwd=ROOT, env=environment(target in FAST_PATH),
                            capture_output=True, text=True, timeout=TIMEOUT)
    # slow-unit-* only says an input took long on this machine: not a finding
    artifacts = sorted(p.name for p in tmp_path.iterdir()
                       if p.is_file() and not p.name.startswith("slow-unit-"))
    if result.returncode != 0 or artifacts:
        pytest.fail(f"{target} found something (exit {result.returncode}, {artifacts} in "
                    f"{tmp_path}); save the input as {CORPUS / target}/finding-NAME and fix it:\n"
                    + report(result.stderr))
    assert "Done" in result.stderr and f"{runs(budget)} runs" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("target", sorted(FAST_PATH))
def test_a_fast_path_target_also_runs_as_python(target, tmp_path):
    """With NUMBA_DISABLE_JIT=1, as the README runs these targets for coverage of the stages:
    every decorator of fastpath.jit then gives the plain function back (an @internal one once
    made the import fail)."""
    new = tmp_path / "new"
    new.mkdir()
    command = [sys.executable, "-m", f"tests.fuzz.{target}", "-runs=10", "-seed=1",
               f"-artifact_prefix={tmp_path}/", str(new), str(CORPUS / target)]
    env = {**environment(False), "NUMBA_DISABLE_JIT": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, report(result.stderr)
    assert "Done" in result.stderr and "INITED" in result.stderr, result.stderr[-2000:]


def test_fast_path_mutation_tests_pass_with_bounds_checks():
    """tests/fastpath/test_fuzz.py again, compiled with bounds checks: an index out of range
    raises IndexError there, where the normal build reads or writes whatever lies beyond."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/fastpath/test_fuzz.py", "tests/fuzz/test_corpus.py"],
                            cwd=ROOT, env=environment(True), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout[-2000:]


def test_the_bounds_checked_build_is_its_own_and_checks():
    """What the tests above rely on: with NUMBA_BOUNDSCHECK=1 the fast path compiles into a
    cache of its own, and an index past an array's end raises instead of reading beyond it."""
    probe = ("import numba, numpy as np, fastpath\n"
             "from fastpath.checksum import read16\n"
             "print(numba.config.CACHE_DIR)\n"
             "try:\n"
             "    read16(np.zeros((1, 4), np.uint8), 0, 3)\n"
             "    print('unchecked')\n"
             "except IndexError:\n"
             "    print('checked')\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=environment(True),
                            capture_output=True, text=True, timeout=TIMEOUT)
    cache, verdict = result.stdout.split()
    assert cache.endswith("-boundscheck") and verdict == "checked", result.stdout + result.stderr
