"""The node's control socket: one JSON request per line, one JSON answer per line.

Requests: {"cmd": "status"} and the like. A handler may instead answer with a Stream: its JSON
header line, then raw bytes until the stream ends or the client goes (`vrouter capture`). The
server side runs inside the node's trio nursery; the client is plain blocking code for the CLI,
the launcher and vrouter-cni.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import socket
from pathlib import Path
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import trio

MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 32     # open at once; more are answered "busy" and closed (counted)
READ_TIMEOUT = 5.0       # seconds a client has to send its request line (then: closed, counted)
REFUSE_TIMEOUT = 1.0     # for the "busy" answer to a client over the cap
DRAIN_TIMEOUT = 1.0      # seconds to read what a client sent after its request, before closing
ACCEPT_BACKOFF = 0.1     # seconds to wait after accept failed before trying again

log = logging.getLogger("vrouter.control")


@dataclass
class Stream:
    header: dict
    chunks: AsyncIterator[bytes]   # closed (aclose) when the client goes
    # the client closed its sending side: end the stream after what is pending (else: cut it)
    finish: Callable[[], Awaitable[None]] | None = None


@dataclass
class ServerStats:
    """What `vrouter status` shows of the control socket."""
    connections: int = 0   # open now
    served: int = 0        # requests answered by a handler
    refused: int = 0       # connections over MAX_CONNECTIONS
    timeouts: int = 0      # no complete request line within READ_TIMEOUT
    malformed: int = 0     # not JSON, not an object, too large, or an unknown command
    errors: int = 0        # a handler raised: answered with the error and logged
    accept_errors: int = 0   # accept() failed (out of file descriptors, say): retried

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


FINISH_TIMEOUT = 5.0


async def serve(path: Path, handlers: dict[str, Callable[[dict], dict]],
                stats: ServerStats | None = None, max_connections: int = MAX_CONNECTIONS,
                read_timeout: float = READ_TIMEOUT) -> None:
    """Serve requests on a Unix socket at `path` until cancelled. Every connection is a task of
    its own (an idle or slow client holds only itself up); at most `max_connections` at once."""
    stats = stats if stats is not None else ServerStats()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    path.chmod(0o600)
    listener.listen(64)
    async with trio.open_nursery() as nursery:
        try:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:   # EMFILE, ENFILE, ENOBUFS...: the node must go on
                    stats.accept_errors += 1
                    log.warning("control socket %s: accept failed: %s", path, exc)
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                if stats.connections >= max_connections:
                    stats.refused += 1
                    if stats.refused == 1 or stats.refused % 100 == 0:
                        log.warning("control socket: %d connections open, refusing more "
                                    "(%d refused so far)", stats.connections, stats.refused)
                    nursery.start_soon(_refuse, conn, max_connections)
                    continue
                stats.connections += 1
                nursery.start_soon(_answer, conn, handlers, stats, read_timeout)
        finally:
            listener.close()


async def _refuse(conn, max_connections: int) -> None:
    stream = trio.SocketStream(conn)
    with trio.move_on_after(REFUSE_TIMEOUT):
        try:
            async with stream:
                await stream.send_all(json.dumps(
                    {"ok": False, "kind": "busy", "error": f"the node has {max_connections} "
                     "control connections open already; try again"}).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    conn.close()


async def _read_request(stream: trio.SocketStream, read_timeout: float) -> bytes | None:
    """The request line (or what came before the client closed); None after the timeout."""
    data = b""
    with trio.move_on_after(read_timeout):
        while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        return data
    return None


def _parse(data: bytes) -> dict:
    if len(data) >= MAX_REQUEST and not data.endswith(b"\n"):
        raise ValueError(f"request larger than {MAX_REQUEST // 1024} KiB")
    request = json.loads(data or b"{}")
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object with a \"cmd\"")
    return request


async def _answer(conn, handlers, stats: ServerStats, read_timeout: float) -> None:
    stream = trio.SocketStream(conn)
    try:
        async with stream:
            data = await _read_request(stream, read_timeout)
            if data is None:
                stats.timeouts += 1
                log.info("control socket: no request within %g s, closing the connection",
                         read_timeout)
                with trio.move_on_after(REFUSE_TIMEOUT):
                    await stream.send_all(json.dumps(
                        {"ok": False, "error": f"no request within {read_timeout:g} s"}
                    ).encode() + b"\n")
                return
            answer = await _handle(data, handlers, stats)
            if isinstance(answer, Stream):
                await _stream(stream, answer)
                return
            await stream.send_all(json.dumps(answer).encode() + b"\n")
            # closing with anything the client sent still unread (the rest of a request too
            # large, a second line) would reset the connection, and the client lose the answer
            await stream.send_eof()
            with trio.move_on_after(DRAIN_TIMEOUT):
                while await stream.receive_some(65536):
                    pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass   # the client went away
    finally:
        stats.connections -= 1


async def _handle(data: bytes, handlers, stats: ServerStats):
    """A request's answer; a bad request or a handler's exception is an answer too, never the
    end of the node."""
    try:
        request = _parse(data)
    except (ValueError, RecursionError) as exc:   # json's errors; nesting too deep
        stats.malformed += 1
        log.warning("control socket: malformed request refused: %s", exc)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    cmd = request.get("cmd")
    handler = handlers.get(cmd) if isinstance(cmd, str) else None
    if handler is None:
        stats.malformed += 1
        log.warning("control socket: unknown command %r refused", cmd)
        return {"ok": False, "error": f"unknown command {cmd!r}"}
    try:
        answer = handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
    except Exception as exc:
        stats.errors += 1
        log.exception("control request %r failed", cmd)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    stats.served += 1
    return answer


async def _stream(stream: trio.SocketStream, answer: Stream) -> None:
    """Header, then chunks; the client closing its end (or the node stopping) ends it."""
    async def client_gone(cancel_scope):
        while await stream.receive_some(4096):
            pass
        if answer.finish is not None:
            with trio.move_on_after(FINISH_TIMEOUT):
                await answer.finish()
                return   # the chunks end by themselves
        cancel_scope.cancel()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_gone, nursery.cancel_scope)
            await stream.send_all(json.dumps(answer.header).encode() + b"\n")
            async for chunk in answer.chunks:
                if chunk:
                    await stream.send_all(chunk)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await answer.chunks.aclose()


def open_stream(path: Path, cmd: str, timeout: float = 30.0, **fields):
    """Ask for a stream: (its header, a socket to read the rest from, blocking)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        data = b""
        while b"\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        line, _, rest = data.partition(b"\n")
        s.settimeout(None)
        return json.loads(line), s, rest
    except BaseException:
        s.close()
        raise


def request(path: Path, cmd: str, timeout: float = 5.0, **fields) -> dict:
    """Ask a running node. Raises OSError when nobody listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        return json.loads(receive_line(s))


def receive_line(s: socket.socket) -> bytes:
    """One answer: up to its newline, or what came before the node closed."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
