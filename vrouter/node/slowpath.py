"""The slow path: scapy handles what the fast path flags (ARP, traffic to the gateway, ICMP errors).

Sans-IO: frames in, frames out. `handle` returns
  - l2: [(port, frame)] to write to a port as they are (ARP replies and requests), and
  - routed: [frame] IPv4 frames the gateway originates, addressed to the gateway MAC; the data
    plane runs them through the fast path so that they reach local pods or go over the overlay.
"""
from __future__ import annotations

import ipaddress
import logging
import time

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from fastpath.reasons import (
    R_SLOWPATH_IGNORED, R_SLOWPATH_RATELIMITED, R_SLOWPATH_ARP_SPOOFED, R_SLOW_ARP,
    R_SLOW_FRAG_NEEDED, R_SLOW_HOST_UNREACHABLE, R_SLOW_NO_ROUTE, R_SLOW_OUTSIDE_ARP_NEEDED,
    R_SLOW_TO_GATEWAY, R_SLOW_SERVICE_REJECT, R_SLOW_TTL_EXCEEDED,
)
from vrouter.model.config import Cluster

log = logging.getLogger(__name__)

ICMP_ERROR_TYPES = {3, 4, 5, 11, 12}
ICMP_QUOTE_LIMIT = 576 - 20 - 8   # RFC 1812 4.3.2.3: the error datagram stays within 576 bytes
ARP_RETRY = 1.0   # seconds between two ARP requests for the same outside address
ASKED_MAX = 1024  # outside addresses remembered as asked for


