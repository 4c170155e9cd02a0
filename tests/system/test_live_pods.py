"""Pods that come and go while the cluster runs: `vrouter attach` / `detach`, a reload that adds,
removes and relabels pods, Service endpoints following pods across nodes, and other pods' flows
undisturbed meanwhile."""
import contextlib
import json
import subprocess
import sys
import threading

import pytest
import yaml
from pyroute2 import netns as pr_netns

from tests.system.cluster import (
    iperf3, list_netns, netns_exec, new_prefix, snmp, udp_counters, udp_delivered, wait_for,
)
from tests.system.test_pods import ping
from tests.system.test_services import SERVER

VIP = "10.96.0.40"
SERVICE = f"""
---
apiVersion: v1
kind: Service
metadata: {{name: late}}
spec:
  clusterIP: {VIP}
  selector: {{app: late}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def vrouter(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "vrouter", *args], capture_output=True,
                          text=True, timeout=timeout)


@contextlib.contextmanager
def namespaces(*names):
    """Network namespaces standing for containers: made here, removed here."""
    for name in names:
        pr_netns.create(name)
    try:
        yield names
    finally:
        for name in names:
            if name in list_netns():
                pr_netns.remove(name)


def test_attach_and_detach_a_namespace_by_hand(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1))
    with namespaces(new_prefix() + "-ctr") as (ctr,):
        result = vrouter("attach", cluster.prefix, "--node", "node-a", "--netns", ctr)
        assert result.returncode == 0, result.stderr
        assert f"attached pod default/{ctr} to node-a" in result.stdout
        ip = "10.244.1.3"   # the lowest free address after a1's .2
        assert f"eth0 {ip}/24" in result.stdout
        for src, dst in ((ctr, cluster.ip("b1")), (cluster.pod("b1"), ip)):
            answer = netns_exec(src, "ping", "-c", "2", "-i", "0.2", "-W", "2", dst)
            assert answer.returncode == 0, answer.stdout
        ports = {p["pod"]: p for p in cluster.status("node-a")["ports"]}
        assert ports[ctr]["ip"] == ip and ports[ctr]["netns"] == f"/run/netns/{ctr}"
        result = vrouter("detach", cluster.prefix, "--name", ctr)
        assert result.returncode == 0, result.stderr
        assert "eth0" not in netns_exec(ctr, "ip", "-br", "link").stdout   # the interface is gone
        assert ctr not in {p["pod"] for p in cluster.status("node-a")["ports"]}
        assert ctr in list_netns()   # the namespace is the container's, not ours


def test_taken_names_and_addresses_and_missing_namespaces_are_refused(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1))
    with namespaces(new_prefix() + "-ctr") as (ctr,):
        cases = [
            (["--name", cluster.pod("a1")], "taken"),
            (["--ip", cluster.ip("a1")], f"address {cluster.ip('a1')} is taken"),
            (["--ip", "10.244.2.9"], "is not a pod address of node 'node-a'"),
        ]
        for extra, words in cases:
            result = vrouter("attach", str(cluster.path), "--node", "node-a", "--netns", ctr, *extra)
            assert result.returncode == 2 and words in result.stderr, (extra, result.stderr)
        result = vrouter("attach", str(cluster.path), "--node", "node-a", "--netns", "vt-no-such")
        assert result.returncode == 2 and "does not exist" in result.stderr
        assert netns_exec(ctr, "ip", "-br", "link").stdout.count("\n") == 1   # only lo: untouched


def test_a_pod_attached_on_one_node_becomes_a_service_endpoint_on_the_other(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1), services=SERVICE)
    connect = (f"import socket; s = socket.create_connection(('{VIP}', 80), timeout=5); "
               "s.sendall(b'x'); print(s.recv(100).decode())")
    refused = cluster.sh("a1", sys.executable, "-c", connect)
    assert "ConnectionRefusedError" in refused.stderr   # no endpoints yet
    with namespaces(new_prefix() + "-late") as (late,):
        result = vrouter("attach", cluster.prefix, "--node", "node-b", "--netns", late,
                         "--label", "app=late")
        assert result.returncode == 0, result.stderr
        server = subprocess.Popen(["ip", "netns", "exec", late, sys.executable, SERVER, "late",
                                   "8080", "5353"])
        try:
            wait_for(lambda: ":8080" in netns_exec(late, "ss", "-ltn").stdout, what="server")
            frontends = lambda: {f["frontend"]: f["backends"] for f in   # noqa: E731
                                 cluster.status("node-a")["services"]}
            wait_for(lambda: frontends()[f"{VIP}:80/TCP"] == ["10.244.2.3:8080"],
                     what="node-a to learn the endpoint")
            answer = cluster.sh("a1", sys.executable, "-c", connect)
            assert answer.returncode == 0 and answer.stdout.split()[0] == "late", answer.stderr
            assert vrouter("detach", cluster.prefix, "--name", late).returncode == 0
            wait_for(lambda: frontends()[f"{VIP}:80/TCP"] == [], what="node-a to drop it")
        finally:
            server.kill()
            server.wait()
    assert "ConnectionRefusedError" in cluster.sh("a1", sys.executable, "-c", connect).stderr


def test_a_reload_adds_removes_and_relabels_pods_of_the_file(make_cluster):
    prefix = new_prefix()
    pods = [{"name": f"{prefix}-a1", "node": "node-a"},
            {"name": f"{prefix}-a2", "node": "node-a", "labels": {"app": "late"}},
            {"name": f"{prefix}-b1", "node": "node-b"}]
    cluster = make_cluster(pods_per_node=(0, 0), extra_pods=pods, services=SERVICE, prefix=prefix)
    text = cluster.path.read_text()
    head, _, rest = text.partition("---")
    doc = yaml.safe_load(head)
    doc["pods"] = [{"name": f"{prefix}-a1", "node": "node-a", "labels": {"app": "late"}},
                   {"name": f"{prefix}-b1", "node": "node-b"},
                   {"name": f"{prefix}-b2", "node": "node-b"}]
    cluster.path.write_text(yaml.safe_dump(doc, sort_keys=False) + "---" + rest)
    result = vrouter("reload", str(cluster.path))
    assert result.returncode == 0, result.stderr
    assert "node-b: reloaded" in result.stdout and f"pods attached: {prefix}-b2" in result.stdout
    assert f"{prefix}-a2" not in list_netns()          # removed: its namespace was ours
    assert ping(cluster, "b2", cluster.ip("a1"), count=2).returncode == 0
    backends = {f["frontend"]: f["backends"] for f in cluster.status("node-b")["services"]}
    assert backends[f"{VIP}:80/TCP"] == ["10.244.1.2:8080"]   # a1 relabelled, a2 gone


def path_drops(cluster) -> dict[str, int]:
    """Everything that can drop a1 <-> b1 traffic: both nodes' drop counters, a1's and b1's
    queues (a TAP the node read too late), the overlay socket (host UDP receive errors)."""
    found = {}
    for node in ("node-a", "node-b"):
        for k, v in cluster.status(node)["counters"].items():
            if k.startswith("drop") and k != "drop_outside_not_for_us":   # outside chatter
                found[f"{node}/{k}"] = v
    for pod in ("a1", "b1"):
        stats = json.loads(cluster.sh(pod, "ip", "-s", "-j", "link", "show", "eth0",
                                      check=True).stdout)[0]["stats64"]
        found[f"{pod}/tx_dropped"] = stats["tx"]["dropped"]
        found[f"{pod}/rx_dropped"] = stats["rx"]["dropped"]
    host = open("/proc/net/snmp").read().splitlines()
    udp = [line.split() for line in host if line.startswith("Udp:")]
    found["host/udp_rcvbuf_errors"] = int(dict(zip(udp[0][1:], udp[1][1:]))["RcvbufErrors"])
    return found


def where_lost(cluster) -> dict:
    """For a failure message: the nodes' drop counters and the pods' interface drops."""
    found = {}
    for node in ("node-a", "node-b"):
        status = cluster.status(node)
        found[node] = {k: v for k, v in status["counters"].items() if k.startswith("drop") and v}
        found[node]["longest_request_us"] = status["datapath"]["longest_request_us"]
    for pod in ("a1", "b1"):
        found[pod] = cluster.sh(pod, "ip", "-s", "link", "show", "eth0").stdout
    found["host udp"] = open("/proc/net/snmp").read().splitlines()[-3:]
    return found


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_pods_coming_and_going_do_not_disturb_other_flows(make_cluster, proto):
    """A stream between a1 and b1 while pods are attached and detached on both nodes: nothing
    is dropped on the way (no node drops a frame, no pod's queue overflows), TCP never stalls
    for an interval (a retransmission after a pause of the data path may still be spurious); of UDP
    at 100 Mbit/s, every datagram a1's stack sends reaches b1's UDP layer (its socket may still
    overflow when the churn starves iperf3 of CPU, or hold datagrams iperf3 never read: that is
    iperf3's loss, not the network's)."""
    cluster = make_cluster(pods_per_node=(1, 1))
    churn_done = threading.Event()
    errors, cycles = [], []

    def churn(names):
        k = 0
        while not churn_done.is_set():
            name = names[k % len(names)]
            node = "node-a" if k % 2 else "node-b"
            for args in (("attach", cluster.prefix, "--node", node, "--netns", name),
                         ("detach", cluster.prefix, "--name", name)):
                result = vrouter(*args)
                if result.returncode != 0:
                    errors.append(result.stderr)
            cycles.append(name)
            k += 1

    with namespaces(*(f"{cluster.prefix}-churn{k}" for k in range(3))) as names:
        sent, received = udp_counters(cluster.pod("a1")), snmp(cluster.pod("b1"))
        drops_before = path_drops(cluster)
        worker = threading.Thread(target=churn, args=(names,))
        worker.start()
        try:
            extra = ("-u", "-b", "100M") if proto == "udp" else ()
            report = iperf3(cluster.pod("b1"), cluster.ip("b1"), cluster.pod("a1"), "-i", "0.5",
                            *extra, seconds=8)
        finally:
            churn_done.set()
            worker.join()
    assert not errors, errors
    assert len(cycles) >= 3, cycles   # pods really came and went during the stream
    drops = {k: v - drops_before.get(k, 0) for k, v in path_drops(cluster).items()
             if v != drops_before.get(k, 0)}
    assert drops == {}, json.dumps(where_lost(cluster), indent=1)
    if proto == "udp":
        out = udp_counters(cluster.pod("a1"))["OutDatagrams"] - sent["OutDatagrams"]
        now = snmp(cluster.pod("b1"))
        arrived = udp_delivered(received, now)
        assert report["end"]["sum"]["packets"] > 10000, report["end"]["sum"]
        assert now["Ip"]["InDiscards"] == received["Ip"]["InDiscards"]
        if arrived != out:
            pytest.fail(f"{out - arrived} of {out} datagrams lost:\n"
                        + json.dumps(where_lost(cluster), indent=1))
    else:
        intervals = [i["sum"]["bytes"] for i in report["intervals"]]
        assert len(intervals) >= 10 and min(intervals) > 0, intervals
