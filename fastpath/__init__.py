"""The numba-compiled data plane: the fast path (fastpath.dispatch and its stages: arrays in,
arrays out, no I/O) and the node's compiled I/O edge (fastpath.io).

numba's on-disk cache (cache=True) checks only the source file of the function it compiled, not
the files of the functions that one calls: after an edit of a stage, `forward` would keep the
old stage compiled into it. So the cache lives in a directory named after a hash of every
source file here (stages/ included), and any edit starts a fresh one.
"""
import hashlib
from pathlib import Path

import numba


def _cache_dir() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted(here.rglob("*.py")):
        digest.update(str(source.relative_to(here)).encode() + b"\0" + source.read_bytes())
    base = Path(numba.config.CACHE_DIR) if numba.config.CACHE_DIR else here / "__pycache__"
    return str(base / f"numba-{digest.hexdigest()[:16]}")


# read by each @njit(cache=True) function when its module is imported, i.e. after this line
numba.config.CACHE_DIR = _cache_dir()
