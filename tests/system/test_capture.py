"""vrouter capture: pcapng of a pod's port and of the overlay, from a running node, read back by
scapy and by tcpdump; the node stops copying frames when the capture goes away."""
import io
import signal
import subprocess
import sys

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether  # noqa: F401  (registers Ethernet for pcapng link type 1)
from scapy.utils import PcapNgReader

from tests.system.cluster import wait_for

PINGS = 3


def start_capture(cluster, *args) -> subprocess.Popen:
    """`vrouter capture ... -w -`, returned once the node has armed it (it says so on stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "vrouter", "capture", cluster.prefix, *args,
                             "-w", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stderr.readline().decode()
    if not line.startswith("capturing"):
        proc.kill()
        pytest.fail(f"capture did not start: {line}{proc.stderr.read().decode()}")
    return proc


def stop_capture(proc) -> list:
    proc.send_signal(signal.SIGINT)
    data, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    return list(PcapNgReader(io.BytesIO(data))), data


def echoes(packets, kind):
    return [p for p in packets if ICMP in p and p[ICMP].type == kind]


def test_capture_a_pod_port_both_ways_and_the_overlay(demo):
    a1 = demo.ip("a1")
    pod = start_capture(demo, "--pod", demo.pod("a1"), "--both")
    overlay = start_capture(demo, "--node", "node-a", "--overlay")
    try:
        ping = demo.sh("b1", "ping", "-c", str(PINGS), "-i", "0.2", "-W", "2", a1)
        assert ping.returncode == 0, ping.stdout
    finally:
        (pod_packets, pod_bytes), (overlay_packets, _) = stop_capture(pod), stop_capture(overlay)

    requests, replies = echoes(pod_packets, 8), echoes(pod_packets, 0)
    assert len(requests) == PINGS and len(replies) == PINGS
    assert {p.sniffed_on for p in pod_packets} == {demo.pod("a1")}
    assert all(p.direction == 2 and p[IP].dst == a1 for p in requests)     # written to the pod
    assert all(p.direction == 1 and p[IP].src == a1 for p in replies)      # read from it

    over = [p for p in echoes(overlay_packets, 8) if p[IP].dst == a1]
    assert len(over) == PINGS and {p.sniffed_on for p in over} == {"overlay"}
    assert all(p[IP].src == demo.ip("b1") for p in over)                   # the inner frames

    tcpdump = subprocess.run(["tcpdump", "-nr", "-"], input=pod_bytes, capture_output=True,
                             timeout=30)
    assert tcpdump.returncode == 0, tcpdump.stderr
    assert tcpdump.stdout.decode().count(f"> {a1}: ICMP echo request") == PINGS

    # the client went away: the node forgets the sessions and stops copying frames
    wait_for(lambda: demo.status("node-a")["datapath"]["captures"] == 0, what="captures closed")


def test_capture_refuses_an_unknown_pod(demo):
    result = subprocess.run([sys.executable, "-m", "vrouter", "capture", demo.prefix, "--node",
                             "node-a", "--pod", "nobody", "--seconds", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no pod 'nobody' on node-a" in result.stderr
