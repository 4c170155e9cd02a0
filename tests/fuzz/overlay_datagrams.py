"""Fuzz target: VXLAN datagrams from the overlay, single or as a UDP GRO train lying back to back
in one receive buffer row, from a peer node or from an address that is none (the header, the
peer check, the inner frame, completing kernel peers' partial checksums, GRO coalescing)."""
if __name__ == "__main__":
    from tests.fuzz import runner
    raise SystemExit(runner.main("tests.fuzz.overlay_datagrams"))

from tests.fuzz.fastpath_node import Node, run_datagrams

_node: list[Node] = []


def node() -> Node:
    if not _node:
        _node.append(Node("node-b"))
    return _node[0]


def setup() -> None:
    node()


def check(data: bytes) -> None:
    run_datagrams(node(), data)
