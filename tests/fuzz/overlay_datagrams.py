"""Fuzz target: VXLAN datagrams from the overlay, single or as a UDP GRO train lying back to back
in one receive buffer row, from a peer node or from an address that is none (the header, the
peer check, the inner frame, completing kernel peers' partial checksums, GRO coalescing)."""
if __name__ == "__main__":
    from tests.fuzz import runner
    raise SystemExit(runner.main("tests.fuzz.overlay_datagrams"))

from tests.fuzz.fastpath_node import Node, run_datagrams
from tests.fuzz.runner import corpus_dir

CORPUS = corpus_dir("overlay_datagrams")
_node: list[Node] = []


def node() -> Node:
    if not _node:
        _node.append(Node("node-b"))
    return _node[0]


def setup() -> None:
    # one seed before fuzzing: the fast path compiles at its first batch (with bounds checks,
    # a minute or more on a busy machine), which libFuzzer's -timeout would count as a hang
    check((CORPUS / "to-service").read_bytes())


def check(data: bytes) -> None:
    run_datagrams(node(), data)
