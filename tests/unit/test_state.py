"""Recorded processes are known by pid and start time: a reused pid is never signalled."""
import os
import subprocess
import sys
import time

import pytest

from vrouter.host import state


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_record_names_its_process_by_pid_start_time_and_boot(child):
    record = state.identity(child.pid)
    assert record["pid"] == child.pid and record["start_time"] > 0 and record["boot_id"]
    assert state.is_running(record)
    assert state.identity()["start_time"] == state.start_time(os.getpid())


@pytest.mark.parametrize("change", [
    {"start_time": "later"},        # the pid now names a process started after the recorded one
    {"boot_id": "another-boot"},    # recorded before a reboot
    {"start_time": None},           # an older record without a start time
    {"pid": 0},
])
def test_a_record_of_another_process_is_not_running_and_is_not_signalled(child, change):
    record = state.identity(child.pid)
    if change.get("start_time") == "later":
        change = {"start_time": record["start_time"] + 1}
    record.update(change)
    assert not state.is_running(record)
    assert state.stop_process(record, grace=1) is False
    assert child.poll() is None   # untouched


def test_stop_process_terminates_the_recorded_process(child):
    assert state.stop_process(state.identity(child.pid), grace=10) is True
    assert child.wait(timeout=10) == -15   # SIGTERM was enough


def test_stop_process_kills_what_ignores_sigterm():
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time, sys; "
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        assert state.stop_process(state.identity(proc.pid), grace=0.5) is True
        assert proc.wait(timeout=10) == -9
    finally:
        proc.kill()
        proc.wait()


def test_start_time_parses_a_command_name_with_spaces_and_parentheses():
    # comm (field 2, in parentheses) is whatever the process calls itself
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdin.readline(); "
                             "open('/proc/self/comm', 'w').write('x) (y z'); print(flush=True); "
                             "time.sleep(60)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        before = state.start_time(proc.pid)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "\n"
        with open(f"/proc/{proc.pid}/comm") as f:
            assert f.read().strip() == "x) (y z"
        assert before is not None and state.start_time(proc.pid) == before
    finally:
        proc.kill()
        proc.wait()
    assert state.start_time(proc.pid) is None


def test_an_exited_process_nobody_reaped_yet_is_not_running():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        record = state.identity(proc.pid)
        assert state.is_running(record)
        proc.stdin.close()   # it exits; until waited for, it is a zombie
        deadline = time.monotonic() + 10
        while b") Z " not in open(f"/proc/{proc.pid}/stat", "rb").read():
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert not state.is_running(record)
        assert state.stop_process(record, grace=1) is False
    finally:
        proc.kill()
        proc.wait()
