"""A small etcd v3 client over etcd's JSON gateway (grpc-gateway, `/v3/...` on etcd 3.4), for
trio, through httpx.

Why this and not a client library: python-etcd3 breaks with protobuf >= 4 and has had no release
since 2020; aetcd is asyncio-only and unmaintained by its author's word; etcd3gw is synchronous
and drops watch responses that are canceled or compacted, which are exactly the ones a watcher
must see. The gateway is part of etcd itself: every RPC is a POST of the protobuf message as
JSON, where bytes (keys, values) are base64, int64 fields are decimal strings, and fields with
their zero value are left out (a PUT event has no "type", a lost lease's keepalive no "TTL").

The client knows nothing of vrouter: keys and values are bytes. Failures are typed:
Unavailable (no endpoint answered: connect errors, timeouts, a dropped stream, 5xx/14), Compacted
(a revision older than the store keeps), LeaseNotFound, and EtcdError for anything else etcd
refused. Several endpoints are tried in turn, the one that last answered first.
"""
from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

import httpx

# a node sends a keepalive every few seconds: httpx's INFO line per request is noise
logging.getLogger("httpx").setLevel(logging.WARNING)

GRPC_NOT_FOUND = 5
GRPC_OUT_OF_RANGE = 11      # also "required revision has been compacted"
GRPC_UNAVAILABLE = 14
# A watch is quiet for as long as nothing changes, so its connection is probed: one whose
# etcd went away without a word (a host gone, a partition that dropped its reset) fails after
# KEEPIDLE + KEEPINTVL x KEEPCNT = 11 s instead of never, and the watcher lists again
TCP_KEEPALIVE = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                 (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),
                 (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
                 (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)]
MAX_LINE = 64 << 20         # a watch response (one JSON line) longer than this is refused


class EtcdError(Exception):
    """etcd refused a request: `code` is the gRPC status code (0 if none was given)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


class Unavailable(EtcdError):
    """No endpoint answered, or a stream broke off."""


class Compacted(EtcdError):
    """The revision asked for was compacted away: list again (from `revision`, the oldest kept)."""

    def __init__(self, message: str, revision: int = 0):
        super().__init__(message, GRPC_OUT_OF_RANGE)
        self.revision = revision


class LeaseNotFound(EtcdError):
    """The lease expired or was revoked."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range of every key starting with `prefix` (etcdctl --prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"   # every key


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @staticmethod
    def from_json(d: dict) -> "KeyValue":
        return KeyValue(unb64(d.get("key")), unb64(d.get("value")),
                        int(d.get("create_revision", 0)), int(d.get("mod_revision", 0)),
                        int(d.get("version", 0)), int(d.get("lease", 0)))


@dataclass(frozen=True)
class Event:
    type: str            # "PUT" or "DELETE"
    kv: KeyValue         # for DELETE: the key and the revision it was deleted at


@dataclass(frozen=True)
class WatchResponse:
    revision: int                     # the store's revision when this was sent
    events: tuple[Event, ...] = ()
    progress: bool = False            # a progress notification (no events)


@dataclass
class TxnResult:
    succeeded: bool
    revision: int
    responses: list = field(default_factory=list)   # the raw response ops (dicts)

    def ranges(self) -> list[list[KeyValue]]:
        """The key-values of each range op among the responses, in order."""
        return [[KeyValue.from_json(kv) for kv in r["response_range"].get("kvs", [])]
                for r in self.responses if "response_range" in r]


# --- transaction parts (etcd's Compare and RequestOp as JSON) --------------------------------

def version_is(key: bytes, version: int) -> dict:
    """Compare: the key's version is `version` (0: the key does not exist)."""
    return {"key": b64(key), "result": "EQUAL", "target": "VERSION", "version": str(version)}


def mod_revision_is(key: bytes, revision: int) -> dict:
    return {"key": b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(revision)}


def put_op(key: bytes, value: bytes, lease: int = 0) -> dict:
    op = {"key": b64(key), "value": b64(value)}
    if lease:
        op["lease"] = str(lease)
    return {"request_put": op}


def delete_op(key: bytes, range_end: bytes | None = None) -> dict:
    op = {"key": b64(key)}
    if range_end is not None:
        op["range_end"] = b64(range_end)
    return {"request_delete_range": op}


def range_op(key: bytes, range_end: bytes | None = None) -> dict:
    op = {"key": b64(key)}
    if range_end is not None:
        op["range_end"] = b64(range_end)
    return {"request_range": op}


