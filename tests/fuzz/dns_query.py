"""Fuzz target: a DNS query as the node's DNS server receives it, over UDP (first byte even) or
TCP (odd), answered from a cluster with Services of every kind (vrouter.model.dns).

Properties: no exception; each query counted once (an rcode, or "dropped"); an answer keeps the
query's ID, has QR set, parses, and fits what the transport allows (512 bytes over UDP, or the
query's EDNS payload size)."""
if __name__ == "__main__":
    from tests.fuzz import runner
    raise SystemExit(runner.main("tests.fuzz.dns_query"))

from pathlib import Path

import dns.exception
import dns.flags
import dns.message

from vrouter.model import config
from vrouter.model.dns import HEADER, UDP_LIMIT, Resolver

ROOT = Path(__file__).resolve().parents[2]

_resolver: list[Resolver] = []


def resolver() -> Resolver:
    if not _resolver:
        _resolver.append(Resolver(config.load(ROOT / "configs" / "services.yaml", check_host=False)))
    return _resolver[0]


def setup() -> None:
    resolver()


def udp_limit(wire: bytes) -> int:
    """What the answer may take over UDP: 512 bytes, or the EDNS payload size it offers."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return UDP_LIMIT
    return max(UDP_LIMIT, min(query.payload, 65535)) if query.edns >= 0 else UDP_LIMIT


def check(data: bytes) -> None:
    if not data:
        return
    udp, wire = data[0] % 2 == 0, data[1:]
    r = resolver()
    before = sum(r.counts.values())
    answer = r.answer(wire, UDP_LIMIT if udp else None)
    assert sum(r.counts.values()) == before + 1, "a query counted other than once"
    if answer is None:   # dropped: too short for a header, or itself a response
        assert len(wire) < HEADER or wire[2] & 0x80, "a query with a header went unanswered"
        return
    assert answer[:2] == wire[:2] and answer[2] & 0x80, "the answer's ID or QR bit"
    assert len(answer) <= (udp_limit(wire) if udp else 65535), f"{len(answer)} bytes"
    reply = dns.message.from_wire(answer)
    if reply.flags & dns.flags.TC:
        assert not reply.answer, "a truncated answer still has records"
