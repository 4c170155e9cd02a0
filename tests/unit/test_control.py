"""The control socket on a real Unix socket: an idle client holds up nobody, the connection cap
and the read timeout are kept and counted, a handler's exception is answered and logged."""
import json
import logging
import socket

import trio

from vrouter.node import control


async def _connect(path) -> trio.SocketStream:
    return await trio.open_unix_socket(str(path))


async def _ask(path, cmd: str) -> dict:
    stream = await _connect(path)
    async with stream:
        await stream.send_all(json.dumps({"cmd": cmd}).encode() + b"\n")
        return json.loads(await _line(stream))


async def _line(stream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


def _serve(tmp_path, test, **options):
    """Run `test(path, stats)` against a control server with a status and a failing handler."""
    path = tmp_path / "node.sock"
    stats = control.ServerStats()

    def broken(_request):
        raise RuntimeError("a bug in a handler")

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: control.serve(path, {"status": lambda r: {"ok": True},
                                                            "broken": broken}, stats, **options))
            with trio.fail_after(20):
                while not path.exists():
                    await trio.sleep(0.01)
                await test(path, stats)
            nursery.cancel_scope.cancel()
    trio.run(main)
    return stats


async def _until(predicate):
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)


def test_an_idle_client_does_not_block_another_clients_request(tmp_path):
    async def test(path, stats):
        idle = await _connect(path)            # connected, sends nothing
        await _until(lambda: stats.connections == 1)
        assert await _ask(path, "status") == {"ok": True}
        await _until(lambda: stats.connections == 1)   # the idle one is still open
        await idle.aclose()
    stats = _serve(tmp_path, test)
    assert stats.served == 1 and stats.timeouts == 0


def test_a_client_that_sends_no_request_is_closed_after_the_read_timeout(tmp_path):
    async def test(path, stats):
        idle = await _connect(path)
        answer = json.loads(await _line(idle))   # the node answers and closes it
        assert answer["ok"] is False and "no request within 0.3 s" in answer["error"]
        assert await idle.receive_some(100) == b""
        await _until(lambda: stats.connections == 0)
    stats = _serve(tmp_path, test, read_timeout=0.3)
    assert stats.timeouts == 1


def test_connections_over_the_cap_are_refused_and_counted(tmp_path):
    async def test(path, stats):
        idle = [await _connect(path) for _ in range(3)]
        await _until(lambda: stats.connections == 3)
        refused = await _ask(path, "status")
        assert refused["ok"] is False and refused["kind"] == "busy", refused
        assert stats.refused == 1
        await idle.pop().aclose()
        await _until(lambda: stats.connections == 2)
        assert await _ask(path, "status") == {"ok": True}   # room again
        for stream in idle:
            await stream.aclose()
    stats = _serve(tmp_path, test, max_connections=3)
    assert stats.refused == 1 and stats.served == 1


def test_a_handler_that_raises_is_answered_logged_and_counted(tmp_path, caplog):
    async def test(path, stats):
        answer = await _ask(path, "broken")
        assert answer == {"ok": False, "error": "RuntimeError: a bug in a handler"}
        assert await _ask(path, "status") == {"ok": True}   # and the server goes on
    with caplog.at_level(logging.ERROR, logger="vrouter.control"):
        stats = _serve(tmp_path, test)
    assert stats.errors == 1 and stats.served == 1
    failures = [r for r in caplog.records if "control request 'broken' failed" in r.message]
    assert failures and failures[0].exc_info[0] is RuntimeError   # with its traceback


def test_malformed_requests_are_refused_and_counted(tmp_path):
    async def test(path, stats):
        for payload in (b"{broken\n", b"[1]\n", b'{"cmd": "frobnicate"}\n', b'{"cmd": 7}\n'):
            stream = await _connect(path)
            async with stream:
                await stream.send_all(payload)
                answer = json.loads(await _line(stream))
            assert answer["ok"] is False and answer["error"], payload
    stats = _serve(tmp_path, test)
    assert stats.malformed == 4 and stats.served == 0 and stats.errors == 0


def test_the_blocking_client_reads_one_answer(tmp_path):
    async def test(path, stats):
        answer = await trio.to_thread.run_sync(control.request, path, "status")
        assert answer == {"ok": True}
        with socket.socket(socket.AF_UNIX) as s:   # what clients without a newline get
            await trio.to_thread.run_sync(s.connect, str(path))
            s.sendall(b'{"cmd": "status"}')
            s.shutdown(socket.SHUT_WR)
            assert json.loads(await trio.to_thread.run_sync(control.receive_line, s)) == \
                {"ok": True}
    _serve(tmp_path, test)
