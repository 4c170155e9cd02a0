"""Property tests (hypothesis) for every parser, sharing the fuzz targets' checks.

Two kinds of input: well-formed ones built from strategies (a pod's packets as its kernel
sends them, DNS queries, control requests, CNI calls, cluster files), where the properties are
strong (valid in, valid out: checksums stay right through routing, NAT, GSO and GRO; a
super-frame's payload arrives whole on the other node); and those inputs mangled, or plain
bytes, where the targets' checks hold (no exception, one verdict per frame, what is written
parses). Derandomized, so a run is reproducible; no deadline (a slow machine is no failure).
"""
from __future__ import annotations

import copy
import ipaddress
import json
import struct

import dns.flags
import dns.message
import dns.rdatatype
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from fastpath.layout import GSO_TCPV4, GSO_UDP_L4, VNET_F_NEEDS_CSUM
from tests.fastpath.test_gso import A_IP, A_MAC, B_IP, B_MAC, GW_A, REMOTE_IP, as_pod_kernel_sends
from tests.fastpath.test_outside import NODE_IP, OUT_IP
from tests.fuzz import (
    cluster_file, cni_call, control_request, dns_query, overlay_datagrams, pod_frames,
)
from tests.fuzz.fastpath_node import ROOT, encode, run_datagrams, run_pod_reads
from tests.harness import OVERLAY_TARGET
from vrouter.node.dataplane import VNET_HEADER

PROPERTIES = settings(derandomize=True, deadline=None, database=None, max_examples=150,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PARSERS = settings(PROPERTIES, max_examples=300)

# --- the fast path: a pod's packets, as its kernel hands them over ---------------------------------

DESTINATIONS = [B_IP, REMOTE_IP, "10.244.2.2", "10.96.0.100", "10.96.0.11", OUT_IP, NODE_IP,
                "10.244.1.1", "10.244.1.99", "192.0.2.7", "172.18.0.100"]


@st.composite
def pod_packets(draw):
    """(TAP read, payload) of web-1 (port 0): TCP, UDP or ICMP to anywhere interesting, with or
    without checksum offload, sometimes a TSO/USO super-frame."""
    dst = draw(st.sampled_from(DESTINATIONS))
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    offload = proto != "icmp" and draw(st.booleans())
    mss = draw(st.integers(500, 1400)) if offload and draw(st.booleans()) else 0
    payload = draw(st.binary(min_size=mss + 1 if mss else 0,
                             max_size=min(mss * 12, 16000) if mss else 1400))
    sport, dport = draw(st.integers(1, 65535)), draw(st.sampled_from([80, 53, 8080, 5353, 30080,
                                                                      draw(st.integers(1, 65535))]))
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, seq=draw(st.integers(0, 2**32 - 1)),
                 flags=draw(st.sampled_from(["S", "A", "PA", "FA", "SA", "R", "FPA"])))
    elif proto == "udp":
        l4 = UDP(sport=sport, dport=dport)
    else:
        l4 = ICMP(type=draw(st.sampled_from([8, 0, 3, 11])), id=sport)
    dst_mac = B_MAC if dst == B_IP and draw(st.booleans()) else GW_A
    pkt = (Ether(src=A_MAC, dst=dst_mac)
           / IP(src=A_IP, dst=dst, ttl=draw(st.integers(1, 255)), tos=draw(st.integers(0, 255)),
                id=draw(st.integers(0, 65535)), flags="DF" if draw(st.booleans()) else 0)
           / l4 / payload)
    if offload:
        kind = GSO_TCPV4 if proto == "tcp" else GSO_UDP_L4
        return as_pod_kernel_sends(pkt, mss, kind), payload
    return bytes(10) + bytes(pkt), payload


