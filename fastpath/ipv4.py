"""IPv4 header facts the stages share: sanity, TTL, header lengths, the flow hash, and turning a
partial TCP/UDP checksum into a complete one."""
import numpy as np

from fastpath.checksum import (
    checksum, fold, l4_checksum, l4_verifies, pseudo_sum, read16, read32, update16, write16,
)
from fastpath.jit import inlined, internal
from fastpath.reasons import R_CSUM_PARTIAL_COMPLETED, R_DROP_BAD_IPV4_CHECKSUM, R_DROP_BAD_IPV4_HEADER


@internal
def ipv4_problem(buf, row, ip, avail):
    """-1 if the IPv4 header at `ip` is sane within `avail` bytes, else the drop reason."""
    if avail < 20:
        return R_DROP_BAD_IPV4_HEADER
    vihl = buf[row, ip]
    ihl = np.int64(vihl & 0x0F) * 4
    total = read16(buf, row, ip + 2)
    if (vihl >> 4) != 4 or ihl < 20 or ihl > avail or total < ihl or total > avail:
        return R_DROP_BAD_IPV4_HEADER
    if checksum(buf, row, ip, ihl) != 0:
        return R_DROP_BAD_IPV4_CHECKSUM
    return -1


@inlined
def header_len(buf, row, ip):
    return np.int64(buf[row, ip] & 0x0F) * 4


@internal
def l4_header_len(buf, row, ip):
    """Length of the TCP (data offset) or UDP header of an IPv4 packet; 0 if not TCP/UDP."""
    proto = buf[row, ip + 9]
    l4 = ip + header_len(buf, row, ip)
    if proto == 6:
        return np.int64(buf[row, l4 + 12] >> 4) * 4
    if proto == 17:
        return 8
    return 0


@inlined
def decrement_ttl(buf, row, ip):
    ttl = np.int64(buf[row, ip + 8])
    proto = np.int64(buf[row, ip + 9])
    check = read16(buf, row, ip + 10)
    buf[row, ip + 8] = ttl - 1
    write16(buf, row, ip + 10, update16(check, (ttl << 8) | proto, ((ttl - 1) << 8) | proto))


@internal
def flow_hash(buf, row, ip):
    """Hash of the flow (addresses, protocol, L4 ports unless fragmented): spreads flows over
    the overlay's outer UDP source ports (ECMP entropy, RFC 7348)."""
    proto = np.uint64(buf[row, ip + 9])
    h = np.uint64(read32(buf, row, ip + 12)) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(read32(buf, row, ip + 16)) + (proto << np.uint64(32))
    # all fragments of a datagram hash alike (addresses only): they must take one socket, or a
    # later fragment may overtake the first, which Service NAT needs to see first
    not_fragment = (read16(buf, row, ip + 6) & 0x3FFF) == 0
    if not_fragment and (proto == 6 or proto == 17):
        h ^= np.uint64(read32(buf, row, ip + header_len(buf, row, ip))) << np.uint64(16)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x94D049BB133111EB)
    return np.int64(h >> np.uint64(33))   # the well-mixed high bits


@internal
def complete_checksum(buf, row, ip, counters):
    """Fill in the TCP/UDP checksum of a packet whose field holds only the pseudo-header sum
    (a virtio-net NEEDS_CSUM frame: the sum runs from the L4 header to the end)."""
    proto = buf[row, ip + 9]
    if proto != 6 and proto != 17:
        return
    ihl = header_len(buf, row, ip)
    length = read16(buf, row, ip + 2) - ihl
    write16(buf, row, ip + ihl + (16 if proto == 6 else 6),
            l4_checksum(buf, row, ip + ihl, length, read32(buf, row, ip + 12),
                        read32(buf, row, ip + 16), proto))
    counters[R_CSUM_PARTIAL_COMPLETED] += 1


@internal
def complete_if_partial(buf, row, ip, counters):
    """A Linux VXLAN peer on a veth underlay with checksum offload on (the default) hands over
    inner TCP/UDP checksums that are still partial: the field holds the folded pseudo-header
    sum. Such a field is completed here; a complete checksum that happens to have that value
    verifies and is left alone."""
    proto = buf[row, ip + 9]
    if (proto != 6 and proto != 17) or (read16(buf, row, ip + 6) & 0x3FFF) != 0:
        return
    ihl = header_len(buf, row, ip)
    length = read16(buf, row, ip + 2) - ihl
    if length < (20 if proto == 6 else 8):
        return
    field = read16(buf, row, ip + ihl + (16 if proto == 6 else 6))
    src, dst = read32(buf, row, ip + 12), read32(buf, row, ip + 16)
    if field == 0 or field != fold(pseudo_sum(src, dst, proto, length)):
        return
    if not l4_verifies(buf, row, ip + ihl, length, src, dst, proto):
        complete_checksum(buf, row, ip, counters)
