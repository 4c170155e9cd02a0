"""Coalescing (GRO) of TCP segments that came over the overlay into one super-frame per write
to a pod, with the kernel's rules (inet_gro_receive, tcp_gro_receive):

- the same flow and pod: Ethernet header, addresses, ports, ACK number, TCP options;
- the same TOS, TTL and DF; IPv4 without options or fragments; with DF clear, IDs incrementing;
- the next sequence number, no SYN/RST/URG, no CWR after the first segment, PSH and FIN only
  on the last; no segment longer than the first, and a shorter one only last;
- a TCP checksum that verifies (the super-frame's is then partial: nobody re-checks it).

It runs over the output rows of a batch. Segments merge only with the datagram right before them
in the same receive buffer row (a GSO train from a vrouter peer is one flow, back to back), so
the payloads move backwards within the row and nothing live is overwritten. The merged frame
keeps the first segment's headers and gets a virtio-net header (TCPV4, gso_size = the first
segment's payload, NEEDS_CSUM) for the pod's kernel.
"""
import numpy as np

from fastpath.checksum import (
    copy_bytes, fold, l4_verifies, pseudo_sum, read16, read32, update16, write16,
)
from fastpath.jit import compiled, internal
from fastpath.layout import (
    ETH_LEN, F_ROWS, GSO_ECN, GSO_NONE, GSO_TCPV4, IN_OVERLAY, M_CSUM_OFFSET, M_CSUM_START,
    M_GSO_SIZE, M_GSO_TYPE, M_HDR_LEN, M_IN_PORT, M_LEN, M_ROW, M_START, M_VFLAGS, O_DONE,
    O_FRAME, O_KIND, O_LEN, O_TARGET, OUT_PORT, VNET_F_NEEDS_CSUM, VXLAN_HEADER_LEN,
)
from fastpath.reasons import R_GRO_BAD_CHECKSUM, R_GRO_COALESCED

IP_MAX = 65535
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_URG = 0x20
TCP_CWR = 0x80


@compiled
def candidate(buf, meta, i, counters):
    """A segment that may start or join a super-frame: from the overlay, TCP over IPv4 without
    options or fragmentation, with payload, no SYN/RST/URG, and a checksum that verifies."""
    if meta[i, M_IN_PORT] != IN_OVERLAY or meta[i, M_GSO_TYPE] != GSO_NONE \
            or meta[i, M_VFLAGS] != 0:
        return False
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    ip = s + ETH_LEN
    if buf[row, ip] != 0x45 or buf[row, ip + 9] != 6 or (read16(buf, row, ip + 6) & 0x3FFF):
        return False
    total = read16(buf, row, ip + 2)
    tcp = ip + 20
    thl = np.int64(buf[row, tcp + 12] >> 4) * 4
    if ETH_LEN + total != length or thl < 20 or 20 + thl >= total:
        return False
    if buf[row, tcp + 13] & (TCP_SYN | TCP_RST | TCP_URG):
        return False
    if not l4_verifies(buf, row, tcp, total - 20, read32(buf, row, ip + 12),
                       read32(buf, row, ip + 16), np.uint8(6)):
        counters[R_GRO_BAD_CHECKSUM] += 1
        return False
    return True


@internal
def _same_bytes(buf, row_a, a, row_b, b, n):
    for k in range(n):
        if buf[row_a, a + k] != buf[row_b, b + k]:
            return False
    return True


@internal
def _mergeable(buf, meta, h, i, count, next_seq, mss):
    """May segment i follow the super-frame headed by frame h (with `count` segments so far)?"""
    hr, hs = meta[h, M_ROW], meta[h, M_START]
    row, s = meta[i, M_ROW], meta[i, M_START]
    hip, ip = hs + ETH_LEN, s + ETH_LEN
    htcp, tcp = hip + 20, ip + 20
    thl = np.int64(buf[row, tcp + 12] >> 4) * 4
    if np.int64(buf[hr, htcp + 12] >> 4) * 4 != thl:
        return False
    if not _same_bytes(buf, hr, hs, row, s, ETH_LEN):              # MACs and ethertype
        return False
    if buf[hr, hip + 1] != buf[row, ip + 1] or buf[hr, hip + 8] != buf[row, ip + 8]:   # TOS, TTL
        return False
    if not _same_bytes(buf, hr, hip + 12, row, ip + 12, 8):        # addresses
        return False
    df = read16(buf, row, ip + 6) & 0x4000
    if df != (read16(buf, hr, hip + 6) & 0x4000):
        return False
    if not df and read16(buf, row, ip + 4) != (read16(buf, hr, hip + 4) + count) & 0xFFFF:
        return False
    if not _same_bytes(buf, hr, htcp, row, tcp, 4) or not _same_bytes(buf, hr, htcp + 8, row, tcp + 8, 4):
        return False                                               # ports, ACK number
    if not _same_bytes(buf, hr, htcp + 20, row, tcp + 20, thl - 20):   # options
        return False
    flags, head_flags = np.int64(buf[row, tcp + 13]), np.int64(buf[hr, htcp + 13])
    if flags & TCP_CWR or (flags ^ head_flags) & ~(TCP_CWR | TCP_FIN | TCP_PSH):
        return False
    payload = read16(buf, row, ip + 2) - 20 - thl
    if payload > mss or read32(buf, row, tcp + 4) != next_seq:
        return False
    return read16(buf, hr, hip + 2) + payload <= IP_MAX


