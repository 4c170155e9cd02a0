"""Hostile traffic for the robustness tests, made fast: numpy builds a million frames in a second
(scapy would take minutes), written as a pcap for tcpreplay, or sent directly.

    python3 -m tests.system.hostile frames IFACE COUNT SEED        # garbage into a pod's eth0
    python3 -m tests.system.hostile datagrams SRC DST:PORT COUNT SEED   # garbage at an overlay port

Garbage is random bytes and mutations (flipped bytes, cut short, lengths that lie) of valid
frames of every kind the node parses: ARP, IPv4 with TCP, UDP, ICMP, options and fragments, VXLAN
around them. It only ever goes into namespaces the tests made, or to loopback.
"""
from __future__ import annotations

import errno
import socket
import struct
import sys
import time

import numpy as np

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)   # Ethernet


def _fold(total: np.ndarray) -> np.ndarray:
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(a: np.ndarray) -> np.ndarray:
    """Big-endian 16-bit words of the rows of a uint8 array (even width)."""
    return (a[:, 0::2].astype(np.uint32) << 8) | a[:, 1::2]


def syn_frames(src_mac: str, dst_mac: str, src_ips, dst_ips, sports, dports) -> np.ndarray:
    """TCP SYNs, one per row of the equally long arrays: 54-byte Ethernet frames with valid
    IPv4 and TCP checksums."""
    n = len(src_ips)
    f = np.zeros((n, 54), dtype=np.uint8)
    f[:, 0:6] = np.frombuffer(bytes.fromhex(dst_mac.replace(":", "")), np.uint8)
    f[:, 6:12] = np.frombuffer(bytes.fromhex(src_mac.replace(":", "")), np.uint8)
    f[:, 12:14] = (0x08, 0x00)
    ip = f[:, 14:34]
    ip[:, 0] = 0x45
    ip[:, 3] = 40                      # total length
    ip[:, 8] = 64                      # TTL
    ip[:, 9] = 6
    for col, values in ((12, src_ips), (16, dst_ips)):
        v = np.asarray(values, dtype=np.uint32)
        for k in range(4):
            ip[:, col + k] = (v >> (24 - 8 * k)) & 0xFF
    ip_sum = _fold(_words(ip).sum(axis=1))
    check = ~ip_sum & 0xFFFF
    ip[:, 10], ip[:, 11] = check >> 8, check & 0xFF
    tcp = f[:, 34:54]
    for col, values in ((0, sports), (2, dports)):
        v = np.asarray(values, dtype=np.uint32)
        tcp[:, col], tcp[:, col + 1] = (v >> 8) & 0xFF, v & 0xFF
    seq = np.random.default_rng(len(src_ips)).integers(0, 1 << 32, n, dtype=np.uint64)
    for k in range(4):
        tcp[:, 4 + k] = (seq >> np.uint64(24 - 8 * k)) & np.uint64(0xFF)
    tcp[:, 12] = 0x50                  # 20-byte header
    tcp[:, 13] = 0x02                  # SYN
    tcp[:, 14], tcp[:, 15] = 0xFA, 0xF0   # window 64240
    pseudo = _words(ip[:, 12:20]).sum(axis=1) + 6 + 20
    tcp_sum = _fold(pseudo + _words(tcp).sum(axis=1))
    check = ~tcp_sum & 0xFFFF
    tcp[:, 16], tcp[:, 17] = check >> 8, check & 0xFF
    return f


def write_pcap(path, frames: np.ndarray) -> None:
    """Fixed-size frames (rows) as a pcap file tcpreplay reads."""
    n, size = frames.shape
    records = np.zeros((n, 16 + size), dtype=np.uint8)
    header = np.array([0, 0, size, size], dtype="<u4").view(np.uint8)
    records[:, :16] = header
    records[:, 16:] = frames
    with open(path, "wb") as out:
        out.write(PCAP_HEADER)
        out.write(records.tobytes())


# --- garbage ----------------------------------------------------------------------------------