class Client:
    """An etcd v3 client for trio. Use as `async with Client([...]) as etcd:` (or aclose())."""

    def __init__(self, endpoints: list[str] | tuple[str, ...], timeout: float = 5.0,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None):
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        verify: ssl.SSLContext | bool = True
        if ca_file or cert_file:
            verify = ssl.create_default_context(cafile=ca_file)
            if cert_file:
                verify.load_cert_chain(cert_file, key_file)
        # no proxies from the environment: etcd is reached directly, never through an HTTP proxy
        transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False,
                                             socket_options=TCP_KEEPALIVE)
        self.http = httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False)
        self.requests = 0            # RPCs sent (benchmarks: requests per second)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- one RPC ------------------------------------------------------------------------------

    async def call(self, path: str, body: dict) -> dict:
        """POST `body` to /v3/`path` at the first endpoint that answers; the decoded answer."""
        last: Exception | None = None
        for endpoint in list(self.endpoints):
            self.requests += 1
            try:
                response = await self.http.post(f"{endpoint}/v3/{path}", json=body)
            except httpx.HTTPError as exc:   # connect, read, timeout, protocol
                last = exc
                continue
            try:
                answer = response.json()
            except ValueError:
                last = EtcdError(f"{endpoint}: /v3/{path}: HTTP {response.status_code}, "
                                 f"not JSON: {response.text[:200]!r}")
                if response.status_code >= 500:
                    continue
                raise last from None
            if not isinstance(answer, dict):
                raise EtcdError(f"{endpoint}: /v3/{path}: answer is not an object")
            if response.status_code >= 400 or "error" in answer:
                error = _error(answer, response.status_code)
                if isinstance(error, Unavailable):
                    last = error
                    continue
                raise error
            self._prefer(endpoint)
            return answer
        raise Unavailable(f"no etcd endpoint answered ({', '.join(self.endpoints)}): "
                          f"{_describe(last)}", GRPC_UNAVAILABLE)

    def _prefer(self, endpoint: str) -> None:
        if self.endpoints[0] != endpoint:
            self.endpoints.remove(endpoint)
            self.endpoints.insert(0, endpoint)

    # --- KV -----------------------------------------------------------------------------------

    async def range(self, key: bytes, range_end: bytes | None = None, revision: int = 0,
                    limit: int = 0) -> tuple[int, list[KeyValue], bool]:
        """(revision of the answer, key-values, more left beyond `limit`)."""
        body = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        answer = await self.call("kv/range", body)
        return (_revision(answer), [KeyValue.from_json(kv) for kv in answer.get("kvs", [])],
                bool(answer.get("more")))

    async def get(self, key: bytes) -> KeyValue | None:
        _, kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def get_prefix(self, prefix: bytes, revision: int = 0, page: int = 1000
                         ) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` at one revision (paged, so one answer stays small)."""
        end = prefix_end(prefix)
        found: list[KeyValue] = []
        start = prefix
        while True:
            rev, kvs, more = await self.range(start, end, revision, page)
            revision = revision or rev   # the later pages from the same revision
            found += kvs
            if not more or not kvs:
                return revision, found
            start = kvs[-1].key + b"\0"

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _revision(await self.call("kv/put", body))

    async def delete(self, key: bytes, range_end: bytes | None = None) -> tuple[int, int]:
        """(revision, keys deleted)."""
        body = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        answer = await self.call("kv/deleterange", body)
        return _revision(answer), int(answer.get("deleted", 0))

    async def txn(self, compare: list[dict], success: list[dict],
                  failure: list[dict] = ()) -> TxnResult:
        answer = await self.call("kv/txn", {"compare": list(compare), "success": list(success),
                                            "failure": list(failure)})
        return TxnResult(bool(answer.get("succeeded")), _revision(answer),
                         answer.get("responses", []))

    async def compact(self, revision: int) -> None:
        await self.call("kv/compaction", {"revision": str(revision), "physical": True})

    # --- leases -------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, TTL granted)."""
        answer = await self.call("lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"]), int(answer.get("TTL", 0))

    async def keepalive(self, lease: int) -> int:
        """Renew a lease once; its new TTL. LeaseNotFound when it has expired."""
        answer = await self.call("lease/keepalive", {"ID": str(lease)})
        ttl = int((answer.get("result") or {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(f"lease {lease:x} has expired", GRPC_NOT_FOUND)
        return ttl

    async def time_to_live(self, lease: int) -> int:
        """Seconds the lease has left (-1: expired or unknown)."""
        return int((await self.call("lease/timetolive", {"ID": str(lease)})).get("TTL", -1))

    async def revoke(self, lease: int) -> None:
        """Revoke a lease (its keys go with it); one that is gone already is no error."""
        try:
            await self.call("lease/revoke", {"ID": str(lease)})
        except LeaseNotFound:
            pass

    async def status(self) -> dict:
        return await self.call("maintenance/status", {})

    # --- watch --------------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(self, key: bytes, range_end: bytes | None = None, start_revision: int = 0,
                    progress_notify: bool = False) -> AsyncIterator["Watch"]:
        """A watch stream from `start_revision` (0: from now). Iterate it for WatchResponses;
        it raises Compacted if the start was compacted, Unavailable if the stream breaks."""
        create = {"key": b64(key)}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        if start_revision:
            create["start_revision"] = str(start_revision)
        if progress_notify:
            create["progress_notify"] = True
        last: Exception | None = None
        timeout = httpx.Timeout(self.timeout, read=None)   # a quiet watch is not a dead one
        async with AsyncExitStack() as stack:
            response = None
            for endpoint in list(self.endpoints):
                self.requests += 1
                try:
                    response = await stack.enter_async_context(self.http.stream(
                        "POST", f"{endpoint}/v3/watch", json={"create_request": create},
                        timeout=timeout))
                    break
                except httpx.HTTPError as exc:
                    last = exc
            if response is None:
                raise Unavailable(f"watch: no etcd endpoint answered: {_describe(last)}",
                                  GRPC_UNAVAILABLE)
            if response.status_code >= 400:
                body = await response.aread()
                try:
                    answer = json.loads(body)
                except ValueError:
                    raise EtcdError(f"watch: HTTP {response.status_code}") from None
                raise _error(answer if isinstance(answer, dict) else {}, response.status_code)
            self._prefer(endpoint)
            yield Watch(response, endpoint)


class Watch:
    """The responses of one watch stream."""

    def __init__(self, response: httpx.Response, endpoint: str = ""):
        self.response = response
        self.endpoint = endpoint
        self.lines = response.aiter_lines()
        self.created = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> WatchResponse:
        while True:
            try:
                line = await self.lines.__anext__()
            except StopAsyncIteration:
                raise Unavailable("the watch stream ended", GRPC_UNAVAILABLE) from None
            except httpx.HTTPError as exc:
                raise Unavailable(f"the watch stream broke: {_describe(exc)}",
                                  GRPC_UNAVAILABLE) from None
            if not line.strip():
                continue
            if len(line) > MAX_LINE:
                raise EtcdError(f"a watch response of {len(line)} bytes")
            try:
                message = json.loads(line)
            except ValueError:
                raise EtcdError(f"a watch response that is not JSON: {line[:200]!r}") from None
            if not isinstance(message, dict):
                raise EtcdError(f"a watch response that is not an object: {line[:200]!r}")
            if "error" in message:
                raise _error(message["error"] if isinstance(message["error"], dict)
                             else message, 0)
            result = message.get("result") or {}
            if result.get("canceled"):
                compact = int(result.get("compact_revision", 0))
                if compact:
                    raise Compacted(f"watch canceled: revision compacted (the oldest kept is "
                                    f"{compact})", compact)
                raise Unavailable(f"watch canceled: {result.get('cancel_reason', 'no reason')}",
                                  GRPC_UNAVAILABLE)
            revision = _revision(result)
            if result.get("created"):
                self.created = True
                continue
            events = tuple(Event(e.get("type", "PUT"), KeyValue.from_json(e.get("kv") or {}))
                           for e in result.get("events", []))
            return WatchResponse(revision, events, progress=not events)


def _revision(answer: dict) -> int:
    return int((answer.get("header") or {}).get("revision", 0))


def _error(answer: dict, status: int) -> EtcdError:
    message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
    try:
        code = int(answer.get("code", 0))
    except (TypeError, ValueError):
        code = 0
    if code == GRPC_NOT_FOUND and "lease" in message:
        return LeaseNotFound(message, code)
    if code == GRPC_OUT_OF_RANGE and "compacted" in message:
        return Compacted(message)
    if code == GRPC_UNAVAILABLE or status >= 500 and code == 0:
        return Unavailable(message, code)
    return EtcdError(message, code)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    said = [str(exc)]
    # httpx wraps what failed (a refused connection, a TLS certificate etcd or we refused)
    cause, seen = exc.__cause__ or exc.__context__, 0
    while cause is not None and seen < 4:
        text = str(cause)
        if text and not any(text in s or s in text for s in said if s):
            said.append(text)
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    said = [s for s in said if s]
    if not said and isinstance(exc, httpx.ReadError):   # etcd ended a TLS handshake so
        said = ["the connection closed without an answer (with https: did etcd refuse this "
                "client's certificate?)"]
    elif any("BAD_CERTIFICATE" in s or "CERTIFICATE_REQUIRED" in s for s in said):
        # or with an alert, whose name depends on the TLS version and on timing
        said.append("did etcd refuse this client's certificate?")
    return ": ".join([type(exc).__name__, *said])
