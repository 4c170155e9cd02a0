"""Real pods (namespaces + TAP devices) on a running cluster: what a user would try first."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.system.cluster import iperf3, list_netns, snmp, udp_counters, udp_delivered, wait_for


def ping(cluster, pod, dst, *extra, count=3):
    return cluster.sh(pod, "ping", "-c", str(count), "-i", "0.2", "-W", "2", *extra, dst)


def test_same_node_pods_ping_each_other_and_their_gateway(demo):
    for dst in (demo.ip("a2"), "10.244.1.1"):
        result = ping(demo, "a1", dst)
        assert result.returncode == 0, result.stdout + result.stderr
        assert " 0% packet loss" in result.stdout
    assert re.search(r"ttl=64", ping(demo, "a1", demo.ip("a2"), count=1).stdout)   # bridged, not routed


def test_pods_on_different_nodes_ping_each_other(demo):
    result = ping(demo, "a1", demo.ip("b1"))
    assert result.returncode == 0, result.stdout
    assert "ttl=62" in result.stdout   # routed by both gateways, as with flannel


def test_pod_interface_is_configured_as_specified(demo):
    link = demo.sh("a1", "ip", "-j", "addr", "show", "eth0", check=True)
    (eth0,) = json.loads(link.stdout)
    assert eth0["mtu"] == 1450
    assert eth0["address"] == "0a:58:0a:f4:01:02"
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == \
        [(demo.ip("a1"), 24)]
    routes = json.loads(demo.sh("a1", "ip", "-j", "route", check=True).stdout)
    assert {"dst": "default", "gateway": "10.244.1.1"}.items() <= routes[0].items()
    lo = json.loads(demo.sh("a1", "ip", "-j", "link", "show", "lo", check=True).stdout)[0]
    assert "UP" in lo["flags"]


def test_unused_pod_address_gets_host_unreachable_from_its_gateway(demo):
    # routed to node-b over the overlay; node-b's gateway answers, and its error comes back
    result = ping(demo, "a1", "10.244.2.200", count=1)
    assert result.returncode != 0
    assert "From 10.244.2.1" in result.stdout and "Destination Host Unreachable" in result.stdout


def iperf(cluster, server, client, *args):
    return iperf3(cluster.pod(server), cluster.ip(server), cluster.pod(client), *args)


@pytest.mark.parametrize("server", ["a2", "b1"], ids=["same-node", "cross-node"])
def test_iperf3_tcp(demo, server):
    before = {n: demo.counters(n) for n in ("node-a", "node-b")}
    report = iperf(demo, server, "a1")
    assert report["end"]["sum_received"]["bytes"] > 1_000_000
    grew = {n: {k: v - before[n][k] for k, v in demo.counters(n).items()} for n in before}
    # the pods' kernels hand the node TSO super-frames (offloads on every TAP), many segments'
    # worth each, and it never had to drop one for a bad virtio-net header
    a = grew["node-a"]
    assert a["gso_superframes"] > 100 and a["drop_bad_vnet_header"] == 0
    if server == "b1":   # across nodes: segmented into GSO trains, coalesced again for the pod
        assert a["gso_segments"] > 10 * a["gso_superframes"] > 0
        assert a["tx_datagrams"] > 10 * a["tx_syscalls"] // 2
        assert grew["node-b"]["gro_bad_checksum"] == 0
        assert grew["node-b"]["gro_coalesced"] > 1000


@pytest.mark.parametrize("server", ["a2", "b1"], ids=["same-node", "cross-node"])
def test_iperf3_udp(demo, server):
    """20 Mbit/s of full-size datagrams for a second is far below what the node moves: the
    network loses none: every datagram a1 sent reaches the server's UDP layer. (One its socket
    had no room for, or still held when iperf3 closed it, is iperf3's loss, not the network's.)"""
    sent, before = udp_counters(demo.pod("a1")), snmp(demo.pod(server))
    report = iperf(demo, server, "a1", "-u", "-b", "20M")
    out = udp_counters(demo.pod("a1"))["OutDatagrams"] - sent["OutDatagrams"]
    assert report["end"]["sum"]["packets"] > 1000
    assert udp_delivered(before, snmp(demo.pod(server))) == out


def test_tcpdump_in_a_pod_shows_the_arp_exchange_and_the_traffic(demo):
    dump = subprocess.Popen(["ip", "netns", "exec", demo.pod("a2"), "tcpdump", "-lni", "eth0",
                             "arp or icmp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # tcpdump says "listening on" once its capture is open: that is the readiness signal
        while "listening on eth0" not in (line := dump.stderr.readline()):
            assert line, "tcpdump exited"
        # with empty neighbour caches, a2 must resolve a1 to answer it: vrouter answers that ARP
        for pod in ("a1", "a2"):
            demo.sh(pod, "ip", "neigh", "flush", "dev", "eth0", check=True)
        assert ping(demo, "a1", demo.ip("a2"), count=2).returncode == 0
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("echo reply" in x for x in lines):
            lines.append(dump.stdout.readline())
    finally:
        dump.send_signal(signal.SIGINT)
        dump.communicate(timeout=10)
    text = "".join(lines)
    assert "ICMP echo request" in text and "ICMP echo reply" in text
    a1 = demo.ip("a1")
    assert f"ARP, Request who-has {a1} tell {demo.ip('a2')}" in text
    assert f"ARP, Reply {a1} is-at 0a:58:0a:f4:01:02" in text


def test_status_shows_ports_mac_table_arp_and_counters(demo):
    assert ping(demo, "a1", demo.ip("a2"), count=1).returncode == 0
    result = subprocess.run([sys.executable, "-m", "vrouter", "status", str(demo.path), "--node", "node-a"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "node node-a" in out and "ready" in out
    assert demo.pod("a1") in out and "0a:58:0a:f4:01:02" in out
    assert "mac table:" in out and "arp:" in out and "forwarded_l2" in out
    status = demo.status("node-a")
    assert [p["pod"] for p in status["ports"]] == [demo.pod("a1"), demo.pod("a2"),
                                                  f"{demo.prefix}-dns-node-a"]
    assert status["counters"]["forwarded_l2"] > 0


SPOOF = """
from scapy.all import Ether, IP, UDP, sendp, conf
conf.verb = 0
frames = [
    Ether(src="0a:58:0a:f4:01:02", dst="02:76:0a:f4:01:01") / IP(src="10.244.1.99", dst="10.244.1.3") / UDP(),
    Ether(src="0a:58:0a:f4:01:03", dst="02:76:0a:f4:01:01") / IP(src="10.244.1.2", dst="10.244.1.3") / UDP(),
    Ether(src="0a:58:0a:f4:01:02", dst="02:76:0a:f4:01:01") / IP(src="10.244.1.2", dst="10.244.1.3", chksum=1) / UDP(),
    Ether(src="0a:58:0a:f4:01:02", dst="02:76:0a:f4:01:01", type=0x88b5) / b"junk",
]
sendp(frames, iface="eth0")
sendp(b"\\x00" * 8, iface="eth0")
"""


def test_spoofed_and_malformed_frames_are_dropped_and_counted(demo):
    before = demo.counters("node-a")
    demo.sh("a1", sys.executable, "-c", SPOOF, check=True)
    reasons = ["drop_spoofed_ip", "drop_spoofed_mac", "drop_bad_ipv4_checksum",
               "drop_unknown_ethertype"]
    wait_for(lambda: all(demo.counters("node-a")[r] > before[r] for r in reasons), what="drop counters")
    assert ping(demo, "a1", demo.ip("a2"), count=1).returncode == 0   # and the node still serves


def test_sigterm_removes_namespaces_taps_and_processes(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1))
    names = {cluster.pod("a1"), cluster.pod("b1"), f"{cluster.prefix}-outside"}
    assert names <= list_netns()
    output = cluster.stop(signal.SIGTERM)
    assert cluster.proc.returncode == 0, output
    assert not (names & list_netns())
    assert cluster.leftovers() == []


def test_killed_nodes_are_cleaned_up_by_vrouter_down(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1))
    pids = [cluster.status(n)["pid"] for n in ("node-a", "node-b")]
    cluster.proc.send_signal(signal.SIGKILL)   # the launcher dies without cleaning up
    cluster.proc.wait()
    for pid in pids:
        subprocess.run(["kill", "-9", str(pid)])
    assert {cluster.pod("a1"), f"{cluster.prefix}-outside"} <= list_netns()
    down = subprocess.run([sys.executable, "-m", "vrouter", "down", str(cluster.path)],
                          capture_output=True, text=True)
    assert down.returncode == 0
    assert f"removed network namespace {cluster.pod('a1')}" in down.stdout
    assert f"removed network namespace {cluster.prefix}-outside" in down.stdout
    assert cluster.leftovers() == []


def test_an_existing_netns_can_be_attached_and_is_kept(make_cluster):
    from pyroute2 import netns as pr_netns
    from tests.system.cluster import new_prefix
    name = new_prefix() + "-ctr"
    pr_netns.create(name)
    try:
        pod = {"name": name, "node": "node-a", "netns": f"/run/netns/{name}"}
        cluster = make_cluster(pods_per_node=(1, 1), extra_pods=[pod])
        assert ping(cluster, name, cluster.ip("a1"), count=1).returncode == 0
        cluster.stop()
        assert name in list_netns()   # not ours to delete
        links = cluster.sh(name, "ip", "-br", "link").stdout
        assert "eth0" not in links    # but our interface is gone
    finally:
        pr_netns.remove(name)


def test_a_signal_while_a_pods_namespace_is_made_leaves_no_namespace(monkeypatch):
    """Ctrl-C can land right after the kernel made a pod's namespace: the namespace must be
    the pod's stack's (and recorded) by then, or neither the node nor `vrouter down` removes it."""
    import contextlib
    import dataclasses
    import secrets

    from vrouter.host import tap
    from vrouter.model import config

    cluster = config.load("configs/demo.yaml", check_host=False)
    pod = dataclasses.replace(cluster.pods[0], netns=f"vs{secrets.token_hex(3)}-web-1")
    real = tap.create_netns

    def made_then_interrupted(name):
        real(name)
        raise KeyboardInterrupt

    monkeypatch.setattr(tap, "create_netns", made_then_interrupted)
    created = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with contextlib.ExitStack() as stack:
                tap.attach_pod(cluster, pod, stack, created)
        assert created == [pod.netns]
        assert pod.netns not in list_netns()
    finally:
        tap.remove_netns(pod.netns)


def test_a_namespace_with_a_tap_of_the_pods_interface_name_is_refused_and_left_as_it_was():
    """An interface of the pod's name there already, even a TAP (a persistent one, from `ip
    tuntap add`): the TAP moved in under that name is refused, and the one there untouched."""
    import contextlib
    import dataclasses

    from pyroute2 import netns as pr_netns

    from tests.system.cluster import new_prefix
    from vrouter.host import tap
    from vrouter.model import config

    name = new_prefix() + "-ctr"
    pr_netns.create(name)
    try:
        subprocess.run(["ip", "-n", name, "tuntap", "add", "dev", "eth0", "mode", "tap"],
                       check=True)
        before = subprocess.run(["ip", "-n", name, "-d", "link", "show", "eth0"],
                                capture_output=True, text=True, check=True).stdout
        cluster = config.load("configs/demo.yaml", check_host=False)
        pod = dataclasses.replace(cluster.pods[0], netns=f"/run/netns/{name}", owns_netns=False)
        created = []
        with pytest.raises(tap.InterfaceExists, match="already has an eth0"):
            with contextlib.ExitStack() as stack:
                tap.attach_pod(cluster, pod, stack, created)
        after = subprocess.run(["ip", "-n", name, "-d", "link", "show", "eth0"],
                               capture_output=True, text=True, check=True).stdout
        assert after == before and "tun type tap" in after
        assert created == [] and name in list_netns()
    finally:
        pr_netns.remove(name)
