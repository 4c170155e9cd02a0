"""The etcd datastore across separate hosts (issue 18's acceptance): a real etcd (Debian's
etcd-server 3.4), three node processes each in a network namespace of its own with its own
underlay address on a bridge, none listed in the cluster file.

The lease TTL is 6 s here instead of the 30 s default: what is tested is the behaviour (a dead
node's lease runs out, an outage shorter than the TTL loses nothing), and 6 s keeps each test
within tens of seconds. etcd is down about 4 s (killed, 2.5 s, then the time it takes to start
again), under the TTL as the issue's 20 s are under 30 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.system.cluster import child_env, list_netns, netns_exec, wait_for
from tests.system.etcdcluster import ETCD_ADDRESS, ETCD_ALSO, EtcdCluster
from tests.system.test_services import SERVER, TCP_PORT, UDP_PORT
from tests.system.reachability import probe
from vrouter.host import state
from vrouter.ops import control

TTL = 6
OUTAGE = 2.5

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


def pods_manifest(prefix: str, names) -> str:
    return "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {prefix}-p{k + 1}, labels: {{app: web}}}}
spec: {{nodeName: {node}, containers: [{{name: web, image: busybox, ports: [{{name: http, containerPort: {TCP_PORT}}}]}}]}}
""" for k, node in enumerate(names))


DENY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-deny}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: []
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EtcdCluster(tmp_path_factory.mktemp("etcd"), lease_ttl=TTL)
    servers: list[subprocess.Popen] = []
    try:
        c.start().start_all()
        c.apply(pods_manifest(c.prefix, c.names) + "---" + SERVICE)
        wait_for(lambda: all(pod_ip(c, k) for k in range(3)), timeout=30, what="pod addresses")
        for k in range(3):
            wait_for(lambda: ports_of(c, c.names[k]) >= {c.pod(f"p{k + 1}")}, timeout=30,
                     what=f"pod p{k + 1} on {c.names[k]}")
            servers.append(subprocess.Popen(["ip", "netns", "exec", c.pod(f"p{k + 1}"),
                                             sys.executable, SERVER, f"p{k + 1}", str(TCP_PORT),
                                             str(UDP_PORT)]))
        for k in range(3):
            wait_for(lambda: f":{TCP_PORT}" in c.sh(f"p{k + 1}", "ss", "-ltn").stdout,
                     what="echo server")
        c.servers = servers
        yield c
    finally:
        for server in servers:
            server.kill()
            server.wait()
        c.stop()
        left = c.leftovers()
        assert not left, left


def pod_ip(c: EtcdCluster, k: int = 0, name: str | None = None) -> str | None:
    for item in c.get("pods")["items"]:
        if item["metadata"]["name"] == (name or c.pod(f"p{k + 1}")) and \
                item["status"].get("podIP"):
            if item["status"]["phase"] == "Running":
                return item["status"]["podIP"]
    return None


def ports_of(c: EtcdCluster, node: str) -> set[str]:
    try:
        return {p["pod"] for p in c.status(node)["ports"]}
    except (OSError, ValueError, KeyError):
        return set()


def store_metrics(c: EtcdCluster, node: str) -> tuple[float, float]:
    """vrouter_store_up and vrouter_store_unreachable_since_seconds of a node."""
    text = control.request(state.socket_path(c.prefix, node), "metrics", timeout=30)["text"]
    found = {s.name: s.value for family in text_string_to_metric_families(text)
             for s in family.samples if s.name.startswith("vrouter_store_")}
    return found["vrouter_store_up"], found["vrouter_store_unreachable_since_seconds"]


def service_ip(c: EtcdCluster, name: str = "web") -> str:
    return next(i["spec"]["clusterIP"] for i in c.get("services")["items"]
                if i["metadata"]["name"] == name)


