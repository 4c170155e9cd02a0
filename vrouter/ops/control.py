"""The node's control socket: one JSON request per line, one JSON answer per line.

Requests: {"cmd": "status"}. The server side runs inside the node's trio nursery; the client is
plain blocking code for the CLI and the launcher.
"""
from __future__ import annotations

import inspect
import json
import socket
from pathlib import Path
from typing import Callable

import trio

MAX_REQUEST = 64 * 1024


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
            try:
                if len(data) >= MAX_REQUEST and not data.endswith(b"\n"):
                    raise ValueError(f"request larger than {MAX_REQUEST // 1024} KiB")
                request = json.loads(data or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object with a \"cmd\"")
                handler = handlers.get(request.get("cmd"))
                answer = (handler(request) if handler
                          else {"error": f"unknown command {request.get('cmd')!r}"})
                if inspect.isawaitable(answer):
                    answer = await answer
            except Exception as exc:   # a bad request gets an answer, never kills the node
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            await stream.send_all(json.dumps(answer).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass   # the client went away


def request(path: Path, cmd: str, timeout: float = 5.0, **fields) -> dict:
    """Ask a running node. Raises OSError when nobody listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