class TokenBucket:
    """Caps the slow path's work as a whole, behind the per-port and per-destination budgets
    the fast path enforces (fastpath.budgets), so that nothing can starve the fast path."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.stamp = burst, clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class SlowPath:
    def __init__(self, cluster: Cluster, node_name: str, counters, ports: dict | None = None,
                 rate=3000.0, burst=1500.0, clock=time.monotonic):
        """`ports`: port -> attached local Pod (default: the file's pods, in order)."""
        node = cluster.node(node_name)
        self.gateway = str(node.gateway)
        self.gateway_mac = node.gateway_mac
        self.pod_cidr = node.pod_cidr
        self.pod_mtu = cluster.overlay.pod_mtu
        self.counters = counters
        self.bucket = TokenBucket(rate, burst, clock)
        self.answered: set[int] = set()   # ports whose pod answered the gateway's ARP probe
        self.set_ports(ports if ports is not None else dict(enumerate(cluster.local_pods(node_name))))
        self.neighbours: dict[str, tuple[str, int, float]] = {}   # ip -> (mac, port, last seen)
        # the outside network: our uplink port, where we are a host with the node address
        self.clock = clock
        self.uplink = cluster.max_pods
        self.node_address = str(node.address)
        self.node_mac = node.mac
        self.node_network = cluster.node_network
        self.outside_gateway = cluster.outside_gateway and str(cluster.outside_gateway)
        self.announced: set[str] = set()   # load-balancer addresses we answer ARP for
        self.asked: dict[str, float] = {}   # outside address -> when we last asked with ARP

    def set_ports(self, ports: dict) -> None:
        """The pods attached now (port -> Pod): whom to probe, whose ARP to answer."""
        self.port_ip = {port: str(pod.ip) for port, pod in ports.items()}
        self.mac_of_ip = {str(pod.ip): pod.mac for pod in ports.values()}
        self.answered &= set(ports)

    def announce(self, addresses) -> list:
        """Answer ARP for these external addresses from now on; returns gratuitous ARPs for the
        node address and every address newly ours, so the outside learns them at once."""
        new = set(addresses) - self.announced
        self.announced = set(addresses)
        return [(self.uplink, self._garp(ip)) for ip in [self.node_address, *sorted(new)]]

    def _garp(self, ip: str) -> bytes:
        return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=self.node_mac)
                     / ARP(op=1, hwsrc=self.node_mac, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip))

    # --- entry point ---------------------------------------------------------------------------

    def handle(self, frame: bytes, in_port: int, reason: int):
        """Process one flagged frame. Returns (l2, routed); see the module docstring."""
        if not self.bucket.take():
            self.counters[R_SLOWPATH_RATELIMITED] += 1
            return [], []
        try:
            if reason == R_SLOW_ARP:
                if in_port == self.uplink:
                    return self._arp_outside(frame), []
                return self._arp(frame, in_port), []
            if reason == R_SLOW_OUTSIDE_ARP_NEEDED:
                return self._resolve(frame), []
            routed = self._ip(frame, reason)
            if routed is not None:   # built here: scapy checks field values only as it builds
                routed = [bytes(Ether(dst=self.gateway_mac, src=self.gateway_mac) / p)
                          for p in routed]
        except Exception:   # a malformed frame must never take the node down
            log.debug("slow path could not handle a frame", exc_info=True)
            routed = None
        if routed is None:   # nothing we answer ([] means: handled, nothing to send)
            self.counters[R_SLOWPATH_IGNORED] += 1
            return [], []
        return [], routed

    def probes(self):
        """ARP requests from the gateway to every pod that has not answered yet: [(port, frame)]."""
        return [(port, self._arp_request(ip)) for port, ip in self.port_ip.items()
                if port not in self.answered]

    def _arp_request(self, ip: str) -> bytes:
        return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=self.gateway_mac)
                     / ARP(op=1, hwsrc=self.gateway_mac, psrc=self.gateway, pdst=ip))

    # --- ARP: responder for the gateway and, as ARP suppression, for the pods we know ------------

    def _arp(self, frame: bytes, in_port: int):
        pkt = Ether(frame)
        arp = pkt.getlayer(ARP)
        own_ip = self.port_ip.get(in_port)
        if arp is None or arp.hwtype != 1 or arp.ptype != 0x0800 or own_ip is None:
            self.counters[R_SLOWPATH_IGNORED] += 1
            return []
        if arp.psrc not in (own_ip, "0.0.0.0"):
            self.counters[R_SLOWPATH_ARP_SPOOFED] += 1   # ARP claiming another address
            return []
        if arp.psrc == own_ip:
            self.neighbours[own_ip] = (arp.hwsrc, in_port, time.time())
        if arp.op == 2:
            if arp.pdst == self.gateway:
                self.answered.add(in_port)
            return []
        if arp.op != 1 or arp.psrc == arp.pdst:   # gratuitous ARP: learned above, nothing to say
            return []
        if arp.pdst == self.gateway:
            answer = self.gateway_mac
        elif arp.pdst in self.mac_of_ip and arp.pdst != own_ip:
            answer = self.mac_of_ip[arp.pdst]
        else:
            self.counters[R_SLOWPATH_IGNORED] += 1   # not ours to answer, and we never flood ARP
            return []
        reply = Ether(dst=arp.hwsrc, src=answer) / ARP(
            op=2, hwsrc=answer, psrc=arp.pdst, hwdst=arp.hwsrc, pdst=arp.psrc)
        return [(in_port, bytes(reply))]

    # --- ARP on the outside network: the node as a host there -----------------------------------

    def _arp_outside(self, frame: bytes):
        """Answer requests for the node address and the addresses we announce; the fast path has
        already learned the sender. Requests for other hosts on the bridge are not ours."""
        arp = Ether(frame).getlayer(ARP)
        if arp is None or arp.op != 1 or arp.hwtype != 1 or arp.ptype != 0x0800:
            return []
        if arp.pdst != self.node_address and arp.pdst not in self.announced:
            return []
        reply = Ether(dst=arp.hwsrc, src=self.node_mac) / ARP(
            op=2, hwsrc=self.node_mac, psrc=arp.pdst, hwdst=arp.hwsrc, pdst=arp.psrc)
        return [(self.uplink, bytes(reply))]

    def _resolve(self, frame: bytes):
        """A packet for an outside neighbour we have no MAC for (the destination on the
        outside network, or the gateway beyond it): ask, at most once a second each."""
        dst = Ether(frame)[IP].dst
        if ipaddress.IPv4Address(dst) not in self.node_network:
            if self.outside_gateway is None:
                return []
            dst = self.outside_gateway
        now = self.clock()
        if now - self.asked.get(dst, -ARP_RETRY) < ARP_RETRY:
            return []
        if len(self.asked) >= ASKED_MAX:   # bounded: forget what was asked long enough ago
            self.asked = {ip: t for ip, t in self.asked.items() if now - t < ARP_RETRY}
        self.asked[dst] = now
        request = Ether(dst="ff:ff:ff:ff:ff:ff", src=self.node_mac) / ARP(
            op=1, hwsrc=self.node_mac, psrc=self.node_address, pdst=dst)
        return [(self.uplink, bytes(request))]

    # --- IPv4: the gateway as a host, and the ICMP errors a router owes -------------------------

    def _ip(self, frame: bytes, reason: int):
        ip = Ether(frame).getlayer(IP)
        if ip is None:
            return None
        if reason == R_SLOW_TO_GATEWAY:
            return self._to_gateway(ip)
        if reason == R_SLOW_SERVICE_REJECT:
            return self._refuse(ip)   # a service port without endpoints: refuse, never time out
        if reason == R_SLOW_TTL_EXCEEDED:
            return self._icmp_error(ip, 11, 0)
        if reason == R_SLOW_HOST_UNREACHABLE:
            return self._icmp_error(ip, 3, 1)
        if reason == R_SLOW_NO_ROUTE:
            return self._icmp_error(ip, 3, 0)
        if reason == R_SLOW_FRAG_NEEDED:
            return self._too_big(ip)
        return None

    def _to_gateway(self, ip):
        if ip.haslayer(ICMP) and ip[ICMP].type == 0:
            return []   # an answer to our keepalives: the fast path has marked the peer alive
        if ip.haslayer(ICMP) and ip[ICMP].type == 8:
            echo = ip[ICMP]   # to the gateway, or to the VTEP address (peers' keepalives)
            return [IP(src=ip.dst, dst=ip.src, ttl=64)
                    / ICMP(type=0, id=echo.id, seq=echo.seq) / Raw(bytes(echo.payload))]
        return self._refuse(ip)

    def _refuse(self, ip):
        """TCP RST from the address the client tried, or ICMP port unreachable for UDP."""
        if ip.haslayer(UDP):
            return self._icmp_error(ip, 3, 3)
        if ip.haslayer(TCP) and not ip[TCP].flags.R:
            seg = ip[TCP]
            if seg.flags.A:
                rst = TCP(sport=seg.dport, dport=seg.sport, seq=seg.ack, flags="R")
            else:
                length = len(seg.payload) + (1 if seg.flags.S else 0) + (1 if seg.flags.F else 0)
                rst = TCP(sport=seg.dport, dport=seg.sport, seq=0,
                          ack=(seg.seq + length) & 0xFFFFFFFF, flags="RA")   # sequence space wraps
            return [IP(src=ip.dst, dst=ip.src, ttl=64) / rst]
        return None

    def _too_big(self, ip):
        if ip.flags.DF:
            return self._icmp_error(ip, 3, 4, nexthopmtu=self.pod_mtu)
        # DF clear: the gateway fragments, as a router does (scapy keeps this off the hot path)
        ip.ttl -= 1
        del ip.chksum
        packet = IP(bytes(ip))
        size = (self.pod_mtu - len(packet) + len(packet.payload)) // 8 * 8
        return fragment(packet, fragsize=size)

    def _icmp_error(self, ip, icmp_type: int, code: int, nexthopmtu: int = 0):
        if not self._may_send_error(ip):
            return None
        quote = bytes(ip)[:ICMP_QUOTE_LIMIT]
        # a router answers from the interface the packet came in on
        src = self.node_address if ipaddress.IPv4Address(ip.src) in self.node_network \
            else self.gateway
        return [IP(src=src, dst=ip.src, ttl=64)
                / ICMP(type=icmp_type, code=code, nexthopmtu=nexthopmtu) / Raw(quote)]

    def _may_send_error(self, ip) -> bool:
        """RFC 1812 4.3.2.7: no errors about errors, fragments, broadcasts or bogus sources."""
        if ip.frag != 0:
            return False
        if ip.proto == 1 and ip.haslayer(ICMP) and ip[ICMP].type in ICMP_ERROR_TYPES:
            return False
        src = ipaddress.IPv4Address(ip.src)
        dst = ipaddress.IPv4Address(ip.dst)
        if src.is_unspecified or src.is_multicast or dst.is_multicast or dst.packed == b"\xff" * 4:
            return False
        if dst == self.pod_cidr.broadcast_address:
            return False
        return True
