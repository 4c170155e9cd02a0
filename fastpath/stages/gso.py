"""Segmentation (GSO) of a super-frame for the overlay, as the kernel's tcp_gso_segment and
__udp_gso_segment do, into VXLAN datagrams laid out back to back in `out.data`: a train the
kernel sends with one UDP_SEGMENT call and the wire carries as ordinary VXLAN datagrams.

TCP: every segment gets the headers of the super-frame with its own sequence number, IPv4 total
length, IPv4 ID (incrementing) and checksums; CWR stays only on the first segment, FIN and PSH
only on the last. UDP (USO): every segment is a datagram of its own (length, checksum, IPv4 ID).
Checksums are complete on the wire: the super-frame's partial checksum is not used.
"""
import numpy as np

from fastpath.checksum import (
    checksum, copy_bytes, l4_checksum, read16, read32, write16, write32,
)
from fastpath.ipv4 import header_len, l4_header_len
from fastpath.jit import compiled, internal
from fastpath.layout import (
    ETH_LEN, F_DATA, F_ROWS, M_GSO_SIZE, M_LEN, M_OUT, M_ROW, M_SOCKET, M_START, O_KIND, O_LEN,
    O_SEGMENT, O_SOCKET, O_SRC, O_START, O_TARGET, O_FRAME, O_DONE, OUT_OVERLAY, SRC_DATA,
    TRAIN_MAX_SEGMENTS, UDP_PAYLOAD_MAX, VXLAN_HEADER_LEN,
)
from fastpath.reasons import R_GSO_SEGMENTS
from fastpath.stages.overlay import write_vxlan_header

TCP_CWR = 0x80
TCP_FIN_PSH = 0x09


@internal
def space_needed(buf, meta, i):
    """Bytes of out.data and output rows that segmenting frame i would take. It runs before the
    frame is checked: for a header that makes no sense it answers (0, 0), and the ingress
    stage drops the frame."""
    row, s = meta[i, M_ROW], meta[i, M_START]
    mss = meta[i, M_GSO_SIZE]
    if mss <= 0 or meta[i, M_LEN] < ETH_LEN + 20:
        return 0, 0
    ip = s + ETH_LEN
    headers = ETH_LEN + header_len(buf, row, ip) + l4_header_len(buf, row, ip)
    payload = meta[i, M_LEN] - headers
    if payload <= 0:
        return 0, 0
    segments = (payload + mss - 1) // mss
    datagram = VXLAN_HEADER_LEN + headers + mss
    if datagram > UDP_PAYLOAD_MAX:   # no segment fits a datagram: it is never segmented (MTU)
        return 0, 0
    per_train = min(TRAIN_MAX_SEGMENTS, UDP_PAYLOAD_MAX // datagram)
    return payload + segments * (VXLAN_HEADER_LEN + headers), (segments + per_train - 1) // per_train


@compiled
def segment(buf, meta, i, vni, out, counters):
    """Cut frame i (TCP or UDP super-frame, inner Ethernet already VTEP to VTEP) into segments
    of M_GSO_SIZE payload bytes, each behind a VXLAN header, and add output rows: one GSO train
    per TRAIN_MAX_SEGMENTS segments (and per 64 KiB)."""
    row, s, length = meta[i, M_ROW], meta[i, M_START], meta[i, M_LEN]
    ip = s + ETH_LEN
    ihl = header_len(buf, row, ip)
    l4 = ip + ihl
    l4_len = l4_header_len(buf, row, ip)
    proto = buf[row, ip + 9]
    headers = ETH_LEN + ihl + l4_len
    mss = meta[i, M_GSO_SIZE]
    payload = length - headers
    segments = (payload + mss - 1) // mss
    datagram = VXLAN_HEADER_LEN + headers + mss
    per_train = min(TRAIN_MAX_SEGMENTS, UDP_PAYLOAD_MAX // datagram)
    src, dst = read32(buf, row, ip + 12), read32(buf, row, ip + 16)
    ip_id = read16(buf, row, ip + 4)
    seq = read32(buf, row, l4 + 4)
    flags = np.int64(buf[row, l4 + 13])
    data = out.data
    row0 = np.int64(0)   # data's only row; a literal 0 would compile its callees again
    pos = out.fill[F_DATA]
    train_start = pos
    in_train = 0
    for k in range(segments):
        chunk = min(mss, payload - k * mss)
        write_vxlan_header(data, 0, pos, vni)
        f = pos + VXLAN_HEADER_LEN           # the segment's Ethernet header
        copy_bytes(data, row0, f, buf, row, s, headers)
        copy_bytes(data, row0, f + headers, buf, row, s + headers + k * mss, chunk)
        sip = f + ETH_LEN
        sl4 = sip + ihl
        write16(data, 0, sip + 2, ihl + l4_len + chunk)
        write16(data, 0, sip + 4, (ip_id + k) & 0xFFFF)
        write16(data, 0, sip + 10, 0)
        write16(data, 0, sip + 10, checksum(data, row0, sip, ihl))
        if proto == 6:
            write32(data, 0, sl4 + 4, (seq + k * mss) & 0xFFFFFFFF)
            seg_flags = flags
            if k > 0:
                seg_flags &= ~TCP_CWR
            if k < segments - 1:
                seg_flags &= ~TCP_FIN_PSH
            data[0, sl4 + 13] = seg_flags
        else:
            write16(data, 0, sl4 + 4, l4_len + chunk)
        write16(data, 0, sl4 + (16 if proto == 6 else 6),
                l4_checksum(data, row0, sl4, l4_len + chunk, src, dst, proto))
        pos = f + headers + chunk
        in_train += 1
        if in_train == per_train or k == segments - 1:
            r = out.fill[F_ROWS]
            out.rows[r, :] = 0
            out.rows[r, O_KIND] = OUT_OVERLAY
            out.rows[r, O_SRC] = SRC_DATA
            out.rows[r, O_START] = train_start
            out.rows[r, O_LEN] = pos - train_start
            out.rows[r, O_SEGMENT] = datagram if in_train > 1 else 0
            out.rows[r, O_SOCKET] = meta[i, M_SOCKET]
            out.rows[r, O_TARGET] = meta[i, M_OUT]
            out.rows[r, O_FRAME] = i
            out.rows[r, O_DONE] = 0
            out.fill[F_ROWS] = r + 1
            train_start = pos
            in_train = 0
    out.fill[F_DATA] = pos
    counters[R_GSO_SEGMENTS] += segments