def ones(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def assert_l4_right(frame: bytes, vnet: bytes = bytes(10)) -> None:
    """A valid packet stays valid: its TCP/UDP/ICMP checksum verifies, or, when the frame goes
    to a TAP with NEEDS_CSUM, holds exactly the pseudo-header sum the receiver completes."""
    if int.from_bytes(frame[12:14], "big") != 0x0800:
        return
    ip = frame[14:]
    ihl, total, proto = (ip[0] & 0xF) * 4, int.from_bytes(ip[2:4], "big"), ip[9]
    if int.from_bytes(ip[6:8], "big") & 0x3FFF:
        return   # a fragment: its datagram's checksum covers the others too
    segment = ip[ihl:total]
    pseudo = ip[12:20] + bytes([0, proto]) + len(segment).to_bytes(2, "big")
    if VNET_HEADER.unpack(vnet)[0] & VNET_F_NEEDS_CSUM:
        field = 16 if proto == 6 else 6
        assert int.from_bytes(segment[field:field + 2], "big") == ones(pseudo), "partial"
    elif proto in (6, 17):
        if proto == 17 and segment[6:8] == b"\0\0":
            return
        assert ones(pseudo + segment) == 0xFFFF, f"protocol {proto} checksum"
    elif proto == 1:
        assert ones(segment) == 0xFFFF, "ICMP checksum"


@PROPERTIES
@given(st.lists(pod_packets(), min_size=1, max_size=4))
def test_valid_pod_packets_come_out_valid(packets):
    emitted = run_pod_reads(pod_frames.node(), encode([(0, read) for read, _ in packets]))
    for e in emitted:
        if e.target >= OVERLAY_TARGET:
            assert_l4_right(e.data[8:])
        else:
            assert_l4_right(e.data, e.vnet)


@st.composite
def to_client(draw):
    """(TAP read, payload) of web-1 to client-1 on node-b (no policy isolates it): TCP or UDP that fits the overlay, or a
    TSO/USO super-frame of segments that do."""
    tcp = draw(st.booleans())
    offload = draw(st.booleans())
    mss = draw(st.integers(500, 1400)) if offload and draw(st.booleans()) else 0
    payload = draw(st.binary(min_size=mss + 1 if mss else 0,
                             max_size=min(mss * 20, 20000) if mss else 1400))
    l4 = (TCP(sport=draw(st.integers(1, 65535)), dport=5201, flags=draw(st.sampled_from(["A", "PA"])),
              seq=draw(st.integers(0, 2**32 - 1)), ack=1) if tcp
          else UDP(sport=draw(st.integers(1, 65535)), dport=5201))
    pkt = Ether(src=A_MAC, dst=GW_A) / IP(src=A_IP, dst="10.244.2.2", flags="DF") / l4 / payload
    if offload:
        return as_pod_kernel_sends(pkt, mss, GSO_TCPV4 if tcp else GSO_UDP_L4), payload
    return bytes(10) + bytes(pkt), payload


def l4_payload(frame: bytes) -> bytes:
    ip = frame[14:]
    ihl, total = (ip[0] & 0xF) * 4, int.from_bytes(ip[2:4], "big")
    l4 = (ip[ihl + 12] >> 4) * 4 if ip[9] == 6 else 8
    return ip[ihl + l4:total]


@PROPERTIES
@given(to_client(), st.booleans())
def test_a_pods_payload_crosses_the_overlay_whole(packet, as_train):
    """web-1 on node-a to client-1 on node-b: segmented into VXLAN datagrams (GSO), received as one
    GRO train or one by one, coalesced (GRO): the same bytes arrive, with valid checksums."""
    read, payload = packet
    sent = run_pod_reads(pod_frames.node(), encode([(0, read)]))
    datagrams = [e.data for e in sent]
    assert datagrams and all(e.target == OVERLAY_TARGET for e in sent), sent
    if as_train:
        got = run_datagrams(overlay_datagrams.node(), encode([(0, d) for d in datagrams]))
    else:
        got = []
        for d in datagrams:
            got += run_datagrams(overlay_datagrams.node(), encode([(0, d)]))
    assert got and all(e.target == 0 for e in got), got   # client-1's port
    for e in got:
        assert_l4_right(e.data, e.vnet)
    assert b"".join(l4_payload(e.data) for e in got) == payload


@PROPERTIES
@given(st.lists(pod_packets(), min_size=1, max_size=3), st.data())
def test_mangled_pod_packets_are_each_counted_once(packets, data):
    reads = []
    for read, _payload in packets:
        raw = bytearray(read)
        for _ in range(data.draw(st.integers(1, 6))):
            k = data.draw(st.integers(0, min(len(raw) - 1, 90)))
            raw[k] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            raw = raw[:data.draw(st.integers(0, len(raw)))]
        reads.append((data.draw(st.integers(0, 2)), bytes(raw)))
    run_pod_reads(pod_frames.node(), encode(reads))   # checks accounting and what is written


@PROPERTIES
@given(st.binary(max_size=3000))
def test_any_bytes_from_pods_and_the_overlay(data):
    pod_frames.check(data)
    overlay_datagrams.check(data)


@PROPERTIES
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=200)), min_size=1, max_size=8),
       st.binary(min_size=8, max_size=8))