def test_nodes_register_with_podcidrs_that_do_not_collide(cluster):
    nodes = cluster.get("nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == cluster.names
    cidrs = [n["spec"]["podCIDR"] for n in nodes]
    print("podCIDRs:", dict(zip(cluster.names, cidrs)))
    assert len(set(cidrs)) == 3 and all(c.startswith("10.244.") and c.endswith("/24")
                                        for c in cidrs)
    addresses = {a["address"] for n in nodes for a in n["status"]["addresses"]
                 if a["type"] == "InternalIP"}
    assert addresses == set(cluster.underlays)
    for name in cluster.names:   # every node has the two others as overlay peers
        peers = {p["node"] for p in cluster.status(name)["peers"]}
        assert peers == set(cluster.names) - {name}
    table = cluster.vrouter("get", "nodes", "--cluster", str(cluster.path)).stdout
    print(table)
    assert [line.split()[1] for line in table.splitlines()[1:]] == ["Ready"] * 3


def test_pods_and_a_service_applied_are_reached_from_all_three(cluster):
    ips = [pod_ip(cluster, k) for k in range(3)]
    vip = service_ip(cluster)
    for k in range(3):
        others = [ip for j, ip in enumerate(ips) if j != k]
        assert probe(cluster.pod(f"p{k + 1}"), "tcp", TCP_PORT, others, 21000 + 10 * k) == \
            ["ok", "ok"]
        # the Service from every node: each connection answered by one of its backends
        answers = set()
        for attempt in range(6):
            out = cluster.sh(f"p{k + 1}", sys.executable, "-c",
                             "import socket,sys; s=socket.create_connection((sys.argv[1],80),5);"
                             "s.sendall(b'x'); print(s.recv(100).decode().split()[0])", vip)
            assert out.returncode == 0, out.stderr
            answers.add(out.stdout.strip())
        assert answers <= {"p1", "p2", "p3"} and answers


def _policy_seen(cluster, name: str, present: bool) -> bool:
    for node in cluster.names:
        policies = {p["policy"] for p in cluster.status(node)["policies"]}
        if (f"default/{name}" in policies) != present:
            return False
    return True


def test_a_networkpolicy_applied_is_enforced_on_every_node_within_1s(cluster):
    ips = [pod_ip(cluster, k) for k in range(3)]
    start = time.monotonic()
    cluster.apply(DENY, "deny.yaml")
    applied = time.monotonic()
    wait_for(lambda: _policy_seen(cluster, "web-deny", True), timeout=10, interval=0.01,
             what="the policy on every node")
    took = time.monotonic() - applied
    print(f"policy enforced on all 3 nodes {took * 1000:.0f} ms after `vrouter apply` returned "
          f"({(applied - start) * 1000:.0f} ms for the apply itself)")
    assert took <= 1.0
    for k in range(3):   # every pod isolated: nothing gets in, from any node
        others = [ip for j, ip in enumerate(ips) if j != k]
        assert probe(cluster.pod(f"p{k + 1}"), "tcp", TCP_PORT, others, 22000 + 10 * k) == \
            ["timeout", "timeout"]
    result = cluster.vrouter("delete", "networkpolicy", "web-deny", "--cluster",
                             str(cluster.path))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: _policy_seen(cluster, "web-deny", False), timeout=10, what="policy gone")
    assert probe(cluster.pod("p1"), "tcp", TCP_PORT, ips[1:], 22100) == ["ok", "ok"]


def test_bad_input_never_reaches_the_store(cluster):
    bad = SERVICE.replace("port: 80,", "port: 80, protocol: SCTP,")
    path = cluster.tmp / "bad.yaml"
    path.write_text(bad)
    result = cluster.vrouter("apply", "-f", str(path), "--cluster", str(cluster.path))
    assert result.returncode == 2 and "spec.ports[0].protocol" in result.stderr
    # a node name that is taken, from another host (a state directory of its own, as on a
    # machine of its own): refused with the reason, the first keeps running
    other = cluster.tmp / "other-host-state"
    proc = subprocess.run(["ip", "netns", "exec", cluster.hosts[1], sys.executable, "-m",
                           "vrouter", "run", str(cluster.path), "--node", "n1", "--underlay",
                           cluster.underlays[1]], capture_output=True, text=True, timeout=120,
                          env={**child_env(), "VROUTER_STATE_DIR": str(other)})
    assert proc.returncode == 1 and "node name 'n1' is taken" in proc.stderr, proc.stderr
    assert "192.0.2.1" in proc.stderr   # who has it
    assert cluster.status("n1")["ready"]
    assert {n["metadata"]["name"] for n in cluster.get("nodes")["items"]} == set(cluster.names)


