"""Cross-node traffic over the VXLAN overlay, seen from the pods and from the underlay."""
import signal
import subprocess

from tests.system.test_pods import ping


def test_full_size_packet_with_df_crosses_the_overlay(demo):
    # 1422 bytes of ICMP data = 1450-byte IP packets: exactly the pod MTU
    result = ping(demo, "a1", demo.ip("b1"), "-M", "do", "-s", "1422", count=2)
    assert result.returncode == 0, result.stdout + result.stderr


def test_too_big_with_df_gets_frag_needed_with_the_pod_mtu(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1))
    # a pod that believes its link is bigger than the overlay can carry
    cluster.sh("a1", "ip", "link", "set", "eth0", "mtu", "1500", check=True)
    result = ping(cluster, "a1", cluster.ip("b1"), "-M", "do", "-s", "1472", count=1)
    assert result.returncode != 0
    assert "From 10.244.1.1" in result.stdout and "mtu = 1450" in result.stdout, result.stdout


def capture_overlay(port, args, action):
    dump = subprocess.Popen(["tcpdump", "-lni", "lo", "-c", "4", *args, f"udp port {port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while "listening on lo" not in (line := dump.stderr.readline()):
            assert line, "tcpdump exited"
        action()
        out, _ = dump.communicate(timeout=20)
    finally:
        if dump.poll() is None:
            dump.send_signal(signal.SIGINT)
            dump.communicate(timeout=10)
    return out


def test_tcpdump_on_the_underlay_decodes_vxlan(demo):
    out = capture_overlay(4789, [], lambda: ping(demo, "a1", demo.ip("b1"), count=2))
    assert "VXLAN, flags [I] (0x08), vni 1" in out
    assert f"{demo.ip('a1')} > {demo.ip('b1')}: ICMP echo request" in out
    assert f"{demo.ip('b1')} > {demo.ip('a1')}: ICMP echo reply" in out


def test_overlay_on_the_linux_port_8472(make_cluster):
    cluster = make_cluster(pods_per_node=(1, 1), port=8472)
    # tcpdump decodes 8472 as OTV unless told it is VXLAN
    out = capture_overlay(8472, ["-T", "vxlan"], lambda: ping(cluster, "a1", cluster.ip("b1"), count=2))
    assert "VXLAN" in out and "ICMP echo request" in out and "ICMP echo reply" in out


def test_a_silent_peer_is_marked_down_and_traffic_resumes_when_it_answers(make_cluster):
    from tests.system.cluster import wait_for
    cluster = make_cluster(pods_per_node=(1, 1))
    node_b = cluster.status("node-b")["pid"]
    subprocess.run(["kill", "-STOP", str(node_b)], check=True)   # node-b hangs: no answers
    try:
        wait_for(lambda: not cluster.status("node-a")["peers"][0]["up"], timeout=30,
                 what="node-b marked down")
        assert ping(cluster, "a1", cluster.ip("b1"), count=2).returncode != 0
        assert cluster.counters("node-a")["drop_overlay_peer_down"] >= 2
    finally:
        subprocess.run(["kill", "-CONT", str(node_b)], check=True)
    wait_for(lambda: cluster.status("node-a")["peers"][0]["up"], timeout=30, what="node-b back up")
    result = ping(cluster, "a1", cluster.ip("b1"), count=2)
    assert result.returncode == 0, result.stdout   # no restart needed


def test_hostile_datagrams_on_the_underlay_are_counted_and_the_node_goes_on(make_cluster):
    """From the other node's underlay address (loopback), while node-a is stopped so that they
    queue up: an empty datagram, garbage, and 100 GSO trains of 128 9-byte datagrams (64 queued
    trains are twice what one batch has frames for). Node-a drops and counts every one of them
    and keeps forwarding."""
    import socket
    import struct

    from tests.system.cluster import wait_for
    cluster = make_cluster(pods_per_node=(1, 1))
    node_a = cluster.nodes[0]["underlay"]
    pid = cluster.status("node-a")["pid"]
    before = cluster.counters("node-a")
    subprocess.run(["kill", "-STOP", str(pid)], check=True)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((cluster.nodes[1]["underlay"], 0))   # node-b's address, another port
            s.sendto(b"", (node_a, 4789))
            s.sendto(b"\x08" + bytes(200), (node_a, 4789))
            for _ in range(100):
                s.sendmsg([bytes(9 * 128)], [(17, 103, struct.pack("H", 9))], 0, (node_a, 4789))
    finally:
        subprocess.run(["kill", "-CONT", str(pid)], check=True)
    expected = 2 + 100 * 128

    def counted():
        return cluster.counters("node-a")["rx_frames"] - before["rx_frames"] >= expected
    wait_for(counted, what="every datagram counted")
    c = cluster.counters("node-a")
    no_room = c["drop_no_room"] - before["drop_no_room"]
    truncated = c["drop_overlay_truncated"] - before["drop_overlay_truncated"]
    assert no_room > 0 and no_room + truncated >= 100 * 128 + 1   # the tiny ones, the empty one
    assert cluster.status("node-a")["ready"]
    assert ping(cluster, "a1", cluster.ip("b1"), count=2).returncode == 0
