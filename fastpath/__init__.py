"""The numba-compiled data plane: the fast path (fastpath.dispatch and its stages: arrays in,
arrays out, no I/O) and the node's compiled I/O edge (fastpath.io).

numba's on-disk cache (cache=True) checks only the source file of the function it compiled, not
the files of the functions that one calls: after an edit of a stage, `forward` would keep the
old stage compiled into it. So the cache lives in a directory named after a hash of every
source file here (stages/ included), and any edit starts a fresh one. A build with bounds
checks (NUMBA_BOUNDSCHECK=1, as the fuzz tests run it) is other machine code from the same
sources, and numba's index would not tell them apart: it has a directory of its own.
"""
import hashlib
import shutil
import time
from pathlib import Path

import numba

STALE_AFTER = 3600   # seconds: a cache of older sources is removed once nothing can still use it


def _cache_dir() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted(here.rglob("*.py")):
        digest.update(str(source.relative_to(here)).encode() + b"\0" + source.read_bytes())
    base = Path(numba.config.CACHE_DIR) if numba.config.CACHE_DIR else here / "__pycache__"
    sources = f"numba-{digest.hexdigest()[:16]}"
    current = base / (sources + ("-boundscheck" if numba.config.BOUNDSCHECK else ""))
    _prune(base, sources)
    return str(current)


def _prune(base: Path, sources: str) -> None:
    """Caches of earlier sources pile up with every edit: remove those untouched for an hour
    (those of these sources, with or without bounds checks, stay)."""
    try:
        for old in base.glob("numba-*"):
            if not old.name.startswith(sources) and time.time() - old.stat().st_mtime > STALE_AFTER:
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass   # a read-only install: nothing to tidy


# read by each cached function (fastpath.jit) when its module is imported, i.e. after this line
numba.config.CACHE_DIR = _cache_dir()


def compiled_marker() -> Path:
    """Exists once `vrouter` compiled this source's fast path into the cache (see
    vrouter.node.compiling.compile_fast_path): later starts only load it."""
    return Path(numba.config.CACHE_DIR) / "compiled"