def test_a_runtime_attachment_is_a_store_key_every_node_sees(cluster):
    netns = f"{cluster.prefix}-rt"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        attach = cluster.vrouter("attach", str(cluster.path), "--node", "n2", "--netns", netns,
                                 "--label", "app=web")
        assert attach.returncode == 0, attach.stderr
        ip = attach.stdout.split(": eth0 ")[1].split("/")[0]
        items = {i["metadata"]["name"]: i for i in cluster.get("pods")["items"]}
        assert items[netns]["status"]["podIP"] == ip and items[netns]["spec"]["nodeName"] == "n2"
        wait_for(lambda: all(any(ip in b for f in cluster.status(n)["services"]
                                 if f["service"] == "default/web" for b in f["backends"])
                             for n in cluster.names), timeout=10, what="the endpoint everywhere")
        # the name is claimed cluster-wide: another host's node refuses it
        subprocess.run(["ip", "netns", "add", f"{netns}2"], check=True)
        again = cluster.vrouter("attach", str(cluster.path), "--node", "n3", "--netns",
                                f"{netns}2", "--name", netns)
        assert again.returncode == 2 and f"pod name {netns!r} is taken" in again.stderr, \
            again.stderr
        detach = cluster.vrouter("detach", str(cluster.path), "--name", netns)
        assert detach.returncode == 0, detach.stderr
        wait_for(lambda: all(not any(ip in b for f in cluster.status(n)["services"]
                                     for b in f["backends"]) for n in cluster.names),
                 timeout=10, what="the endpoint gone everywhere")
    finally:
        for name in (netns, f"{netns}2"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_a_pod_applied_for_a_container_runtime_waits_for_its_cni_add(cluster):
    name, sandbox = cluster.pod("cn"), f"{cluster.prefix}-sandbox"
    cluster.apply(f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}, annotations: {{vrouter.io/netns: cni}}}}
