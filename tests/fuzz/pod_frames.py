"""Fuzz target: what TAP reads hand the fast path, from the pods and the outside network: the
virtio-net header (checksum offload, GSO super-frames) and Ethernet, ARP, IPv4, ICMP, TCP, UDP
behind it, several reads per input (tests.fuzz.fastpath_node has the format and the oracle)."""
if __name__ == "__main__":
    from tests.fuzz import runner
    raise SystemExit(runner.main("tests.fuzz.pod_frames"))

from tests.fuzz.fastpath_node import Node, run_pod_reads

_node: list[Node] = []


def node() -> Node:
    if not _node:
        _node.append(Node("node-a"))
    return _node[0]


def setup() -> None:
    node()


def check(data: bytes) -> None:
    run_pod_reads(node(), data)
