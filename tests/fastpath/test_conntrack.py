"""Connection tracking: one record per connection (two keys), TCP states and timeouts, the reset
window, bounded tables with early drop, session affinity by Service port, flushes on reload."""
import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from fastpath import conntrack as ct
from tests.fastpath.test_services import (
    A_IP, A_MAC, B_IP, B_MAC, GW_MAC, SERVICE, VIP, first_flow, inner, make_dp, to_vip,
)
from tests.harness import OVERLAY_TARGET, process
from vrouter.model import config
from vrouter.node.dataplane import Dataplane
from vrouter.node.tables import ip_to_int


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def clocked_dp(extra=SERVICE, **replace):
    clock = Clock()
    base = make_dp(extra, **replace).cluster
    return Dataplane(base, "node-a", clock=clock), clock


def record(dp, sport, proto=6, dport=80):
    """The connection record of A:sport -> VIP:dport, or -1."""
    k0, k1 = ct.tuple_key(ip_to_int(A_IP), ip_to_int(VIP), proto, sport, dport)
    rec, direction = ct.lookup(dp.tables.conntrack, k0, k1, dp.now)
    assert rec < 0 or direction == 0
    return rec


def state(dp, rec):
    recs = dp.tables.conntrack.recs
    return ct.TCP_STATE_NAMES[int(recs[rec, ct.C_STATE])], int(recs[rec, ct.C_EXPIRES]) - dp.now


def local_flow(dp, sports, proto="tcp"):
    """A flow from A (port 0) to the VIP that lands on B (port 1): (sport, packet at B)."""
    sport, _target, pkt = first_flow(dp, sports, lambda t, p: t == 1 and p[IP].dst == B_IP, proto)
    return sport, pkt


def from_b(sport, flags, seq=0, ack=0, window=8192, payload=b""):
    return bytes(Ether(src=B_MAC, dst=GW_MAC) / IP(src=B_IP, dst=A_IP)
                 / TCP(sport=8080, dport=sport, flags=flags, seq=seq, ack=ack, window=window)
                 / payload)


def from_a(sport, flags, seq=0, ack=0, window=8192, payload=b""):
    return bytes(Ether(src=A_MAC, dst=GW_MAC) / IP(src=A_IP, dst=VIP)
                 / TCP(sport=sport, dport=80, flags=flags, seq=seq, ack=ack, window=window)
                 / payload)


def test_one_record_two_keys_and_both_directions_share_expiry():
    dp, clock = clocked_dp()
    sport, _ = local_flow(dp, range(40000, 40100), "udp")
    rec = record(dp, sport, 17, 53)
    refs = dp.tables.conntrack.slots[:, ct.SL_REF]
    assert rec >= 0 and np.count_nonzero(refs == rec * 2 + 1) == 1   # its original key
    assert np.count_nonzero(refs == rec * 2 + 2) == 1                  # and its reply key
    reply = bytes(Ether(src=B_MAC, dst=GW_MAC) / IP(src=B_IP, dst=A_IP)
                  / UDP(sport=5353, dport=sport) / b"r")
    ((target, frame),) = process(dp, [(1, reply)])
    assert target == 0 and Ether(frame)[IP].src == VIP
    # a one-way flow afterwards: the client keeps sending for 10 minutes, the backend is silent;
    # the reply direction shares the record's expiry, so a late answer is still un-NATed
    for _ in range(20):
        clock.now += ct.T_UDP_UNREPLIED
        ((target, frame),) = process(dp, [(0, bytes(to_vip(sport, "udp")))])
        assert target == 1 and Ether(frame)[IP].dst == B_IP
    ((target, frame),) = process(dp, [(1, reply)])
    assert target == 0 and Ether(frame)[IP].src == VIP and Ether(frame)[UDP].sport == 53
    recs = dp.tables.conntrack.recs
    assert (recs[rec, ct.C_PKTS_O], recs[rec, ct.C_PKTS_R]) == (21, 2)


def test_udp_times_out_after_30_s_unanswered_and_120_s_answered():
    dp, clock = clocked_dp()
    sport, _ = local_flow(dp, range(40100, 40200), "udp")
    rec = record(dp, sport, 17, 53)
    assert int(dp.tables.conntrack.recs[rec, ct.C_EXPIRES]) - dp.now == ct.T_UDP_UNREPLIED
    assert not dp.tables.conntrack.recs[rec, ct.C_FLAGS] & ct.F_ASSURED
    process(dp, [(1, bytes(Ether(src=B_MAC, dst=GW_MAC) / IP(src=B_IP, dst=A_IP)
                           / UDP(sport=5353, dport=sport)))])
    assert int(dp.tables.conntrack.recs[rec, ct.C_EXPIRES]) - dp.now == ct.T_UDP_REPLIED
    assert dp.tables.conntrack.recs[rec, ct.C_FLAGS] & ct.F_ASSURED
    clock.now += ct.T_UDP_REPLIED + 1
    assert record(dp, sport, 17, 53) < 0
    assert dp.conntrack_fill()["entries"] == 0


