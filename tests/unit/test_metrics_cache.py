"""Scrapes read the data path at most once per SNAPSHOT_MAX_AGE: a scraper in a loop must not
stall forwarding with a request per scrape."""
import threading

from fastpath.reasons import COUNTERS
from vrouter.node.metrics import Metrics
from vrouter.node.snapshot import Snapshots as CachedSnapshot


class FakeDatapath:
    """Counts what would have paused the data path."""

    def __init__(self):
        self.requests = 0
        self.lock = threading.Lock()

    def run_blocking(self, fn, timeout):
        with self.lock:
            self.requests += 1
        return fn()


STATUS = {"cluster": "c", "node": "n", "podCIDR": "10.244.1.0/24", "underlay": "127.0.0.1:4789",
          "ports": [], "counters": {c.name: 0 for c in COUNTERS},
          "conntrack": {"entries": 0, "capacity": 1, "high_water": 0},
          "services": [], "peers": [], "ready": True, "faults": {"pods_lost": 2}}


def test_scrapes_within_a_second_share_one_data_path_read():
    now = [0.0]
    datapath = FakeDatapath()
    reads = []
    snapshot = CachedSnapshot(datapath, lambda: reads.append(now[0]) or {"at": now[0]},
                              max_age=1.0, clock=lambda: now[0])
    for step in range(100):        # 100 scrapes over 2.5 s
        now[0] = step * 0.025
        assert snapshot()["at"] <= now[0]
    assert datapath.requests == 3 and reads == [0.0, 1.0, 2.0]


def test_concurrent_scrapes_wait_for_one_read():
    datapath = FakeDatapath()
    gate = threading.Event()

    def slow_read():
        gate.wait(10)
        return {"ok": True}
    snapshot = CachedSnapshot(datapath, slow_read, max_age=60)
    results = []
    threads = [threading.Thread(target=lambda: results.append(snapshot())) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert results == [{"ok": True}] * 8 and datapath.requests == 1


def test_the_exposition_has_the_contained_faults():
    datapath = FakeDatapath()
    text = Metrics(CachedSnapshot(datapath, lambda: STATUS)).text().decode()
    assert 'vrouter_faults_total{fault="pods_lost"} 2.0' in text
