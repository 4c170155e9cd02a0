"""Bad input never crashes the data plane and never goes uncounted: mutated frames, datagrams and
virtio-net headers each get exactly one verdict (fastpath.reasons: every frame is counted once).
tests/fuzz/test_fuzzers.py runs this file again with numba's bounds checks compiled in."""
import random

import pytest

from fastpath.reasons import COUNTERS, EVENT
from tests.fastpath.test_gso import (
    UNDERLAY_A, _ARP, _TCP_SUPER, _UDP_SMALL, cluster, overlay_train,
)
from tests.fastpath.test_services import SERVICE
from tests.harness import process_datagrams, process_tap, still_clock
from vrouter.node.dataplane import Dataplane

VERDICTS = [c.name for c in COUNTERS if c.kind != EVENT]


def verdicts(dp):
    counters = dp.counter_dict()
    return sum(counters[name] for name in VERDICTS)


def mutate(rng, data: bytes, hot: int) -> bytes:
    """Flip, overwrite, cut or extend: mostly within the first `hot` bytes, where headers are."""
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        what = rng.random()
        if what < 0.6 and data:
            k = rng.randrange(min(hot, len(data)))
            data[k] = rng.getrandbits(8) if rng.random() < 0.5 else data[k] ^ (1 << rng.randrange(8))
        elif what < 0.8:
            data = data[:rng.randrange(len(data) + 1)]
        else:
            data += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
    return bytes(data)


@pytest.fixture(scope="module")
def seeds():
    node_a = Dataplane(cluster(), "node-a", clock=still_clock())
    return {"tap": [_TCP_SUPER, _UDP_SMALL, _ARP],
            "overlay": overlay_train(node_a, b"f" * 5000, 1386)}


def test_mutated_tap_reads_are_each_counted_once_and_never_crash(seeds):
    dp = Dataplane(cluster(SERVICE), "node-a", clock=still_clock())
    rng = random.Random(1)
    for n in range(1, 1501):
        seed = rng.choice(seeds["tap"])
        process_tap(dp, rng.choice([0, 1, 2]), [mutate(rng, seed, 80)])
        assert verdicts(dp) == dp.counter_dict()["rx_frames"] >= n


def test_mutated_overlay_datagrams_and_trains_are_each_counted_once(seeds):
    dp = Dataplane(cluster(SERVICE), "node-b", clock=still_clock())
    rng = random.Random(2)
    train = seeds["overlay"]
    for n in range(1, 501):
        datagrams = [mutate(rng, d, 90) if rng.random() < 0.3 else d for d in train]
        process_datagrams(dp, [(UNDERLAY_A, datagrams)])
        assert verdicts(dp) == dp.counter_dict()["rx_frames"]
    assert dp.counter_dict()["rx_frames"] >= 500 * len(train)


def test_garbage_is_dropped(seeds):
    dp = Dataplane(cluster(), "node-a", clock=still_clock())
    rng = random.Random(3)
    reads = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200))) for _ in range(300)]
    process_tap(dp, 0, reads)
    counters = dp.counter_dict()
    assert verdicts(dp) == counters["rx_frames"] == 300
    delivered = [c.name for c in COUNTERS if c.kind == "forward"]
    assert sum(counters[name] for name in delivered) == 0
