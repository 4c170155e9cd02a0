"""The store's lines of `vrouter status`: where the watch is, since when etcd is unreachable."""
import time

from vrouter.ops.status import _store

BASE = {"type": "etcd", "endpoints": ["http://192.0.2.253:2379", "http://192.0.2.254:2379"],
        "reachable": True, "revision": 42, "keys": 7, "events": 3, "resyncs": 1,
        "compactions": 0, "lost_streams": 1, "rewatches": 1, "apply_errors": 0,
        "skipped_total": 0, "lease_lost": 0, "skipped_keys": [], "held": []}


def test_reachable_with_the_watch_endpoint_and_the_counters():
    lines = _store({**BASE, "watching": "http://192.0.2.253:2379"})
    assert lines[0] == ("  store: etcd http://192.0.2.253:2379, http://192.0.2.254:2379: "
                        "reachable, revision 42, 7 keys, watching through "
                        "http://192.0.2.253:2379")
    assert lines[1] == "    events 3, resyncs 1, lost streams 1, rewatches 1"


def test_unreachable_says_since_when_and_why():
    since = time.time() - 12
    (first, _) = _store({**BASE, "reachable": False, "unreachable_since": since,
                         "watching": None, "last_error": "no etcd endpoint answered"})
    assert "UNREACHABLE since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) \
        in first
    assert first.endswith("(12 s; forwarding with the last state): no etcd endpoint answered")
    assert "watching" not in first
