"""The node as a host: packets for its gateway, node or VTEP address.

An ICMP echo request is answered in place (addresses swapped, type 0, TTL 64) and routed back
as the node's own packet: pods pinging their gateway and peers' keepalives never wait for the
slow path. An echo reply to the VTEP address is a peer answering our keepalive: the overlay
stage has marked the peer alive, nothing more to do. Everything else (TCP/UDP to a closed port,
echo with IP options or in fragments) goes to the slow path, which refuses or answers it.
"""
import numpy as np

from fastpath.checksum import read16, read32, update16, write16, write32
from fastpath.ipv4 import header_len
from fastpath.jit import internal
from fastpath.layout import (
    ACT_DROP, ACT_SLOW, ETH_LEN, M_LEN, M_OWN, M_ROW, M_START, P_LOCAL_NET,
)
from fastpath.reasons import R_ECHO_ANSWERED, R_SLOW_TO_GATEWAY, R_TO_NODE
from fastpath.stages import NEXT, finish

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
TTL = 64


@internal
def local_stage(buf, meta, i, params, counters):
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    ip = s + ETH_LEN
    if buf[row, ip + 9] != 1 or header_len(buf, row, ip) != 20 \
            or (read16(buf, row, ip + 6) & 0x3FFF) != 0 or read16(buf, row, ip + 2) < 28:
        return finish(meta, i, ACT_SLOW, 0, R_SLOW_TO_GATEWAY)
    icmp = ip + 20
    kind = buf[row, icmp]
    src, dst = read32(buf, row, ip + 12), read32(buf, row, ip + 16)
    if kind == ICMP_ECHO_REPLY and dst == params[P_LOCAL_NET]:
        return finish(meta, i, ACT_DROP, 0, R_TO_NODE)   # a peer answering our keepalive
    if kind != ICMP_ECHO_REQUEST or src == 0 or src >= 0xE0000000 or s + length > buf.shape[1]:
        return finish(meta, i, ACT_SLOW, 0, R_SLOW_TO_GATEWAY)
    code = np.int64(buf[row, icmp + 1])
    buf[row, icmp] = ICMP_ECHO_REPLY
    write16(buf, row, icmp + 2, update16(read16(buf, row, icmp + 2),
                                         (ICMP_ECHO_REQUEST << 8) | code, code))
    write32(buf, row, ip + 12, dst)   # swapping the addresses leaves the header sum as it was
    write32(buf, row, ip + 16, src)
    ttl = np.int64(buf[row, ip + 8])
    buf[row, ip + 8] = TTL
    write16(buf, row, ip + 10, update16(read16(buf, row, ip + 10), (ttl << 8) | 1, (TTL << 8) | 1))
    meta[i, M_OWN] = 1
    counters[R_ECHO_ANSWERED] += 1
    return NEXT
