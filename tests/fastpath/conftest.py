import pytest

from vrouter.model import config
from vrouter.node.compiling import ensure_compiled
from vrouter.node.dataplane import Dataplane


@pytest.fixture(scope="session", autouse=True)
def compiled_fast_path():
    """Compile the fast path before any test builds a data plane: the first compile in a fresh
    clone takes half a minute, long enough for a data plane built before it to find its overlay
    peers silent for too long (down) by the time its first batch runs. As `vrouter up` does it
    (shared with a forked worker when the cache is empty), then forward for the demo's tables."""
    ensure_compiled()
    Dataplane(config.load("configs/demo.yaml", check_host=False), "node-a").warm_up()