spec: {{nodeName: n2, containers: [{{name: web, image: busybox}}]}}
""", "cni-pod.yaml")
    wait_for(lambda: any(i["metadata"]["name"] == name for i in cluster.get("pods")["items"]),
             what="the pod in the store")
    (item,) = [i for i in cluster.get("pods")["items"] if i["metadata"]["name"] == name]
    assert item["status"]["phase"] == "Pending"   # n2 made no namespace: a runtime will
    assert name not in list_netns() and name not in ports_of(cluster, "n2")
    subprocess.run(["ip", "netns", "add", sandbox], check=True)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": child_env()["PYTHONPATH"],
           "CNI_PATH": "/usr/lib/cni", "CNI_CONTAINERID": "c0ffee" * 8,
           "CNI_NETNS": f"/run/netns/{sandbox}", "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE=default"}
    conf = json.dumps({"cniVersion": "1.0.0", "name": "vrouter-n2", "type": "vrouter-cni",
                       "cluster": cluster.prefix, "node": "n2"})

    def cni(command):   # as a runtime on host 2 runs the plugin
        result = subprocess.run(["ip", "netns", "exec", cluster.hosts[1], sys.executable, "-c",
                                 "from vrouter.ops.cni import main; raise SystemExit(main())"],
                                input=conf, capture_output=True, text=True, timeout=60,
                                env={**env, "CNI_COMMAND": command})
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else None
    try:
        ip = cni("ADD")["ips"][0]["address"].split("/")[0]
        wait_for(lambda: pod_ip(cluster, name=name) == ip, what="the pod Running at its address")
        # a Service backend on every node, reached from another host's pod
        wait_for(lambda: all(any(ip in b for f in cluster.status(n)["services"]
                                 if f["service"] == "default/web" for b in f["backends"])
                             for n in cluster.names), timeout=10, what="the endpoint everywhere")
        ping = cluster.sh("p1", "ping", "-c", "1", "-W", "2", ip)
        assert ping.returncode == 0, ping.stdout
        cni("DEL")
        assert "eth0" not in netns_exec(sandbox, "ip", "-br", "link").stdout
        wait_for(lambda: all(not any(ip in b for f in cluster.status(n)["services"]
                                     for b in f["backends"]) for n in cluster.names),
                 timeout=10, what="the endpoint gone everywhere")
    finally:
        subprocess.run(["ip", "netns", "del", sandbox], capture_output=True)
        cluster.vrouter("delete", "pod", name, "--cluster", str(cluster.path))


def test_a_lost_lease_is_taken_again_with_the_same_podcidr(cluster):
    before = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in cluster.get("nodes")["items"]}
    lease = cluster.status("n1")["store"]["lease"]
    cluster.etcd.etcdctl("lease", "revoke", f"{lease:x}")   # as if it had expired
    wait_for(lambda: cluster.status("n1")["store"]["lease_lost"] == 1, timeout=4 * TTL,
             what="n1 to find its lease gone")
    wait_for(lambda: {n["metadata"]["name"]: n["spec"]["podCIDR"]
                      for n in cluster.get("nodes")["items"]} == before, timeout=10,
             what="n1 registered again")
    assert cluster.status("n1")["store"]["lease"] != lease
    wait_for(lambda: all("n1" in {p["node"] for p in cluster.status(n)["peers"]}
                         for n in ("n2", "n3")), timeout=10, what="n1 a peer again")


@pytest.mark.long
def test_a_killed_node_vanishes_after_its_lease_and_returns_with_its_podcidr(cluster):
    before = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in cluster.get("nodes")["items"]}
    ip3 = pod_ip(cluster, 2)
    cluster.kill("n3")
    killed = time.monotonic()
    wait_for(lambda: all("n3" not in {p["node"] for p in cluster.status(n)["peers"]}
                         for n in ("n1", "n2")), timeout=4 * TTL, interval=0.1,
             what="n3 to leave the others' peers")
    print(f"n3 left the peers {time.monotonic() - killed:.1f} s after SIGKILL (lease TTL {TTL} s)")
    # its pod is unreachable with an ICMP error at once, not a hang
    t = time.monotonic()
    ping = cluster.sh("p1", "ping", "-c", "1", "-W", "5", ip3)
    assert "Unreachable" in ping.stdout, ping.stdout
    assert time.monotonic() - t < 5   # an answer came, not ping's own timeout
    # and the Service has only the live backends
    backends = {b for f in cluster.status("n1")["services"] if f["service"] == "default/web"
                for b in f["backends"]}
    assert backends and ip3 not in " ".join(backends)
    cluster.start_node(2)
    after = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in cluster.get("nodes")["items"]}
    assert after == before
    wait_for(lambda: all("n3" in {p["node"] for p in cluster.status(n)["peers"]}
                         for n in ("n1", "n2")), timeout=10, what="n3 back")
    wait_for(lambda: probe(cluster.pod("p1"), "tcp", TCP_PORT, [ip3], 23000) == ["ok"],
             timeout=20, interval=0.5, what="p3 reachable again")


@pytest.mark.long
def test_etcd_down_for_less_than_the_lease_ttl_loses_nothing(cluster):
    ips = [pod_ip(cluster, k) for k in range(3)]
    server = subprocess.Popen(["ip", "netns", "exec", cluster.pod("p2"), "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: ":5201" in cluster.sh("p2", "ss", "-ltn").stdout, what="iperf3")
        seconds = OUTAGE + 6
        iperf = subprocess.Popen(["ip", "netns", "exec", cluster.pod("p1"), "iperf3", "-J",
                                  "-i", "0.5", "-t", str(seconds), "-c", ips[1]],
                                 stdout=subprocess.PIPE, text=True)
        ping = subprocess.Popen(["ip", "netns", "exec", cluster.pod("p3"), "ping", "-i", "0.05",
                                 "-c", str(int(seconds * 20)), ips[0]],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)   # traffic flows before the outage
        cluster.etcd.kill()
        down = time.monotonic()
        wait_for(lambda: all(not cluster.status(n)["store"]["reachable"] for n in cluster.names),
                 timeout=10, what="every node to notice")
        since = {n: cluster.status(n)["store"]["unreachable_since"] for n in cluster.names}
        assert all(since.values())
        # metrics say so too (once their snapshot is newer than the outage), and status
        wait_for(lambda: all(store_metrics(cluster, n) == (0, since[n]) for n in cluster.names),
                 timeout=10, what="vrouter_store_up 0 and the time in the metrics")
        shown = cluster.vrouter("status", cluster.prefix, "--node", "n1", timeout=30)
        assert shown.returncode == 0 and "UNREACHABLE since" in shown.stdout, shown.stdout
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
        cluster.etcd.start()
        outage = time.monotonic() - down
        print(f"etcd was down {outage:.1f} s (lease TTL {TTL} s)")
        wait_for(lambda: all(cluster.status(n)["store"]["reachable"] for n in cluster.names),
                 timeout=15, what="every node to reach etcd again")
        out, _ = ping.communicate(timeout=seconds + 30)
        report = json.loads(iperf.communicate(timeout=seconds + 30)[0])
    finally:
        server.kill()
        server.wait()
    sent = int(out.split(" packets transmitted")[0].split()[-1])
    received = int(out.split(" received")[0].split()[-1])
    intervals = [i["sum"]["bits_per_second"] for i in report["intervals"]]
    print(f"ping {received}/{sent}; iperf3 {report['end']['sum_received']['bits_per_second'] / 1e9:.2f}"
          f" Gbit/s, slowest 0.5 s interval {min(intervals) / 1e9:.2f} Gbit/s, "
          f"{report['end']['sum_sent'].get('retransmits', 0)} retransmits")
    assert received == sent
    assert min(intervals) > 0
    if outage >= TTL:
        pytest.fail(f"etcd took {outage:.1f} s to come back: not an outage under the TTL")
    # nodes kept their registrations (no lease lost) and an object applied now is enforced
    assert all(cluster.status(n)["peers"] and len(cluster.status(n)["peers"]) == 2
               for n in cluster.names)
    cluster.apply(SERVICE.replace("name: web}", "name: after}"), "after.yaml")
    vip = service_ip(cluster, "after")
    wait_for(lambda: all(any(f["service"] == "default/after" and f["backends"]
                             for f in cluster.status(n)["services"]) for n in cluster.names),
             timeout=10, what="the new Service everywhere")
    for k in range(3):
        assert probe(cluster.pod(f"p{k + 1}"), "tcp", 80, [vip], 24000 + k) == ["ok"]


def cut_rules(address: str) -> list[list[str]]:
    return [["INPUT", "-s", address, "-j", "DROP"], ["OUTPUT", "-d", address, "-j", "DROP"]]


def iptables(cluster, op: str, rule: list[str]) -> None:
    """A packet filter rule in host 1's namespace (-I to add, -D to remove)."""
    subprocess.run(["ip", "netns", "exec", cluster.hosts[0], "iptables", op, *rule],
                   check=op == "-I", capture_output=True)


