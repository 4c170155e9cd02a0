"""Writes the seed corpus (tests/fuzz/corpus/TARGET/NAME), deterministically:

    python3 -m tests.fuzz.make_corpus

One seed per kind of input each parser has a branch for: the fuzzers start from them, the
property tests and tests/fuzz/test_corpus.py run every one. Files whose name starts with
`crash-` or `finding-` are reproducers of what a fuzzer found: this script leaves them alone.
"""
from __future__ import annotations

import json
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rdatatype
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fastpath.layout import GSO_UDP_L4
from tests.fastpath.test_gso import (
    A_IP, A_MAC, B_IP, B_MAC, GW_A, REMOTE_IP, as_pod_kernel_sends, superframe,
)
from tests.fastpath.test_outside import LB_IP, NODE_IP, NODE_MAC, OUT_IP, OUT_MAC
from tests.fuzz.fastpath_node import encode
from tests.harness import process_tap, still_clock
from vrouter.node.dataplane import Dataplane

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
VIP, EMPTY_VIP = "10.96.0.100", "10.96.0.11"
CLIENT = "10.244.2.2"
VTEP_A, VTEP_B = "0e:76:0a:f4:01:00", "0e:76:0a:f4:02:00"
NO_VNET = bytes(10)
POD_A, POD_B, UPLINK = 0, 1, 2           # pod_frames selectors
FROM_PEER, FROM_STRANGER = 0, 1          # overlay_datagrams selectors


def plain(pkt) -> bytes:
    return NO_VNET + bytes(pkt)


def pod(dst, l4, src=A_IP, src_mac=A_MAC, dst_mac=GW_A, **ip):
    return Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst, **ip) / l4