def test_datagrams_with_any_vxlan_header_and_inner_bytes(items, header):
    inner = bytes(Ether(src="0e:76:0a:f4:01:00", dst="0e:76:0a:f4:02:00")
                  / IP(src=A_IP, dst="10.244.2.3", ttl=63) / UDP(sport=1, dport=2))
    overlay_datagrams.check(encode([(s, (header if s else bytes(VXLAN(vni=1, flags=8))) + inner
                                     + body) for s, body in items]))


# --- DNS -------------------------------------------------------------------------------------------

NAMES = ["web.default.svc.cluster.local", "web-pods.default.svc.cluster.local",
         "_http._tcp.web.default.svc.cluster.local", "docs.default.svc.cluster.local",
         "10-244-1-2.default.pod.cluster.local", "2.1.244.10.in-addr.arpa", "cluster.local",
         "100.0.96.10.in-addr.arpa", "svc.cluster.local", "example.org", "1.244.10.in-addr.arpa"]


@st.composite
def dns_queries(draw):
    name = draw(st.sampled_from(NAMES) | st.lists(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20),
        min_size=1, max_size=6).map(lambda labels: ".".join(labels + ["cluster.local"])))
    rdtype = draw(st.sampled_from(["A", "AAAA", "SRV", "PTR", "CNAME", "SOA", "ANY", "TXT", "NS"]))
    query = dns.message.make_query(name, rdtype, rdclass=draw(st.sampled_from(["IN", "CH"])),
                                   use_edns=draw(st.sampled_from([None, 0])),
                                   payload=draw(st.integers(0, 65535)))
    query.id = draw(st.integers(0, 65535))
    query.flags |= draw(st.sampled_from([0, dns.flags.CD, dns.flags.AD]))
    query.set_opcode(draw(st.sampled_from([0, 0, 0, 1, 2, 4])))
    return query.to_wire()


@PARSERS
@given(dns_queries(), st.booleans())
def test_dns_queries_are_answered_within_the_limits(wire, tcp):
    dns_query.check(bytes([tcp]) + wire)
    answer = dns_query.resolver().answer(wire, None if tcp else 512)
    reply, query = dns.message.from_wire(answer), dns.message.from_wire(wire)
    assert reply.id == query.id and reply.question == query.question


@PARSERS
@given(dns_queries(), st.data())
def test_mangled_and_random_dns_queries(wire, data):
    raw = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 5))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    dns_query.check(bytes([data.draw(st.integers(0, 1))]) + bytes(raw))
    dns_query.check(data.draw(st.binary(max_size=600)))


# --- the control socket ------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@st.composite
def control_requests(draw):
    request = {"cmd": draw(st.sampled_from(["status", "later", "fails", "trace", "nothing"])
                           | JSON)}
    fields = {"from": st.sampled_from(["pod", "outside", "overlay"]) | JSON,
              "pod": st.sampled_from(["svc-web-1", "svc-web-2", "web-1"]) | JSON,
              "dst": st.sampled_from(["10.96.0.100", "10.244.2.3", "172.18.0.2", "10.244.1.50",
                                      "not an address"]) | JSON,
              "proto": st.sampled_from(["tcp", "udp", "icmp", "sctp"]) | JSON,
              "sport": st.integers(-5, 70000) | JSON, "dport": st.integers(-5, 70000) | JSON,
              "source": st.sampled_from(["127.0.0.22", "127.0.0.99"]) | JSON,
              "datagram": st.binary(max_size=80).map(bytes.hex) | JSON}
    for key in draw(st.lists(st.sampled_from(sorted(fields)), unique=True)):
        request[key] = draw(fields[key])
    return request


