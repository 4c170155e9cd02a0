"""`vrouter observe` on a real cluster (configs/policies.yaml with unique names): a curl between
two pods (start and end, with bytes), a connection through a ClusterIP with its backend, a
NetworkPolicy drop with the policy's name; JSON that parses; filters; following."""
import json
import subprocess
import sys
import time

import pytest

from tests.system.cluster import child_env, wait_for
from tests.system.policies_demo import curl


@pytest.fixture
def pol(policies_demo):
    return policies_demo


def observe(cluster, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vrouter", "observe", cluster.prefix, *args],
                          capture_output=True, text=True, timeout=timeout, env=child_env())


def flows(cluster, *args) -> list[dict]:
    result = observe(cluster, "-o", "json", "--last", "1000", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["flow"] for line in result.stdout.splitlines()]


def wait_flows(cluster, predicate, *args, timeout=10.0) -> list[dict]:
    """The flows once one of them satisfies `predicate` (the nodes drain within a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = flows(cluster, *args)
        if any(predicate(f) for f in found):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"no flow satisfied the predicate within {timeout:g} s; flows: "
                        + json.dumps(found[-10:], indent=1))
        time.sleep(0.2)


def test_a_curl_between_two_pods_starts_and_ends_with_its_bytes(pol):
    frontend, api = pol.pod("frontend"), pol.pod("api")
    assert curl(pol, "frontend", f"http://{pol.ip('api')}:8080/") == 0

    def ended(f):
        return f["event"] == "end" and f["source"].get("pod_name") == frontend \
            and f["destination"].get("pod_name") == api and f["node_name"] == "node-a"
    def arrived(f):   # node-b, where the api's policy selects it, saw the connection arrive
        return f["event"] == "start" and f["node_name"] == "node-b" and f["type"] == "to-endpoint"
    # each node drains its own ring: node-a's end may be read before node-b's start
    wait_flows(pol, ended, "--from-pod", f"shop/{frontend}", "--to-pod", f"shop/{api}")
    found = wait_flows(pol, arrived, "--from-pod", f"shop/{frontend}", "--to-pod", f"shop/{api}")
    start = next(f for f in found if f["event"] == "start" and f["node_name"] == "node-a")
    end = next(f for f in found if ended(f))
    assert start["verdict"] == "FORWARDED" and start["type"] == "to-overlay"
    assert start["l4"]["TCP"]["destination_port"] == 8080 and start["l4"]["TCP"]["flags"] == \
        {"SYN": True}
    # the request went one way and the page (python's directory listing) came back
    packets, sent = end["traffic"]["packets"], end["traffic"]["bytes"]
    assert packets[0] >= 4 and packets[1] >= 3 and sent[1] > sent[0] > 200
    assert end["reason"] == "closed" and end["verdict"] == "FORWARDED"
    assert any(arrived(f) for f in found)
    text = observe(pol, "--from-pod", f"shop/{frontend}", "--to-pod", f"shop/{api}",
                   "--event", "end").stdout
    assert f"[node-a]: shop/{frontend}:" in text and f" shop/{api}:8080 ct-closed FORWARDED" \
        in text and "closed: " in text


def test_a_connection_through_a_clusterip_names_the_service_and_its_backend(pol):
    api = pol.pod("api")
    assert curl(pol, "frontend", "http://api.shop:8080/") == 0   # DNS, then the ClusterIP
    found = wait_flows(pol, lambda f: f["event"] == "start" and f.get(
        "destination_service", {}).get("name") == "api", "--service", "shop/api")
    start = next(f for f in found if f["event"] == "start" and f["node_name"] == "node-a")
    assert start["verdict"] == "TRANSLATED"
    assert start["destination"]["pod_name"] == api and start["IP"]["destination"] == pol.ip("api")
    assert start["destination_service"]["address"].endswith(":8080")
    assert f"Service shop/api port http" in start["Summary"]
    # and the name was looked up first: UDP to kube-dns, on the frontend's own node
    dns = flows(pol, "--protocol", "udp", "--from-pod", f"shop/{pol.pod('frontend')}")
    assert dns and all(f["protocol"] == "udp" for f in dns)
    assert {f["destination_service"]["name"] for f in dns if "destination_service" in f} == \
        {"kube-dns"}


def test_a_policy_drop_is_shown_with_the_policy_name(pol):
    debug, api = pol.pod("debug"), pol.pod("api")
    assert curl(pol, "debug", f"http://{pol.ip('api')}:8080/", seconds=1) == 28
    found = wait_flows(pol, lambda f: f["verdict"] == "DROPPED", "--verdict", "DROPPED",
                       "--from-pod", f"tools/{debug}")
    drop = next(f for f in found if f["verdict"] == "DROPPED")
    assert drop["node_name"] == "node-b" and drop["destination"]["pod_name"] == api
    assert drop["ingress_denied_by"] == [{"name": "api-from-frontend", "namespace": "shop",
                                          "kind": "NetworkPolicy"}]
    assert all(f["verdict"] == "DROPPED" for f in found)   # the filter held
    text = observe(pol, "--verdict", "dropped", "--from-pod", f"tools/{debug}").stdout
    assert (f"[node-b]: tools/{debug}:" in text and f"-> shop/{api}:8080 "
            "policy-verdict:INGRESS DROPPED" in text and "shop/api-from-frontend" in text), text
    table = observe(pol, "-o", "table", "--verdict", "DROPPED", "--last", "3").stdout
    assert table.splitlines()[0].split() == ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION",
                                             "TYPE", "VERDICT", "SUMMARY"]


def test_follow_prints_a_new_connection_as_it_happens(pol):
    follower = subprocess.Popen([sys.executable, "-m", "vrouter", "observe", pol.prefix, "-f",
                                 "-o", "json", "--from-pod", f"shop/{pol.pod('frontend')}",
                                 "--port", "5432"], stdout=subprocess.PIPE, text=True,
                                env=child_env())
    try:
        # ready once both nodes count it among their flow log's followers
        wait_for(lambda: follower.poll() is not None or all(
            pol.status(n)["flows"]["followers"] >= 1 for n in ("node-a", "node-b")),
            what="the follower connected")
        assert follower.poll() is None
        # the frontend's egress policy refuses the database: dropped on node-a
        assert curl(pol, "frontend", f"http://{pol.ip('db')}:5432/", seconds=1) == 28
        line = follower.stdout.readline()
        flow = json.loads(line)["flow"]
        assert (flow["verdict"], flow["reason"], flow["node_name"]) == \
            ("DROPPED", "drop_policy_egress", "node-a")
        assert flow["egress_denied_by"][0]["name"] == "frontend-egress"
    finally:
        follower.terminate()
        follower.wait(10)


@pytest.mark.parametrize("args,message", [
    (("--verdict", "MAYBE"), "--verdict 'MAYBE': one of FORWARDED, TRANSLATED, DROPPED, REJECTED"),
    (("--since", "soon"), "--since 'soon': a duration such as 30s"),
    (("--port", "http"), "--port 'http': a port number"),
    (("--node", "node-z"), "--node 'node-z': no vrouter node of that name"),
])
def test_filters_that_do_not_parse_are_refused_naming_the_filter(pol, args, message):
    result = observe(pol, *args)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