def pod_frames() -> dict[str, bytes]:
    syn = TCP(sport=40000, dport=80, flags="S")
    return {
        "bridged-udp": encode([(POD_A, plain(pod(B_IP, UDP(sport=1, dport=2) / b"hi",
                                                 dst_mac=B_MAC)))]),
        "routed-tcp-partial-checksum": encode([(POD_A, as_pod_kernel_sends(
            pod(B_IP, TCP(sport=5, dport=8080, flags="S") / b"x")))]),
        "tcp-superframe-to-node-b": encode([(POD_A, superframe(bytes(range(256)) * 20, 1386)[1])]),
        "tcp-superframe-to-local-pod": encode([(POD_A, superframe(b"s" * 4000, 1386,
                                                                  dst=B_IP)[1])]),
        "udp-superframe": encode([(POD_A, as_pod_kernel_sends(
            pod(REMOTE_IP, UDP(sport=7000, dport=7001) / (b"u" * 3000)), 1000, GSO_UDP_L4))]),
        "arp-for-gateway": encode([(POD_A, plain(Ether(src=A_MAC, dst="ff:ff:ff:ff:ff:ff")
                                                 / ARP(op=1, hwsrc=A_MAC, psrc=A_IP,
                                                       pdst="10.244.1.1")))]),
        "ping-gateway": encode([(POD_A, plain(pod("10.244.1.1", ICMP(id=1, seq=1) / b"p")))]),
        "tcp-to-gateway": encode([(POD_A, plain(pod("10.244.1.1", syn)))]),
        "ttl-expires": encode([(POD_A, plain(pod(REMOTE_IP, UDP(sport=1, dport=2), ttl=1)))]),
        "unused-address": encode([(POD_A, plain(pod("10.244.1.99", UDP(sport=1, dport=2))))]),
        "no-route": encode([(POD_A, plain(pod("192.0.2.1", UDP(sport=1, dport=2))))]),
        "too-big-for-overlay": encode([(POD_A, plain(pod(REMOTE_IP, UDP(sport=1, dport=2)
                                                         / (b"b" * 1440), flags="DF")))]),
        "fragments": encode([(POD_A, plain(pod(REMOTE_IP, UDP(sport=1, dport=2) / (b"f" * 40),
                                               flags="MF", id=9))),
                             (POD_A, plain(pod(REMOTE_IP, b"g" * 16, frag=6, id=9, proto=17)))]),
        "ip-options": encode([(POD_A, plain(pod(B_IP, UDP(sport=1, dport=2),
                                                options=[IPOption_RR()])))]),
        "ipv6": encode([(POD_A, plain(Ether(src=A_MAC, dst=B_MAC, type=0x86DD)
                                      / (b"\x60" + bytes(39))))]),
        "clusterip-and-reply": encode([
            (POD_A, plain(pod(VIP, syn))),
            (POD_B, plain(pod(A_IP, TCP(sport=8080, dport=40000, flags="SA"), src=B_IP,
                              src_mac=B_MAC)))]),
        "clusterip-udp": encode([(POD_A, plain(pod(VIP, UDP(sport=40000, dport=53) / b"q")))]),
        "service-without-endpoints": encode([(POD_A, plain(pod(EMPTY_VIP, syn)))]),
        "policy-refused": encode([(POD_A, plain(pod(B_IP, TCP(sport=1, dport=8080, flags="S"),
                                                    dst_mac=B_MAC)))]),
        "to-outside-masquerade": encode([(POD_A, plain(pod(OUT_IP, syn)))]),
        "icmp-error-about-a-connection": encode([
            (POD_A, plain(pod(VIP, UDP(sport=40001, dport=53) / b"q"))),
            (POD_B, plain(pod(A_IP, ICMP(type=3, code=3)
                              / IP(src=A_IP, dst=B_IP) / UDP(sport=40001, dport=5353),
                              src=B_IP, src_mac=B_MAC)))]),
        "outside-nodeport": encode([(UPLINK, plain(Ether(src=OUT_MAC, dst=NODE_MAC)
                                                   / IP(src=OUT_IP, dst=NODE_IP)
                                                   / TCP(sport=4000, dport=30080, flags="S")))]),
        "outside-arp-for-lb": encode([(UPLINK, plain(Ether(src=OUT_MAC, dst="ff:ff:ff:ff:ff:ff")
                                                     / ARP(op=1, hwsrc=OUT_MAC, psrc=OUT_IP,
                                                           pdst=LB_IP)))]),
        "outside-ping-node": encode([(UPLINK, plain(Ether(src=OUT_MAC, dst=NODE_MAC)
                                                    / IP(src=OUT_IP, dst=NODE_IP) / ICMP()))]),
        "outside-to-pod": encode([(UPLINK, plain(Ether(src=OUT_MAC, dst=NODE_MAC)
                                                 / IP(src=OUT_IP, dst=A_IP)
                                                 / UDP(sport=9, dport=9)))]),
        "runt": encode([(POD_A, NO_VNET + b"\x01\x02\x03")]),
    }


def overlay_datagrams() -> dict[str, bytes]:
    node_a = Dataplane(_cluster(), "node-a", clock=still_clock())
    train = [e.data for e in process_tap(node_a, 0, [superframe(bytes(range(256)) * 24,
                                                                  1386)[1]])]
    inner = Ether(src=VTEP_A, dst=VTEP_B)
    udp = bytes(VXLAN(vni=1, flags=0x08) / inner / IP(src=A_IP, dst=REMOTE_IP, ttl=63)
                / UDP(sport=1, dport=53) / b"dns?")
    partial = as_pod_kernel_sends(inner / IP(src=A_IP, dst=CLIENT, ttl=63)
                                  / UDP(sport=1, dport=53) / b"kernel vtep")[10:]
    keepalive = bytes(VXLAN(vni=1, flags=0x08) / inner / IP(src="10.244.1.0", dst="10.244.2.0")
                      / ICMP(id=0x7672, seq=0))
    return {
        "gro-train": encode([(FROM_PEER, d) for d in train]),
        "single-udp": encode([(FROM_PEER, udp)]),
        "kernel-peer-partial-checksum": encode([(FROM_PEER, bytes(VXLAN(vni=1, flags=0x08))
                                                 + partial)]),
        "keepalive": encode([(FROM_PEER, keepalive)]),
        "icmp-error-to-pod": encode([(FROM_PEER, bytes(
            VXLAN(vni=1, flags=0x08) / inner / IP(src=A_IP, dst=REMOTE_IP, ttl=63)
            / ICMP(type=3, code=3) / IP(src=REMOTE_IP, dst=A_IP) / UDP(sport=53, dport=1)))]),
        "to-service": encode([(FROM_PEER, bytes(
            VXLAN(vni=1, flags=0x08) / inner / IP(src=A_IP, dst="10.244.2.3", ttl=63)
            / TCP(sport=40000, dport=8080, flags="S")))]),
        "bad-vni": encode([(FROM_PEER, udp[:4] + b"\x00\x00\x07" + udp[7:])]),
        "stranger": encode([(FROM_STRANGER, udp)]),
        "truncated": encode([(FROM_PEER, udp[:10]), (FROM_PEER, b"")]),
    }