@pytest.mark.long
def test_a_node_cut_off_from_etcd_for_longer_than_its_lease_comes_back_whole(cluster):
    """Host 1 cannot reach etcd while etcd restarts (so the watch connection n1 had is dead and
    nobody tells it: the partition drops etcd's reset) and n1's lease runs out."""
    before = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in cluster.get("nodes")["items"]}
    before_cut = cluster.status("n1")["store"]
    lost = before_cut["lease_lost"]
    rules = [rule for address in (ETCD_ADDRESS, ETCD_ALSO) for rule in cut_rules(address)]
    try:
        for rule in rules:
            iptables(cluster, "-I", rule)
        wait_for(lambda: not cluster.status("n1")["store"]["reachable"], timeout=4 * TTL,
                 what="n1 to find etcd unreachable")
        cluster.etcd.kill()
        cluster.etcd.start()
        cluster.apply(SERVICE.replace("name: web}", "name: meanwhile}"), "meanwhile.yaml")
        wait_for(lambda: all("n1" not in {p["node"] for p in cluster.status(n)["peers"]}
                             for n in ("n2", "n3")), timeout=4 * TTL, interval=0.1,
                 what="n1's lease to run out")
        assert not any(f["service"] == "default/meanwhile"
                       for f in cluster.status("n1")["services"])
    finally:
        for rule in rules:
            iptables(cluster, "-D", rule)
    healed = time.monotonic()
    wait_for(lambda: any(f["service"] == "default/meanwhile" and f["backends"]
                         for f in cluster.status("n1")["services"]), timeout=30,
             what="n1 to serve what was applied while it was cut off")
    print(f"n1 served the Service applied meanwhile {time.monotonic() - healed:.1f} s after "
          "the partition ended")
    # the watch may serve it before the lease keepalive's back-off ends and it finds its lease gone
    wait_for(lambda: cluster.status("n1")["store"]["lease_lost"] == lost + 1, timeout=4 * TTL,
             interval=0.1, what="n1 to find its lease gone and take another")
    store = cluster.status("n1")["store"]
    # the dead watch goes one of two ways, by timing: given up when etcd answers again
    # (rewatches), or found dead by its TCP keepalives first (lost_streams)
    assert store["lease_lost"] == lost + 1
    assert (store["rewatches"] > before_cut["rewatches"]
            or store["lost_streams"] > before_cut["lost_streams"]), store
    assert {n["metadata"]["name"]: n["spec"]["podCIDR"]
            for n in cluster.get("nodes")["items"]} == before
    wait_for(lambda: all("n1" in {p["node"] for p in cluster.status(n)["peers"]}
                         for n in ("n2", "n3")), timeout=10, what="n1 a peer again")
    ips = [pod_ip(cluster, k) for k in range(3)]
    wait_for(lambda: probe(cluster.pod("p2"), "tcp", TCP_PORT, [ips[0]], 25000) == ["ok"],
             timeout=20, interval=0.5, what="p1 reachable from host 2 again")


