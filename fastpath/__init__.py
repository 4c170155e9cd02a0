"""numba-compiled batch data plane: no I/O, no trio, only numpy arrays in and out.

numba's on-disk cache (cache=True) checks only the source file of the function it compiled, not
the files of the functions that one calls: after an edit of nat.py, forward_batch would keep the
old nat_stage compiled into it. So the cache lives in a directory named after a hash of every
source file here, and any edit starts a fresh one.
"""
import hashlib
from pathlib import Path

import numba


def _cache_dir() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted(here.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    base = Path(numba.config.CACHE_DIR) if numba.config.CACHE_DIR else here / "__pycache__"
    return str(base / f"numba-{digest.hexdigest()[:16]}")


# read by each @njit(cache=True) function when its module is imported, i.e. after this line
numba.config.CACHE_DIR = _cache_dir()
