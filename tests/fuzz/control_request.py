"""Fuzz target: bytes a client writes to a node's control socket (vrouter.ops.control._answer),
answered by handlers like the node's: plain and async ones, one that fails, and the node's real
trace handler (vrouter.node.trace.Tracer on a sans-IO data plane), which validates the
request's fields itself.

Properties: no exception leaves _answer; the client always gets exactly one line, a JSON
object; a request that is a JSON object naming a command reaches that handler; the trace
handler refuses a bad request with its own error (TraceError), never with another exception."""
if __name__ == "__main__":
    from tests.fuzz import runner
    raise SystemExit(runner.main("tests.fuzz.control_request"))

import json
import socket
from pathlib import Path

import trio

from tests.harness import still_clock
from vrouter.model import config
from vrouter.node.dataplane import Dataplane
from vrouter.node.trace import TraceError, Tracer
from vrouter.ops import control

ROOT = Path(__file__).resolve().parents[2]

_tracer: list[Tracer] = []


def tracer() -> Tracer:
    if not _tracer:
        dp = Dataplane(config.load(ROOT / "configs" / "services.yaml", check_host=False), "node-a",
                       clock=still_clock())
        _tracer.append(Tracer(dp, [p.name for p in dp.peers], [50001 + k for k in range(8)]))
    return _tracer[0]


def _trace(request: dict) -> dict:   # as vrouter.node.process.Node.trace answers
    try:
        return {"ok": True, **tracer().answer(request)}
    except TraceError as exc:
        return {"ok": False, "error": str(exc)}


async def _later(request: dict) -> dict:
    await trio.sleep(0)
    return {"ok": True, "keys": sorted(map(str, request))}


def _fails(request: dict) -> dict:
    raise RuntimeError("this handler always fails")


HANDLERS = {"status": lambda request: {"ok": True, "ready": True}, "later": _later,
            "fails": _fails, "trace": _trace}


def setup() -> None:
    tracer()


def ask(data: bytes) -> bytes:
    """What a client that sends `data` (then closes its sending side) reads back."""
    async def conversation():
        node_end, client_end = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        client = trio.SocketStream(client_end)
        async with trio.open_nursery() as nursery:
            stats = control.ServerStats(connections=1)   # as serve() counts it
            nursery.start_soon(control._answer, node_end, HANDLERS, stats,
                               control.READ_TIMEOUT)
            async with client:
                try:
                    await client.send_all(data)
                    await client.send_eof()
                except trio.BrokenResourceError:
                    pass   # the node stopped reading (a request too large): its answer waits
                reply = b""
                while chunk := await client.receive_some(65536):
                    reply += chunk
        return reply
    return trio.run(conversation)


def check(data: bytes) -> None:
    reply = ask(data)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply[:200]
    answer = json.loads(reply)
    assert isinstance(answer, dict), answer
    if b"\n" in data[:-1]:
        return   # more than one line: the node reads up to a newline at the end of a read
    try:
        request = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        request = None
    if not isinstance(request, dict) or len(data) >= control.MAX_REQUEST:
        assert set(answer) == {"ok", "error"} and answer["ok"] is False, answer
        return
    command = request.get("cmd")
    if command == "trace":
        assert "ok" in answer, f"the trace handler failed: {answer}"
    elif command == "fails":
        assert answer == {"ok": False, "error": "RuntimeError: this handler always fails"}, \
            answer
    elif command in ("status", "later"):
        assert answer.get("ok") is True, answer
    else:
        assert answer == {"ok": False, "error": f"unknown command {command!r}"}, answer