def _cluster():
    from tests.fuzz.fastpath_node import cluster
    return cluster()


def dns_query() -> dict[str, bytes]:
    def query(name, rdtype, transport=0, **kw):
        q = dns.message.make_query(name, rdtype, **kw)
        q.id = 4660
        return bytes([transport]) + q.to_wire()
    response = dns.message.make_query("web.default.svc.cluster.local", "A")
    response.flags |= dns.flags.QR
    response.id = 4661
    return {
        "a-service": query("web.default.svc.cluster.local", "A"),
        "a-service-tcp": query("web.default.svc.cluster.local", "A", transport=1),
        "headless": query("web-pods.default.svc.cluster.local", "A"),
        "srv": query("_http._tcp.web.default.svc.cluster.local", "SRV"),
        "cname": query("docs.default.svc.cluster.local", "A"),
        "ptr": query("2.1.244.10.in-addr.arpa", "PTR"),
        "reverse-zone": query("1.244.10.in-addr.arpa", "SOA"),
        "any-edns": query("cluster.local", "ANY", use_edns=0, payload=4096),
        "nxdomain": query("nothing.default.svc.cluster.local", "A"),
        "refused": query("example.org", "A"),
        "pod": query("10-244-1-2.default.pod.cluster.local", "A"),
        "a-response": bytes([0]) + response.to_wire(),
        "short": bytes([0]) + b"\x12\x34\x01",
        "garbage": bytes([0]) + bytes(range(40)),
    }


def control_request() -> dict[str, bytes]:
    def line(obj):
        return json.dumps(obj).encode() + b"\n"
    return {
        "status": line({"cmd": "status"}),
        "trace-pod": line({"cmd": "trace", "from": "pod", "pod": "svc-web-1", "dst": VIP,
                           "proto": "tcp", "sport": 40000, "dport": 80}),
        "trace-outside": line({"cmd": "trace", "from": "outside", "dst": "172.18.0.2",
                               "proto": "udp", "dport": 30080}),
        "trace-overlay": line({"cmd": "trace", "from": "overlay", "source": "127.0.0.22",
                               "datagram": bytes(VXLAN(vni=1, flags=0x08) / Ether()
                                                 / IP(src="10.244.2.2", dst="10.244.1.2")
                                                 / ICMP()).hex()}),
        "trace-icmp": line({"cmd": "trace", "from": "pod", "pod": "svc-web-1",
                            "dst": "10.244.2.3", "proto": "icmp"}),
        "async": line({"cmd": "later", "x": [1, 2, {"y": None}]}),
        "fails": line({"cmd": "fails"}),
        "unknown": line({"cmd": "nothing"}),
        "not-an-object": b"[1, 2, 3]\n",
        "not-json": b"{cmd: status\n",
        "empty": b"",
    }


def cni_call() -> dict[str, bytes]:
    conf = {"cniVersion": "1.1.0", "name": "vrouter", "type": "vrouter-cni", "cluster": "fz",
            "node": "node-a"}

    def call(command, stdin, netns="/proc/self/ns/net", args="K8S_POD_NAME=web;IgnoreUnknown=1"):
        env = [command, "0123456789abcdef", netns, "eth0", args]
        return b"\0".join(v.encode() for v in env) + b"\0" + json.dumps(stdin).encode()
    prev = {"interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:05"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1"}]}
    return {
        "add": call("ADD", conf),
        "add-ipam": call("ADD", {**conf, "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"}}),
        "add-1.0.0": call("ADD", {**conf, "cniVersion": "1.0.0"}),
        "add-no-netns": call("ADD", conf, netns="/nonexistent/netns"),
        "del": call("DEL", conf),
        "check": call("CHECK", {**conf, "prevResult": prev}),
        "gc": call("GC", {**conf, "cni.dev/valid-attachments": [
            {"containerID": "0123456789abcdef", "ifname": "eth0"}]}),
        "status": call("STATUS", conf),
        "version": call("VERSION", {"cniVersion": "1.0.0"}),
        "unknown-cluster": call("ADD", {**conf, "cluster": "other"}),
        "old-version": call("ADD", {**conf, "cniVersion": "0.4.0"}),
    }


