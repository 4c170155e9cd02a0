"""Cluster DNS from inside real pods: dig (dnsutils) over UDP and TCP, getent through the
Kubernetes-style resolv.conf, and records that follow a reload."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.system.cluster import new_prefix

pytestmark = pytest.mark.system

SERVICES = """
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.100
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-pods}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: docs}
spec: {type: ExternalName, externalName: docs.example.org}
"""


@pytest.fixture(scope="module")
def dns_cluster(tmp_path_factory):
    if not shutil.which("dig"):
        pytest.fail("dig is needed (dnsutils; .ci/run installs it)")
    from tests.system.cluster import Cluster
    prefix = new_prefix()
    pods = [{"name": f"{prefix}-a1", "node": "node-a", "labels": {"app": "web"}},
            {"name": f"{prefix}-b1", "node": "node-b", "labels": {"app": "web"}},
            {"name": f"{prefix}-b2", "node": "node-b", "namespace": "shop"}]
    cluster = Cluster(tmp_path_factory.mktemp("dns"), pods_per_node=(0, 0), extra_pods=pods,
                      services=SERVICES, prefix=prefix).start()
    yield cluster
    cluster.stop()
    assert not cluster.leftovers()
    assert not [d for d in os.listdir("/etc/netns") if d.startswith(prefix)] \
        if os.path.isdir("/etc/netns") else True


def dig(cluster, pod, *args, tcp=False) -> list[str]:
    result = cluster.sh(pod, "dig", "+short", "+tries=1", "+time=5", *(("+tcp",) if tcp else ()),
                        *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(result.stdout.split("\n")[:-1])


def status_of(cluster, pod, *args, tcp=False) -> str:
    out = cluster.sh(pod, "dig", "+tries=1", "+time=5", *(("+tcp",) if tcp else ()),
                     *args).stdout
    return out.split("status: ")[1].split(",")[0]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_every_record_kind_over_udp_and_tcp(dns_cluster, tcp):
    c = dns_cluster
    a1, b1 = c.ip("a1"), c.ip("b1")
    dashed = a1.replace(".", "-")
    for asker in ("a1", "b2"):   # a pod on each node asks its own node's server
        assert dig(c, asker, "web.default.svc.cluster.local", tcp=tcp) == ["10.96.0.100"]
        assert dig(c, asker, "web-pods.default.svc.cluster.local", tcp=tcp) == sorted([a1, b1])
        assert dig(c, asker, "SRV", "_http._tcp.web.default.svc.cluster.local", tcp=tcp) == [
            "0 100 80 web.default.svc.cluster.local."]
        assert f"0 50 8080 {dashed}.web-pods.default.svc.cluster.local." in dig(
            c, asker, "SRV", "_http._tcp.web-pods.default.svc.cluster.local", tcp=tcp)
        assert dig(c, asker, f"{dashed}.default.pod.cluster.local", tcp=tcp) == [a1]
        # an endpoint's address names it under each Service it serves (CoreDNS: no pod PTR)
        assert dig(c, asker, "-x", a1, tcp=tcp) == sorted([
            f"{dashed}.web.default.svc.cluster.local.",
            f"{dashed}.web-pods.default.svc.cluster.local."])
        assert dig(c, asker, "TXT", "dns-version.cluster.local", tcp=tcp) == ['"1.1.0"']
        assert dig(c, asker, "-x", "10.96.0.100", tcp=tcp) == ["web.default.svc.cluster.local."]
        assert dig(c, asker, "CNAME", "docs.default.svc.cluster.local", tcp=tcp) == [
            "docs.example.org."]
        assert status_of(c, asker, "nope.default.svc.cluster.local", tcp=tcp) == "NXDOMAIN"
        assert status_of(c, asker, "example.org", tcp=tcp) == "REFUSED"


def test_getent_resolves_short_names_through_the_search_list(dns_cluster):
    c = dns_cluster
    resolv = open(f"/etc/netns/{c.pod('b2')}/resolv.conf").read()
    assert resolv == ("nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local "
                      "cluster.local\noptions ndots:5\n")
    # b2 lives in namespace shop: "web" alone is not there, "web.default" is
    assert c.sh("b2", "getent", "hosts", "web.default").stdout.split() == [
        "10.96.0.100", "web.default.svc.cluster.local"]
    assert c.sh("a1", "getent", "hosts", "web").stdout.split() == [
        "10.96.0.100", "web.default.svc.cluster.local"]
    assert c.sh("b2", "getent", "hosts", "web").returncode == 2   # not found
    # an address: its PTR names (b1 is an endpoint of web and of the headless web-pods)
    out = c.sh("a1", "getent", "hosts", c.ip("b1")).stdout.split()
    dashed = c.ip("b1").replace(".", "-")
    assert out[0] == c.ip("b1") and out[1:] and set(out[1:]) <= {
        f"{dashed}.web.default.svc.cluster.local", f"{dashed}.web-pods.default.svc.cluster.local"}


def test_a_reload_changes_the_records_and_a_bad_query_does_not_hurt(dns_cluster):
    c = dns_cluster
    assert status_of(c, "a1", "late.default.svc.cluster.local") == "NXDOMAIN"
    c.path.write_text(c.path.read_text() + """---
apiVersion: v1
kind: Service
metadata: {name: late}
spec: {clusterIP: 10.96.0.101, selector: {app: web}, ports: [{port: 81}]}
""")
    result = subprocess.run([sys.executable, "-m", "vrouter", "reload", str(c.path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert dig(c, "a1", "late.default.svc.cluster.local") == ["10.96.0.101"]
    # garbage over UDP: FORMERR back (a header to answer), and the server still answers
    garbage = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
               "s.settimeout(5); s.sendto(bytes.fromhex('abcd01000001000000000000ff'), "
               "('10.96.0.10', 53)); r = s.recv(512); print(r[:2].hex(), r[3] & 15)")
    out = c.sh("a1", sys.executable, "-c", garbage).stdout.split()
    assert out == ["abcd", "1"]   # same id, rcode FORMERR
    assert dig(c, "a1", "web.default.svc.cluster.local") == ["10.96.0.100"]
    answers = c.status("node-a")["dns"]["answers"]
    assert answers["FORMERR"] == 1 and answers["NOERROR"] >= 1