def test_tcp_follows_the_handshake_and_the_close_with_linux_timeouts():
    dp, clock = clocked_dp()
    sport, _ = local_flow(dp, range(41000, 41100))
    rec = record(dp, sport)
    recs = dp.tables.conntrack.recs
    assert state(dp, rec) == ("SYN_SENT", ct.T_TCP_SYN_SENT)
    process(dp, [(1, from_b(sport, "SA", seq=5000, ack=1))])
    assert state(dp, rec) == ("SYN_RECV", ct.T_TCP_SYN_RECV)
    assert not recs[rec, ct.C_FLAGS] & ct.F_ASSURED
    process(dp, [(0, from_a(sport, "A", seq=1, ack=5001))])
    assert state(dp, rec) == ("ESTABLISHED", ct.T_TCP_ESTABLISHED)
    assert recs[rec, ct.C_FLAGS] & ct.F_ASSURED
    process(dp, [(0, from_a(sport, "PA", seq=1, ack=5001, payload=b"x" * 100))])
    process(dp, [(0, from_a(sport, "FA", seq=101, ack=5001))])   # half-closed: short timeout
    assert state(dp, rec) == ("FIN_WAIT", ct.T_TCP_FIN_WAIT)
    process(dp, [(1, from_b(sport, "A", seq=5001, ack=102))])
    assert state(dp, rec) == ("CLOSE_WAIT", ct.T_TCP_CLOSE_WAIT)
    process(dp, [(1, from_b(sport, "FA", seq=5001, ack=102))])
    assert state(dp, rec) == ("LAST_ACK", ct.T_TCP_LAST_ACK)
    process(dp, [(0, from_a(sport, "A", seq=102, ack=5002))])
    assert state(dp, rec) == ("TIME_WAIT", ct.T_TCP_TIME_WAIT)
    clock.now += ct.T_TCP_TIME_WAIT + 1
    assert record(dp, sport) < 0


def established(dp, sports):
    sport, _ = local_flow(dp, sports)
    process(dp, [(1, from_b(sport, "SA", seq=5000, ack=1, window=1000))])
    process(dp, [(0, from_a(sport, "A", seq=1, ack=5001, window=1000))])
    return sport, record(dp, sport)


def test_a_reset_outside_the_window_is_dropped_and_changes_nothing():
    dp, _clock = clocked_dp()
    sport, rec = established(dp, range(42000, 42100))
    for seq in (5001 + 50_000, (5001 - 50_000) % 2**32, 0x80000000):   # blind guesses
        assert process(dp, [(1, from_b(sport, "R", seq=seq))]) == []
    assert dp.counter_dict()["drop_tcp_rst_out_of_window"] == 3
    assert state(dp, rec)[0] == "ESTABLISHED"
    ((target, _frame),) = process(dp, [(1, from_b(sport, "R", seq=5001 + 200))])   # in window
    assert target == 0
    assert state(dp, rec) == ("CLOSE", ct.T_TCP_CLOSE)


def test_a_reset_answering_a_syn_must_acknowledge_it():
    dp, _clock = clocked_dp()
    sport, _ = local_flow(dp, range(42100, 42200))
    rec = record(dp, sport)
    assert process(dp, [(1, from_b(sport, "RA", seq=0, ack=12345))]) == []   # not our SYN's
    assert state(dp, rec)[0] == "SYN_SENT"
    # to_vip's SYN carries 5 bytes: it ends at sequence number 6
    ((target, _frame),) = process(dp, [(1, from_b(sport, "RA", seq=0, ack=6))])
    assert target == 0 and state(dp, rec)[0] == "CLOSE"


def test_a_stray_fin_or_reset_for_a_service_opens_nothing_and_is_dropped():
    dp, _clock = clocked_dp()
    for k, flags in enumerate(("R", "F", "FA")):
        assert process(dp, [(0, from_a(43000 + k, flags))]) == []
    assert dp.counter_dict()["drop_service_invalid"] == 3
    assert dp.conntrack_fill()["entries"] == 0