def cluster_file() -> dict[str, bytes]:
    root = HERE.parent.parent
    seeds = {p.stem: p.read_bytes() for p in sorted((root / "configs").glob("*.yaml"))}
    demo = (root / "configs" / "demo.yaml").read_bytes()
    seeds["with-manifest"] = demo + b"\n#manifest\n" + (
        b"apiVersion: v1\nkind: Service\nmetadata: {name: m}\n"
        b"spec: {selector: {app: web}, ports: [{port: 80}]}\n")
    return seeds


def dictionaries() -> dict[str, list[str]]:
    """libFuzzer dictionaries (-dict): the words the parsers look for."""
    config_words = ["cluster:", "nodes:", "pods:", "name:", "podCIDR:", "serviceCIDR:",
                    "nodeNetwork:", "overlay:", "vni:", "port:", "mtu:", "underlay:", "vtepMAC:",
                    "address:", "ip:", "mac:", "netns:", "labels:", "ports:", "namespace:",
                    "apiVersion: v1", "kind: Service", "kind: Pod", "kind: Namespace",
                    "kind: NetworkPolicy", "kind: List", "networking.k8s.io/v1", "metadata:",
                    "spec:", "selector:", "type: NodePort", "type: LoadBalancer",
                    "clusterIP: None", "targetPort:", "nodePort:", "protocol: UDP",
                    "podSelector:", "namespaceSelector:", "ipBlock:", "except:", "ingress:",
                    "egress:", "policyTypes:", "matchLabels:", "matchExpressions:", "operator:",
                    "endPort:", "externalTrafficPolicy: Local", "sessionAffinity: ClientIP",
                    "dns:", "enabled: false", "masquerade:", "maxPodsPerNode:", "---", "\n- ",
                    "{", "}", "[", "]", "10.244.0.0/16", "127.0.0.1", "0.0.0.0/0", "\"", "&a", "*a"]
    cni_words = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "cniVersion", "1.0.0",
                 "1.1.0", "cluster", "node", "ipam", "type", "prevResult", "interfaces", "ips",
                 "cni.dev/valid-attachments", "containerID", "ifname", "K8S_POD_NAME=",
                 "K8S_POD_NAMESPACE=", "fz", "node-a", "/proc/self/ns/net"]
    control_words = ["cmd", "status", "trace", "later", "fails", "from", "pod", "outside",
                     "overlay", "dst", "proto", "tcp", "udp", "icmp", "sport", "dport",
                     "source", "datagram", "svc-web-1", "10.96.0.100", "127.0.0.22"]
    return {"cluster_file": config_words, "cni_call": cni_words,
            "control_request": control_words}


def _dict_entry(word: str) -> str:
    """A libFuzzer dictionary entry: quoted, with \\, \\" and \\xHH escapes only."""
    out = []
    for byte in word.encode():
        char = chr(byte)
        out.append("\\" + char if char in '"\\' else char if 32 <= byte < 127 else f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def main() -> None:
    for target, seeds in (("pod_frames", pod_frames()), ("overlay_datagrams", overlay_datagrams()),
                          ("dns_query", dns_query()), ("control_request", control_request()),
                          ("cni_call", cni_call()), ("cluster_file", cluster_file())):
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if not old.name.startswith(("crash-", "finding-")):
                old.unlink()
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")
    dicts = HERE / "dicts"
    dicts.mkdir(exist_ok=True)
    for target, words in dictionaries().items():
        (dicts / f"{target}.dict").write_text("".join(_dict_entry(w) + "\n" for w in words))


if __name__ == "__main__":
    main()
