"""The sans-IO parts of pods' programs (vrouter.node.programs): the kubelet's restart back-off,
the bounded log ring, $(VAR) expansion and the environment a program gets."""
import ipaddress

from vrouter.model import config, podspec
from vrouter.node.programs import Backoff, LogRing, environment, expand, hostname


def test_back_off_is_the_kubelets_at_once_then_10s_doubling_to_5_minutes():
    b = Backoff()
    t, waits = 0.0, []
    for _ in range(8):   # a program that exits one second after each start
        wait = b.delay(t)
        waits.append(wait)
        t += wait + 1
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300]


def test_back_off_starts_again_after_a_long_run():
    b = Backoff()
    assert b.delay(0) == 0 and b.delay(1) == 10
    assert b.delay(11 + 601) == 0   # ran for 10 minutes: the count starts again
    assert b.delay(11 + 602) == 10


def test_the_log_ring_keeps_whole_lines_within_its_bound_and_counts_the_rest():
    ring = LogRing(limit=100)
    ring.feed(b"first li")
    assert ring.tail() == []   # no newline yet
    ring.feed(b"ne\nsecond\n")
    assert ring.tail() == ["first line", "second"]
    for k in range(30):
        ring.feed(f"line {k}\n".encode())
    assert ring.size <= 100 and ring.dropped > 0
    assert ring.tail(2) == ["line 28", "line 29"] and ring.tail(0) == []
    assert len(ring.tail()) + ring.dropped == 32
    ring.feed(b"no newline at the end")
    ring.flush()
    assert ring.tail(1) == ["no newline at the end"]
    ring.feed("caf\u00e9 \xff".encode("latin-1") + b"\n")   # not UTF-8: replaced, not refused
    assert ring.tail(1)[0].startswith("caf")


def test_a_very_long_line_is_cut_into_pieces():
    ring = LogRing()
    ring.feed(b"x" * (40 << 10) + b"\n")
    assert [len(line) for line in ring.tail()] == [16 << 10, 16 << 10, 8 << 10]


def test_expansion_as_kubernetes_does_it():
    env = {"PORT": "8080", "NAME": "web"}
    assert expand("--port=$(PORT)", env) == "--port=8080"
    assert expand("$(NAME)-$(PORT)", env) == "web-8080"
    assert expand("$(MISSING) stays", env) == "$(MISSING) stays"
    assert expand("$$(PORT) is escaped, $$ is $", env) == "$(PORT) is escaped, $ is $"
    assert expand("$(incomplete", env) == "$(incomplete"


def test_the_environment_has_the_pods_identity_and_the_containers_env_in_order():
    pod = config.Pod(name="web-1", namespace="shop", node="node-a",
                     ip=ipaddress.IPv4Address("10.244.1.7"), mac="0a:58:0a:f4:01:07",
                     netns="web-1", owns_netns=True, hostname="")
    container = podspec.Container(name="c", argv=("x",), env=(
        ("PORT", "value", "8080"), ("URL", "value", "http://$(MY_IP):$(PORT)/"),
        ("MY_IP", "field", "status.podIP"), ("LATE", "value", "$(MY_IP)"),
        ("NS", "field", "metadata.namespace"), ("NODE", "field", "spec.nodeName")))
    env = environment(pod, container, "172.18.0.2")
    assert env["HOSTNAME"] == "web-1" == hostname(pod)
    assert env["URL"] == "http://$(MY_IP):8080/"   # MY_IP comes after it
    assert (env["MY_IP"], env["LATE"], env["NS"], env["NODE"]) == ("10.244.1.7", "10.244.1.7",
                                                                   "shop", "node-a")
    assert "PATH" in env and env["HOME"] == "/root"
