"""Running a fuzz target with atheris (libFuzzer's coverage-guided mutation of the inputs).

Each target module has `check(data: bytes)`, which raises on a finding, and starts with

    if __name__ == "__main__":
        raise SystemExit(runner.main(__spec__.name))

before any other import: `main` imports the module a second time, under atheris'
instrumentation, so that the code it exercises reports its branches to libFuzzer.

    python3 -m tests.fuzz.TARGET [libFuzzer flags] [CORPUS_DIR ...]

Without a corpus directory, new inputs go to a fresh directory under /tmp and the seeds come
from tests/fuzz/corpus/TARGET (libFuzzer writes to the first directory it is given: never give
it the repository's). A finding is saved as crash-* (or -artifact_prefix=DIR/); to replay one:
`python3 -m tests.fuzz.TARGET crash-...`. A tests/fuzz/dicts/TARGET.dict, when there is one, is
the default -dict.

The fast path runs compiled unless NUMBA_DISABLE_JIT=1, which runs its stages as Python so that
atheris sees their branches too (slower, and numpy's indexing checks every access).
NUMBA_BOUNDSCHECK=1 compiles it with bounds checks instead (its own numba cache).
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
DICTS = HERE / "dicts"
# what atheris instruments: vrouter's code, the harness, and dnspython's wire format (PyYAML is
# left out: instrumented, its character-by-character scanner takes a second per cluster file)
INSTRUMENTED = ["vrouter", "tests.harness", "tests.fuzz", "dns"]


def corpus_dir(target: str) -> Path:
    return CORPUS / target


def main(module_name: str) -> int:
    import atheris
    target = module_name.rsplit(".", 1)[-1]
    args = sys.argv[1:]
    if not any(not a.startswith("-") for a in args):
        fresh = tempfile.mkdtemp(prefix=f"vrouter-fuzz-{target}-")
        print(f"new inputs go to {fresh}", file=sys.stderr)
        args += [fresh, str(corpus_dir(target))]
    if (DICTS / f"{target}.dict").exists() and not any(a.startswith("-dict=") for a in args):
        args.insert(0, f"-dict={DICTS / f'{target}.dict'}")
    include = list(INSTRUMENTED)
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        include.append("fastpath")   # compiled, it must not be: numba reads its bytecode
    with atheris.instrument_imports(include=include):
        module = importlib.import_module(module_name)
    if hasattr(module, "setup"):
        module.setup()
    atheris.Setup([sys.argv[0], *args], module.check)
    atheris.Fuzz()
    return 0