def _templates() -> list[bytes]:
    """Valid frames of every kind, as a pod or a peer would send them."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.layers.vxlan import VXLAN
    eth = Ether(src="0a:58:0a:f4:01:02", dst="02:76:0a:f4:01:01")
    ip = IP(src="10.244.1.2", dst="10.244.2.3")
    frames = [
        eth / ARP(op=1, hwsrc="0a:58:0a:f4:01:02", psrc="10.244.1.2", pdst="10.244.1.1"),
        eth / ip / TCP(sport=40000, dport=80, flags="S", options=[("MSS", 1400), ("WScale", 7)]),
        eth / ip / TCP(sport=40000, dport=80, flags="PA") / (b"x" * 200),
        eth / ip / TCP(sport=40000, dport=80, flags="R"),
        eth / ip / UDP(sport=5353, dport=53) / (b"q" * 40),
        eth / ip / ICMP(type=8) / b"ping",
        eth / ip / ICMP(type=3, code=3) / bytes(IP(src="10.244.2.3", dst="10.244.1.2")
                                                / UDP(sport=53, dport=5353)),
        eth / IP(src="10.244.1.2", dst="10.96.0.10", options=[IPOption_RR()]) / UDP(dport=53),
        eth / IP(src="10.244.1.2", dst="10.244.2.3", flags="MF", frag=0) / UDP() / (b"f" * 100),
        eth / IP(src="10.244.1.2", dst="10.244.2.3", frag=20) / (b"g" * 100),
        eth / Dot1Q(vlan=7) / ip / UDP(),
        Ether(src="0a:58:0a:f4:01:02", dst="ff:ff:ff:ff:ff:ff") / IP(dst="255.255.255.255")
        / UDP(sport=67, dport=68),
    ]
    raw = [bytes(f) for f in frames]
    vxlan = [bytes(VXLAN(vni=1, flags=0x08) / Ether(src="0e:76:0a:f4:02:00",
                                                    dst="0e:76:0a:f4:01:00")
                   / IP(src="10.244.2.3", dst="10.244.1.2") / Ether(f[14:]).payload)
             for f in raw if Ether(f).haslayer(IP)]
    return raw, vxlan


def garbage(count: int, seed: int, templates: list[bytes], min_len: int, max_len: int):
    """`count` byte strings: a third random, the rest mutated templates."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=max_len * 64, dtype=np.uint8).tobytes()
    kinds = rng.integers(0, 6, size=count)
    for k in range(count):
        kind = kinds[k]
        if kind < 2:   # random bytes of a random length
            length = int(rng.integers(min_len, max_len))
            start = int(rng.integers(0, len(noise) - length))
            yield noise[start:start + length]
            continue
        frame = bytearray(templates[int(rng.integers(0, len(templates)))])
        if kind <= 3:   # a few bytes flipped
            for _ in range(int(rng.integers(1, 6))):
                frame[int(rng.integers(0, len(frame)))] ^= int(rng.integers(1, 256))
        elif kind == 4:   # cut short
            frame = frame[:int(rng.integers(min_len, len(frame) + 1))]
        else:   # a length field that lies (IPv4 total length, or the VXLAN-inner's)
            at = int(rng.integers(0, max(1, len(frame) - 2)))
            frame[at:at + 2] = int(rng.integers(0, 65536)).to_bytes(2, "big")
        yield bytes(frame)


def send_frames(iface: str, count: int, seed: int, mtu: int = 1450) -> int:
    """Garbage frames up to the interface's MTU (what its driver takes), each sent: a full
    queue (ENOBUFS) is waited out, not skipped."""
    raw, _vxlan = _templates()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        sent = 0
        for frame in garbage(count, seed, raw, 14, 14 + mtu):
            while True:
                try:
                    s.send(frame)
                    sent += 1
                    break
                except OSError as exc:
                    if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        raise
                    time.sleep(0.001)
    return sent


def send_datagrams(source: str, target: str, port: int, count: int, seed: int) -> int:
    _raw, vxlan = _templates()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        sent = 0
        for datagram in garbage(count, seed, vxlan, 0, 1500):
            try:
                s.sendto(datagram, (target, port))
                sent += 1
            except OSError:
                pass
    return sent


if __name__ == "__main__":
    if sys.argv[1] == "frames":
        print(send_frames(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        host, port = sys.argv[3].rsplit(":", 1)
        print(send_datagrams(sys.argv[2], host, int(port), int(sys.argv[4]), int(sys.argv[5])))