def small_table(entries=64):
    text = open("configs/demo.yaml").read().replace(
        "  overlay:", f"  conntrack: {{maxEntries: {entries}}}\n  overlay:") + SERVICE
    clock = Clock()
    return Dataplane(config.parse(text, "demo.yaml", check_host=False), "node-a", clock=clock), clock


def test_a_full_table_evicts_the_oldest_unassured_connection_with_both_keys():
    dp, clock = small_table(64)
    sports = []
    for k in range(64):   # fill it with unanswered (unassured) UDP flows, one second apart
        process(dp, [(0, bytes(to_vip(44000 + k, "udp")))])
        sports.append(44000 + k)
        clock.now += 0.01
    assert dp.conntrack_fill()["entries"] == 64 == dp.conntrack_fill()["high_water"]
    before = dp.counter_dict()["ct_evicted"]
    for k in range(64, 200):
        out = process(dp, [(0, bytes(to_vip(44000 + k, "udp")))])
        assert len(out) == 1   # admitted: an unassured connection made room
    counts = dp.counter_dict()
    assert counts["ct_evicted"] - before == 200 - 64 and counts["ct_full_refused"] == 0
    assert dp.conntrack_fill()["entries"] == 64 and dp.conntrack_fill()["high_water"] == 64
    live = [s for s in range(44000, 44200) if record(dp, s, 17, 53) >= 0]
    assert len(live) == 64
    # both keys of an evicted connection are gone: no slot refers to a freed record
    c = dp.tables.conntrack
    refs = c.slots[:, ct.SL_REF]
    used = (refs[refs != 0].astype(np.int64) - 1) >> 1
    assert len(used) == 128 and np.all(c.recs[used, ct.C_PROTO] != 0)


def test_a_table_full_of_assured_connections_refuses_new_ones():
    dp, clock = small_table(64)
    for k in range(64):
        sport = 45000 + k
        ((target, frame),) = process(dp, [(0, bytes(to_vip(sport, "udp")))])
        pkt = inner(target, frame)
        if target < OVERLAY_TARGET:
            port, mac = (1, B_MAC) if pkt[IP].dst == B_IP else (0, A_MAC)
            answer = Ether(src=mac, dst=GW_MAC) / IP(src=pkt[IP].dst, dst=pkt[IP].src) \
                / UDP(sport=5353, dport=pkt[UDP].sport)
            process(dp, [(port, bytes(answer))])
        else:   # the remote backend answers over the overlay: mark it answered directly
            c = dp.tables.conntrack
            c.recs[record(dp, sport, 17, 53), ct.C_FLAGS] |= ct.F_ASSURED
    assert dp.conntrack_fill()["entries"] == 64
    assert process(dp, [(0, bytes(to_vip(46000, "udp")))]) == []
    counts = dp.counter_dict()
    assert counts["ct_full_refused"] == 1 and counts["ct_evicted"] == 0
    clock.now += ct.T_UDP_REPLIED + 1   # once they expire, new ones get in again
    assert len(process(dp, [(0, bytes(to_vip(46001, "udp")))])) == 1


def test_the_sweep_frees_what_no_packet_met():
    dp, clock = small_table(64)
    for k in range(10):
        process(dp, [(0, bytes(to_vip(47000 + k, "udp")))])
    assert dp.tables.conntrack.stats[ct.CTS_FREE] == 54
    clock.now += ct.T_UDP_UNREPLIED + 1
    assert dp.sweep()["connections"] == 10
    assert dp.tables.conntrack.stats[ct.CTS_FREE] == 64
    assert not dp.tables.conntrack.slots.any()


def in_use_as_free_says(c) -> list[int]:
    """The records in use as `free` keeps them (its tail), checked against the records
    themselves: free is a permutation of all records and each in use knows its place."""
    n = int(c.stats[ct.CTS_FREE])
    assert sorted(c.free.tolist()) == list(range(c.recs.shape[0]))
    tail = c.free[n:].tolist()
    for place, rec in enumerate(tail, start=n):
        assert c.recs[rec, ct.C_POS] == place
    assert sorted(tail) == sorted(np.nonzero(c.recs[:, ct.C_PROTO])[0].tolist())
    return tail


