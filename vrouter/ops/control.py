"""The node's control socket: one JSON request per line, one JSON answer per line.

Requests: {"cmd": "status"} and the like. A handler may instead answer with a Stream: its JSON
header line, then raw bytes until the stream ends or the client goes (`vrouter capture`). The
server side runs inside the node's trio nursery; the client is plain blocking code for the CLI,
the launcher and vrouter-cni.
"""
from __future__ import annotations

import inspect
import json
import socket
from pathlib import Path
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import trio

MAX_REQUEST = 64 * 1024
DRAIN_TIMEOUT = 1.0   # seconds to read what a client sent after its request, before closing


@dataclass
class Stream:
    header: dict
    chunks: AsyncIterator[bytes]   # closed (aclose) when the client goes
    # the client closed its sending side: end the stream after what is pending (else: cut it)
    finish: Callable[[], Awaitable[None]] | None = None


FINISH_TIMEOUT = 5.0


async def serve(path: Path, handlers: dict[str, Callable[[dict], dict]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    path.chmod(0o600)
    listener.listen(16)
    async with trio.open_nursery() as nursery:
        try:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_answer, conn, handlers)
        finally:
            listener.close()


async def _answer(conn, handlers) -> None:
    stream = trio.SocketStream(conn)
    try:
        async with stream:
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            too_large = len(data) >= MAX_REQUEST and not data.endswith(b"\n")
            try:
                if too_large:
                    raise ValueError(f"request larger than {MAX_REQUEST // 1024} KiB")
                request = json.loads(data or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object with a \"cmd\"")
                cmd = request.get("cmd")
                handler = handlers.get(cmd) if isinstance(cmd, str) else None
                answer = (handler(request) if handler
                          else {"error": f"unknown command {cmd!r}"})
                if inspect.isawaitable(answer):
                    answer = await answer
            except Exception as exc:   # a bad request gets an answer, never kills the node
                answer = {"error": f"{type(exc).__name__}: {exc}"}
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