@PARSERS
@given(control_requests(), st.booleans())
def test_control_requests_get_one_answer(request, newline):
    control_request.check(json.dumps(request).encode() + (b"\n" if newline else b""))


@PARSERS
@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_on_the_control_socket(data):
    control_request.check(data)


# --- CNI -----------------------------------------------------------------------------------------------

@st.composite
def cni_calls(draw):
    text = st.text(max_size=30).map(lambda s: s.replace("\0", ""))
    env = [draw(st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add"])),
           draw(st.sampled_from(["0123456789abcdef"]) | text),
           draw(st.sampled_from(["/proc/self/ns/net", "/nonexistent"]) | text),
           draw(st.sampled_from(["eth0", "net1"]) | text),
           draw(st.sampled_from(["", "K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"]) | text)]
    conf = {"cniVersion": draw(st.sampled_from(["1.0.0", "1.1.0", "0.4.0"]) | JSON),
            "name": draw(st.sampled_from(["vrouter"]) | JSON), "type": "vrouter-cni",
            "cluster": draw(st.sampled_from(["fz", "other", "../fz", "FZ"]) | JSON),
            "node": draw(st.sampled_from(["node-a", "node-b"]) | JSON)}
    for key in draw(st.lists(st.sampled_from(["ipam", "prevResult", "cni.dev/valid-attachments",
                                              "cni.dev/attachments"]), unique=True)):
        conf[key] = draw(JSON | st.just({"interfaces": [{"name": "eth0"}], "ips": []}))
    if draw(st.booleans()):
        del conf[draw(st.sampled_from(sorted(conf)))]
    stdin = json.dumps(conf).encode() if draw(st.booleans()) else draw(st.binary(max_size=60))
    return b"\0".join(e.encode("utf-8", "surrogateescape") for e in env) + b"\0" + stdin


@PARSERS
@given(cni_calls())
def test_cni_calls_succeed_or_give_a_cni_error(data):
    cni_call.check(data)


# --- cluster files ----------------------------------------------------------------------------------

SEEDS = {name: list(yaml.safe_load_all((ROOT / "configs" / f"{name}.yaml").read_text()))
         for name in ("demo", "services", "policies")}
VALUES = (JSON | st.sampled_from(["10.244.0.0/16", "10.244.1.0/24", "10.244.1.7", "127.0.0.1",
                                  "0a:58:0a:f4:01:09", "node-a", "web-1", "default", "TCP", "UDP",
                                  "None", "web\n", "Service", "v1", -1, 0, 65536, 2**63])
          | st.dates())


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for k, v in enumerate(value):
            yield from _paths(v, path + (k,))


@st.composite
def cluster_texts(draw):
    """A seed cluster file with a few of its values replaced, keys dropped or added."""
    docs = copy.deepcopy(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(docs) if p]
        path = draw(st.sampled_from(paths))
        parent = docs
        for key in path[:-1]:
            parent = parent[key]
        what = draw(st.sampled_from(["replace", "drop", "add"]))
        if what == "replace":
            parent[path[-1]] = draw(VALUES)
        elif what == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "ip", "name", "ports", "labels", "kind"]))] = \
                draw(VALUES)
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[0]) if parent else draw(VALUES))
    return yaml.safe_dump_all(docs)


@PARSERS
@given(cluster_texts())
def test_cluster_files_parse_or_fail_with_a_config_error(text):
    cluster_file.check(text.encode())


@PARSERS
@given(st.text(max_size=400))
def test_any_text_as_a_cluster_file(text):
    cluster_file.check(text.encode("utf-8", "surrogatepass"))


def test_the_demo_cluster_parses_and_holds_its_invariants():
    """The checks are not vacuous: a real cluster file passes them, with its pods."""
    from vrouter.model import config
    cluster = config.load(ROOT / "configs" / "demo.yaml", check_host=False)
    cluster_file.check_cluster(cluster)
    assert len(cluster.pods) >= 4 and ipaddress.IPv4Address(A_IP) in {p.ip for p in cluster.pods}
