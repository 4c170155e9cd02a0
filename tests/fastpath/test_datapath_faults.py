"""Faults in the data-path thread are contained (no root, no TAPs: loopback sockets, and a
pipe standing for a TAP whose device has gone)."""
import logging
import os
import socket
import threading
import time

import pytest

from fastpath.io import ST_BEAT_NS, WHY_ERROR
from fastpath.reasons import R_WAKEUPS
from vrouter.host.underlay import OverlaySockets
from vrouter.model.config import parse
from vrouter.node.datapath import Datapath
from vrouter.node.dataplane import Dataplane

CLUSTER = """
cluster: {name: faults, podCIDR: 10.244.0.0/16}
nodes:
  - {name: a, underlay: 127.0.0.1, podCIDR: 10.244.1.0/24}
  - {name: b, underlay: 127.0.0.2, podCIDR: 10.244.2.0/24}
pods:
  - {name: p, node: a}
  - {name: q, node: a}
"""


class PipeTap:
    """Stands for a TAP: `fd` is what the data path polls and reads."""

    def __init__(self, fd: int):
        self.fd = fd
        self.uso = True
        self.written: list[bytes] = []

    def write(self, frame: bytes) -> None:
        self.written.append(frame)


@pytest.fixture
def datapath():
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    fds = []

    def make(taps):
        dp = Dataplane(parse(CLUSTER, "<faults>", check_host=False), "a")
        made = Datapath(dp, taps, OverlaySockets(sockets[0], sockets[1:]), 4789, 0)
        made.warm_up()
        holder.append(made)
        return made
    holder: list[Datapath] = []
    make.fds = fds
    yield make
    for made in holder:
        made.stop()
    for s in sockets:
        s.close()
    for fd in fds:
        os.close(fd)


def gone_fd(fds) -> int:
    """A pipe's write end whose reader has gone: epoll reports it (EPOLLERR) forever and a read
    fails (EBADF), as a TAP does once its netns (and with it the device) is gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    fds.append(write_end)
    return write_end


def live_fd(fds) -> int:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    fds += [read_end, write_end]
    return read_end


def test_a_failing_tap_is_taken_out_of_the_loop_and_reported_once(datapath):
    gone = PipeTap(gone_fd(datapath.fds))
    made = datapath({0: gone, 1: PipeTap(live_fd(datapath.fds))})
    reported = []
    event = threading.Event()
    made.on_port_gone = lambda port: (reported.append(port), event.set())
    made.start()
    assert event.wait(20), "the gone port was never reported"
    assert reported == [0]
    assert 0 not in made.taps and 1 in made.taps and made.io.tap_fds[0] == -1
    assert made.faults.counts["pods_lost"] == 1
    # it is not polled any more: the loop sleeps (one wake-up per request, no spinning)
    first = made.run_blocking(lambda: int(made.dp.counters[R_WAKEUPS]), 10)
    threading.Event().wait(0.3)
    second = made.run_blocking(lambda: int(made.dp.counters[R_WAKEUPS]), 10)
    assert second - first <= 2, (first, second)
    assert made.remove_tap(0) is None   # the node's detach after it finds nothing to do
    assert made.failure is None and made.thread.is_alive()


def test_a_request_that_raises_goes_to_its_caller_and_the_loop_goes_on(datapath, caplog):
    made = datapath({})
    made.start()
    with pytest.raises(ZeroDivisionError):
        made.run_blocking(lambda: 1 // 0, 10)   # the caller's to handle: not a fault here
    assert made.faults.counts["request_errors"] == 0
    with caplog.at_level(logging.ERROR, logger="vrouter.node.datapath"):
        made.call(lambda: [][1])                # nobody waits for this one: logged, counted
        assert made.run_blocking(lambda: 42, 10) == 42
    assert made.faults.counts["request_errors"] == 1
    logged = [r for r in caplog.records if "a request in the data path failed" in r.message]
    assert logged and logged[0].exc_info[0] is IndexError


def test_a_frame_that_breaks_the_slow_path_is_dropped_and_the_others_answered(datapath,
                                                                           caplog):
    tap = PipeTap(live_fd(datapath.fds))
    made = datapath({0: tap})
    items = [(b"bad", 0, 1), (b"good", 0, 1)]
    made.dp.slow_items = lambda out: items

    def handle(batch):
        (frame, port, _reason), = batch
        if frame == b"bad":
            raise ValueError("a frame scapy cannot take")
        return [(port, b"answer")], []
    made.dp.handle_slow = handle
    with caplog.at_level(logging.ERROR, logger="vrouter.node.datapath"):
        made._slow_path()
    assert tap.written == [b"answer"]
    assert made.faults.counts["slow_path_errors"] == 1
    failure = [r for r in caplog.records if "the slow path failed" in r.message]
    assert failure and failure[0].exc_info[0] is ValueError


def test_the_loop_failing_is_recorded_and_reported(datapath):
    made = datapath({})
    made._serve = lambda: WHY_ERROR
    failed = threading.Event()
    made.on_failure = failed.set
    made.start()
    assert failed.wait(20)
    assert isinstance(made.failure, OSError) and "epoll_wait failed" in str(made.failure)


def test_the_beat_runs_in_the_data_path_on_whole_seconds_and_a_failing_report_is_counted(
        datapath):
    """The node's once-a-second work (keepalives, sweep) runs inside serve with nothing waking
    it from outside, on the whole seconds of the monotonic clock (every node of the machine
    together: their keepalives then arrive together). Python hears from it (on_beat, in this
    thread) at the first beat and when a peer's liveness changes; one that fails is counted,
    and the loop goes on."""
    made = datapath({})
    made.start()
    reports: list[tuple[str, int]] = []
    first, second = threading.Event(), threading.Event()

    def beat():
        reports.append((threading.current_thread().name, time.monotonic_ns()))
        (second if first.is_set() else first).set()
        if len(reports) == 2:
            raise RuntimeError("a broken beat")
    def start() -> None:
        made.dp.tables.peers.peer_seen[:] = made.dp.now + 3600   # b is up all along
        made.start_beat(beat)
    made.run_blocking(start, 10)
    if not first.wait(10):
        pytest.fail("no beat in 10 s")
    scheduled = made.run_blocking(lambda: int(made.state[ST_BEAT_NS]), 10)
    assert scheduled % 10**9 == 0 and 0 < scheduled - reports[0][1] <= 10**9
    # the next beat does not report: nothing changed (node b still counts as up)
    deadline = scheduled + 10**9 // 2
    while time.monotonic_ns() < deadline:
        made.run_blocking(lambda: None, 10)
    assert len(reports) == 1
    # the beat forgets the peers' liveness: the next one reports again, and that report fails
    made.run_blocking(lambda: made.dp.tables.peers.peer_up.fill(-1), 10)
    if not second.wait(10):
        pytest.fail("no second report in 10 s")
    deadline = time.monotonic() + 10
    while made.faults.counts["beat_errors"] == 0:
        if time.monotonic() > deadline:
            pytest.fail("the failing report was not counted within 10 s")
        made.run_blocking(lambda: None, 10)   # a request: the loop still serves them
    assert {name for name, _ in reports} == {"datapath"}
    assert made.run_blocking(lambda: 42, 10) == 42 and made.failure is None