def test_the_sweep_visits_only_records_in_use_and_frees_exactly_the_expired_ones():
    """Connections opened and ended in a mixed order, some kept alive by traffic: `free` stays
    a permutation whose tail is exactly the records in use, and a sweep frees exactly those
    that expired (a sweep that skipped one, or freed one twice, would break either)."""
    dp, clock = small_table(64)
    c = dp.tables.conntrack
    for k in range(40):
        process(dp, [(0, bytes(to_vip(48000 + k, "udp")))])
    assert len(in_use_as_free_says(c)) == 40
    clock.now += ct.T_UDP_UNREPLIED - 2
    for k in range(0, 40, 3):   # traffic on every third keeps it past the others' expiry
        process(dp, [(0, bytes(to_vip(48000 + k, "udp")))])
    kept = {record(dp, 48000 + k, 17, 53) for k in range(0, 40, 3)}
    clock.now += 4
    assert dp.sweep()["connections"] == 40 - len(kept)
    assert set(in_use_as_free_says(c)) == kept
    dp.mark_peers_seen_now()   # node-b (backends there) has not gone silent meanwhile
    for k in range(40, 60):   # the freed records are taken again
        process(dp, [(0, bytes(to_vip(48000 + k, "udp")))])
    assert len(in_use_as_free_says(c)) == len(kept) + 20


AFFINITY = """
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  clusterIP: 10.96.0.100
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{name: tcp, port: 80, targetPort: 8080}]
"""
OTHER = """
---
apiVersion: v1
kind: Service
metadata: {name: other}
spec:
  clusterIP: 10.96.0.50
  selector: {app: client}
  sessionAffinity: ClientIP
  ports: [{name: tcp, port: 80, targetPort: 9090}]
"""


def test_session_affinity_is_keyed_by_the_service_port_not_by_file_order():
    dp = make_dp(AFFINITY)
    ((target, frame),) = process(dp, [(0, bytes(to_vip(48000)))])
    chosen = inner(target, frame)[IP].dst
    # a reload that puts another Service with affinity first in the file
    text = open("configs/demo.yaml").read() + OTHER + AFFINITY
    dp.reload(config.parse(text, "demo.yaml", check_host=False))
    for sport in range(48001, 48020):
        ((target, frame),) = process(dp, [(0, bytes(to_vip(sport)))])
        pkt = inner(target, frame)
        assert pkt[IP].dst == chosen and pkt[TCP].dport == 8080


def test_a_relabelled_backend_loses_its_udp_flows_even_if_another_service_keeps_it():
    both = SERVICE + """
---
apiVersion: v1
kind: Service
metadata: {name: all-pods}
spec:
  clusterIP: 10.96.0.60
  selector: {}
  ports: [{name: udp, port: 53, protocol: UDP, targetPort: 5353}]
"""
    dp = make_dp(both)
    sport, _ = local_flow(dp, range(49000, 49100), "udp")
    text = open("configs/demo.yaml").read().replace(
        "- {name: web-2, node: node-a, labels: {app: web}}",
        "- {name: web-2, node: node-a, labels: {app: gone}}") + both
    summary = dp.reload(config.parse(text, "demo.yaml", check_host=False))
    assert summary["flushed_udp_flows"] == 1
    ((target, frame),) = process(dp, [(0, bytes(to_vip(sport, "udp")))])
    assert inner(target, frame)[IP].dst != B_IP   # a live backend of web now


@pytest.mark.parametrize("entries", [64, 1000])
def test_the_bound_is_what_the_config_says(entries):
    dp, _clock = small_table(entries)
    fill = dp.conntrack_fill()
    assert fill["capacity"] == entries and fill["entries"] == 0


SHORT_AFFINITY = """
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  clusterIP: 10.96.0.100
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
"""


def test_session_affinity_holds_for_its_timeout_from_the_last_connection_and_then_lets_go():
    dp, clock = clocked_dp(SHORT_AFFINITY)
    ((target, frame),) = process(dp, [(0, bytes(to_vip(49500)))])
    sticky = inner(target, frame)[IP].dst
    seen = set()
    for k in range(1, 30):   # every new connection within the timeout: the same backend...
        clock.now += 0.3
        dp.mark_peers_seen_now()
        ((target, frame),) = process(dp, [(0, bytes(to_vip(49500 + k)))])
        seen.add(inner(target, frame)[IP].dst)
    assert seen == {sticky}   # (the timeout runs from the last connection: 9 s went by)
    clock.now += 11   # ...and after it, Maglev decides again: other backends come up
    seen = set()
    for k in range(40):
        clock.now += 11
        dp.mark_peers_seen_now()   # node-b keeps answering its keepalives meanwhile
        ((target, frame),) = process(dp, [(0, bytes(to_vip(49600 + k)))])
        seen.add(inner(target, frame)[IP].dst)
    assert len(seen) >= 2