@pytest.mark.long
def test_a_watch_whose_endpoint_went_silent_is_found_dead_and_replaced(cluster):
    """etcd answers at two addresses, as the members of an etcd cluster do. Host 1 loses the
    one its watch is on, without a word: its requests turn to the other at once (the store is
    never unreachable), and the watch's silent connection fails its TCP keepalives; the node
    lists through the other endpoint and watches there."""
    # a watch an earlier test's partition left dead is found by its keepalives: until then none
    wait_for(lambda: cluster.status("n1")["store"]["watching"], timeout=30, interval=0.1,
             what="n1 to have a watch open")
    store = cluster.status("n1")["store"]
    first, lost = store["watching"], store["lost_streams"]
    if not first:
        pytest.fail(f"n1 has no watch open: {store}")
    rules = cut_rules(first.split("//")[1].split(":")[0])
    try:
        for rule in rules:
            iptables(cluster, "-I", rule)
        cut = time.monotonic()
        cluster.apply(SERVICE.replace("name: web}", "name: silent}"), "silent.yaml")
        wait_for(lambda: any(f["service"] == "default/silent" and f["backends"]
                             for f in cluster.status("n1")["services"]), timeout=40,
                 interval=0.2, what="n1 to serve what was applied after its watch went silent")
        print(f"n1 served the Service {time.monotonic() - cut:.1f} s after its watch's endpoint "
              "went silent")
        # the change may come by a list through the other endpoint first; the silent watch is
        # found dead by its TCP keepalives (within 11 s) and opened on the other endpoint
        wait_for(lambda: (lambda s: s["lost_streams"] == lost + 1
                          and s["watching"] not in (first, None))(
                              cluster.status("n1")["store"]),
                 timeout=30, interval=0.2, what="n1's silent watch found dead and replaced")
    finally:
        for rule in rules:
            iptables(cluster, "-D", rule)


@pytest.mark.long
def test_compaction_under_running_watches_nodes_resynchronise(cluster):
    frozen = cluster.procs["n2"]
    churn = [(f"churn-{k}", 81 + k) for k in range(4)]

    def services(port_of) -> str:
        return "---".join(SERVICE.replace("name: web}", f"name: {name}}}").replace(
            "port: 80,", f"port: {port_of(port)},") for name, port in churn)
    # n2 stops reading its watch while the store changes: etcd's buffers for it fill (a few
    # hundred events; SMALL_TCP), etcd marks its watcher as behind, and the compaction
    # cancels it
    resyncs = cluster.status("n2")["store"]["resyncs"]
    frozen.send_signal(19)   # SIGSTOP
    try:
        cluster.apply(services(lambda port: port), "churn1.yaml")
        cluster.put_many("namespaces/churn", 400, 4000)
        cluster.apply(services(lambda port: port + 100), "churn2.yaml")
        revision = json.loads(cluster.etcd.etcdctl("endpoint", "status", "-w", "json").stdout)[0][
            "Status"]["header"]["revision"]
        cluster.etcd.etcdctl("compact", str(revision))
    finally:
        frozen.send_signal(18)   # SIGCONT
    want = {f"default/{name}": port + 100 for name, port in churn}

    def ports(node):
        return {f["service"]: int(f["frontend"].rsplit(":", 1)[1].split("/")[0])
                for f in cluster.status(node)["services"] if f["service"] in want}
    wait_for(lambda: all(ports(n) == want for n in cluster.names)
             and cluster.status("n2")["store"]["resyncs"] > resyncs, timeout=30,
             what="every node to serve the last state, n2 after listing again")
    store = cluster.status("n2")["store"]
    print(f"n2 after the compaction: {store['compactions']} compacted watches, "
          f"{store['resyncs']} resyncs, {store['events']} events")
    if store["compactions"] < 1:
        pytest.fail("n2's watch was not canceled by the compaction: the test did not test it")
    assert store["resyncs"] >= 1
    print("compacted watches of n1, n3:", [cluster.status(n)["store"]["compactions"]
                                           for n in ("n1", "n3")])
    # and it goes on watching: a change after the compaction is served everywhere
    cluster.apply(SERVICE.replace("name: web}", "name: churn-0}").replace("port: 80,",
                                                                          "port: 7070,"), "c.yaml")
    want["default/churn-0"] = 7070
    wait_for(lambda: all(ports(n) == want for n in cluster.names), timeout=10,
             what="the change everywhere")
    cluster.vrouter("delete", "namespace", "churn", "--cluster", str(cluster.path))