@internal
def _finalize(buf, meta, h, count, mss):
    """Make the head of `count` merged segments a super-frame the pod's kernel accepts."""
    if count < 2:
        return
    row, s = meta[h, M_ROW], meta[h, M_START]
    ip = s + ETH_LEN
    tcp = ip + 20
    thl = np.int64(buf[row, tcp + 12] >> 4) * 4
    total = read16(buf, row, ip + 2)
    meta[h, M_VFLAGS] = VNET_F_NEEDS_CSUM
    meta[h, M_GSO_TYPE] = GSO_TCPV4 | (GSO_ECN if buf[row, tcp + 13] & TCP_CWR else 0)
    meta[h, M_GSO_SIZE] = mss
    meta[h, M_CSUM_START] = ETH_LEN + 20
    meta[h, M_CSUM_OFFSET] = 16
    meta[h, M_HDR_LEN] = ETH_LEN + 20 + thl
    write16(buf, row, tcp + 16, fold(pseudo_sum(read32(buf, row, ip + 12),
                                                 read32(buf, row, ip + 16), 6, total - 20)))


@compiled
def coalesce(buf, meta, out, first_row, counters):
    """Merge runs of output rows [first_row, fill) that are overlay TCP segments for one port."""
    rows = out.rows
    head = -1          # output row of the open super-frame
    # np.int64, not literals: _mergeable and _finalize would be compiled again for the constants
    h = np.int64(-1)   # its frame (meta row)
    count = np.int64(0)
    mss = np.int64(0)
    next_seq = np.int64(0)
    expect = -1        # where the next datagram must start in the head's row to be adjacent
    closed = True      # no more segments may join (PSH/FIN or a short segment merged)
    for r in range(first_row, out.fill[F_ROWS]):
        if rows[r, O_KIND] != OUT_PORT:
            continue
        i = rows[r, O_FRAME]
        if not candidate(buf, meta, i, counters):
            continue
        row, s = meta[i, M_ROW], meta[i, M_START]
        ip = s + ETH_LEN
        tcp = ip + 20
        thl = np.int64(buf[row, tcp + 12] >> 4) * 4
        payload = read16(buf, row, ip + 2) - 20 - thl
        if (head >= 0 and not closed and rows[r, O_TARGET] == rows[head, O_TARGET]
                and row == meta[h, M_ROW] and s - VXLAN_HEADER_LEN == expect
                and _mergeable(buf, meta, h, i, count, next_seq, mss)):
            hs, hlen = meta[h, M_START], meta[h, M_LEN]
            flags = buf[row, tcp + 13]   # read before the move overwrites this segment's headers
            src = s + ETH_LEN + 20 + thl
            copy_bytes(buf, row, hs + hlen, buf, row, src, payload)
            hip = hs + ETH_LEN
            old_total = read16(buf, row, hip + 2)
            write16(buf, row, hip + 2, old_total + payload)
            write16(buf, row, hip + 10, update16(read16(buf, row, hip + 10), old_total,
                                                 old_total + payload))
            buf[row, hip + 20 + 13] |= flags & (TCP_FIN | TCP_PSH)
            meta[h, M_LEN] = hlen + payload
            rows[head, O_LEN] = hlen + payload
            rows[r, O_DONE] = 1
            count += 1
            next_seq = (next_seq + payload) & 0xFFFFFFFF
            expect = s + meta[i, M_LEN]
            closed = (flags & (TCP_FIN | TCP_PSH)) != 0 or payload < mss
            counters[R_GRO_COALESCED] += 1
            continue
        if head >= 0:
            _finalize(buf, meta, h, count, mss)
        head, h, count, mss = r, i, 1, payload
        next_seq = (read32(buf, row, tcp + 4) + payload) & 0xFFFFFFFF
        expect = s + meta[i, M_LEN]
        closed = (buf[row, tcp + 13] & (TCP_FIN | TCP_PSH)) != 0
    if head >= 0:
        _finalize(buf, meta, h, count, mss)
