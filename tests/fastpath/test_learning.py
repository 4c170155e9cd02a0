"""The learning tables: a MAC flood from one pod is capped per port and bounded, ages out, and
never costs more than a window of probes; outside neighbours likewise."""
import random

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from fastpath import learning
from tests.fastpath.test_services import make_dp
from tests.harness import process
from vrouter.model import config
from vrouter.model.config import DEFAULT_FDB_MAX_PER_PORT
from vrouter.node.dataplane import Dataplane
from vrouter.node.tables import mac_to_int

A_IP, A_MAC = "10.244.1.2", "0a:58:0a:f4:01:02"    # web-1, port 0
B_IP, B_MAC = "10.244.1.3", "0a:58:0a:f4:01:03"    # web-2, port 1


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def dp_with_clock(extra=""):
    clock = Clock()
    cluster = config.parse(open("configs/demo.yaml").read().replace(
        "  overlay:", extra + "  overlay:"), "demo.yaml", check_host=False)
    return Dataplane(cluster, "node-a", clock=clock), clock


def frame(src_mac, dst_mac=B_MAC, src=A_IP, dst=B_IP):
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / UDP(sport=1, dport=2))


def random_macs(n, seed=1):
    rng = random.Random(seed)
    return ["02:%02x:%02x:%02x:%02x:%02x" % tuple(rng.randrange(256) for _ in range(5))
            for _ in range(n)]


def learned(dp, port):
    return [e for e in dp.fdb_entries() if e["port"] == port and not e["static"]]


def test_a_mac_flood_from_one_pod_is_capped_at_its_port_and_the_others_still_learn():
    dp, _clock = dp_with_clock()
    macs = random_macs(5000)
    for k in range(0, len(macs), 64):
        process(dp, [(0, frame(m)) for m in macs[k:k + 64]])
    counts = dp.counter_dict()
    assert len(learned(dp, 0)) == DEFAULT_FDB_MAX_PER_PORT
    assert counts["fdb_learn_port_limit"] == 5000 - DEFAULT_FDB_MAX_PER_PORT
    # the flood cost nothing the other port needs: web-2's extra MAC is learned, and frames to
    # it are delivered, not flooded
    extra = "02:aa:bb:cc:dd:ee"
    process(dp, [(1, frame(extra, dst_mac=A_MAC, src=B_IP, dst=A_IP))])
    assert [e["mac"] for e in learned(dp, 1)] == [extra]
    ((target, _),) = process(dp, [(0, frame(A_MAC, dst_mac=extra))])
    assert target == 1
    # and a pod's own MAC is still its own: claiming it from the other port is spoofing
    assert process(dp, [(1, frame(A_MAC, src=B_IP, dst=A_IP))]) == []
    assert dp.counter_dict()["drop_spoofed_mac"] == 1


def test_learned_macs_age_out_and_free_their_ports_share():
    dp, clock = dp_with_clock("  fdbAgeSeconds: 10\n  fdbMaxPerPort: 4\n")
    first = random_macs(4, seed=2)
    process(dp, [(0, frame(m)) for m in first])
    assert len(learned(dp, 0)) == 4
    process(dp, [(0, frame(random_macs(1, seed=3)[0]))])
    assert dp.counter_dict()["fdb_learn_port_limit"] == 1
    clock.now += 11
    assert learned(dp, 0) == []                       # aged out: not shown, not used
    assert dp.sweep()["macs"] == 4                     # and freed, the port's share recounted
    assert int(dp.tables.bridge.fdb_owned[0]) == 0
    second = random_macs(4, seed=4)
    process(dp, [(0, frame(m)) for m in second])
    assert sorted(e["mac"] for e in learned(dp, 0)) == sorted(second)


def test_a_full_window_costs_a_window_of_probes_not_the_table():
    keys, vals = learning.new_table(64)
    owned = np.zeros(4, dtype=np.int64)
    results = [learning.learn(keys, vals, k * 64 + 1, 0, 1000, 300, owned, 0, 1 << 30)
               for k in range(1, 200)]   # many keys, few windows
    assert results.count(learning.TABLE_FULL) > 0
    assert np.count_nonzero(keys) <= 64 and int(owned[0]) == np.count_nonzero(keys)
    assert learning.find(keys, vals, 12345, 1000, 300) == -1


def test_outside_neighbours_gleaned_are_bounded_and_preset_ones_stay():
    dp = make_dp(extra="", **{"  overlay:": "  nodeNetwork: 172.18.0.0/16\n  overlay:"})
    uplink = dp.uplink
    node_mac = dp.node.mac
    for k in range(3000):   # a flood of outside sources, each a new neighbour
        src = f"172.18.{10 + k // 250}.{k % 250 + 1}"
        process(dp, [(uplink, bytes(Ether(src=f"02:00:00:00:{k >> 8:02x}:{k & 255:02x}",
                                         dst=node_mac) / IP(src=src, dst=str(dp.node.address))
                                   / UDP(sport=1, dport=9)))])
    table = dp.tables.outside
    assert np.count_nonzero(table.nb_keys) <= table.nb_keys.shape[0]
    assert dp.counter_dict()["outside_neighbour_table_full"] > 0
    known = dict(dp.outside_neighbours())
    peer = dp.peers[0]
    assert known[int(peer.address)] == peer.mac   # preset entries survive any flood
    assert mac_to_int(peer.mac) == int(table.nb_vals[learning.find(
        table.nb_keys, table.nb_vals, int(peer.address), dp.now, 300), learning.L_VALUE])
