"""`vrouter ui CLUSTER [--port 8089] [--listen ADDR]`: one live page of a running cluster.

A Starlette app served by Hypercorn, both under trio (the nodes' own event loop library):
Starlette for routing, static files and streaming responses, Hypercorn as the HTTP server that
runs on trio. The page (static/index.html, app.js, app.css) draws with Cytoscape.js, vendored
under static/vendor with its licence: nothing is loaded from the internet. Live updates come as
server-sent events (GET /events), the rest from GET requests:

  /                  the page
  /static/...        its script, style and the graph library
  /events            server-sent events: state (on connect), model, status, flow, lost
  /api/state         the same state as JSON
  /api/filter?q=     the flow table's filter, parsed (or the error naming the bad filter)
  /api/pod?id=NS/N   a pod's panel: labels, address, node, policies and direction, Services
  /api/trace?from=POD&to=DEST   `vrouter trace`: each node's stages, and the path to draw

A filter or trace that cannot be done is answered {"ok": false, "error": ...} (the page shows
the error; it is not a failed request). Only GET: any other method is refused (405), and
nothing the page asks changes the cluster (a trace sends nothing). The page builds every text into the document as text, never as HTML.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import sys
from importlib import resources

import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from vrouter.node.flowfilter import FilterError, parse_query
from vrouter.ops.common import EXIT_CONFIG, EXIT_HOST, file_arg, live_cluster
from vrouter.ops.observe import TraceRefused, render_trace, trace
from vrouter.ui import view
from vrouter.ui.hub import Hub

log = logging.getLogger("vrouter.ui")

KEEPALIVE = 15.0         # seconds between comments on an idle event stream
STATIC = resources.files("vrouter.ui") / "static"
SECURITY_HEADERS = [
    # the page's own files only: no inline script, nothing from elsewhere
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
                                 b"style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class OnlyGet:
    """ASGI middleware: GET and nothing else (405), and the security headers on every answer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", []))
                           + SECURITY_HEADERS}
            await send(message)
        if scope["method"] != "GET":
            response = PlainTextResponse("vrouter ui: only GET (the page changes nothing)",
                                         status_code=405, headers={"Allow": "GET"})
            return await response(scope, receive, with_headers)
        return await self.app(scope, receive, with_headers)


def app_for(hub: Hub) -> Starlette:
    async def index(_request):
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    async def state(_request):
        return JSONResponse(hub.state())

    async def flow_filter(request):
        try:
            parsed = parse_query(request.query_params.get("q", ""))
        except FilterError as exc:
            return JSONResponse({"ok": False, "error": str(exc)})
        return JSONResponse({"ok": True, "filter": parsed.to_request()})

    async def pod(request):
        panel = view.pod_panel(hub.cluster, request.query_params.get("id", ""))
        if panel is None:
            return JSONResponse({"ok": False, "error": "no such pod"}, status_code=404)
        return JSONResponse({"ok": True, **panel})

    async def trace_request(request):
        source = request.query_params.get("from", "")
        to = request.query_params.get("to", "")
        if not source or not to:
            return JSONResponse({"ok": False, "error": "from (a pod) and to (an address, pod "
                                 "or Service, :PORT, /PROTO) are needed"})
        try:
            what, hops = await trio.to_thread.run_sync(trace, hub.cluster, source, to)
        except TraceRefused as exc:
            return JSONResponse({"ok": False, "error": str(exc)})
        return JSONResponse({"ok": True, "destination": what, "hops": hops,
                             "text": render_trace(hops), "path": trace_path(hub, source, hops)})

    async def events(_request):
        page = hub.subscribe()

        async def stream():
            told = 0
            try:
                yield sse("state", hub.state())
                while True:
                    with trio.move_on_after(KEEPALIVE) as idle:
                        event, data = await page.receive.receive()
                    if idle.cancelled_caught:
                        yield b": keepalive\n\n"
                        continue
                    if page.dropped > told:
                        yield sse("lost", {"page": page.dropped - told,
                                           "why": "this page read too slowly"})
                        told = page.dropped
                    yield sse(event, data)
            finally:
                hub.unsubscribe(page)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/filter", flow_filter, methods=["GET"]),
        Route("/api/pod", pod, methods=["GET"]),
        Route("/api/trace", trace_request, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ], middleware=[Middleware(OnlyGet)])


def sse(event: str, data) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def trace_path(hub: Hub, source: str, hops: list[dict]) -> list[str]:
    """The map's elements a trace went through: the pod it started at, the Service that
    translated it, the pod it was delivered to (ids as the page names them)."""
    by_name = {p["name"]: p["id"] for p in hub.model["pods"]}
    path = [f"pod:{by_name[source]}"] if source in by_name else []
    for hop in hops:
        for step in hop.get("steps", []):
            service = step.get("service") or {}
            if service.get("service") and not service.get("reply_of_translated_connection"):
                path.append(f"svc:{service['service']}")
        pod = (hop.get("to") or {}).get("pod")
        if pod in by_name:
            path.append(f"pod:{by_name[pod]}")
    return path


async def serve(hub: Hub, listen: str, port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve
    config = Config()
    host = f"[{listen}]" if ":" in listen else listen
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    http_log = logging.getLogger("vrouter.ui.http")
    http_log.setLevel(logging.WARNING)   # not its "Running on": we say where, below
    config.errorlog = http_log
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        binds = await nursery.start(hypercorn_serve, app_for(hub), config)
        for bind in binds:
            print(f"vrouter ui: {hub.cluster.name} on {bind}/ (Ctrl-C stops)", flush=True)


MIN_TRIO = (0, 32)   # anyio, under Starlette, calls trio.to_thread with abandon_on_cancel


def _trio_too_old() -> str | None:
    try:
        version = tuple(int(part) for part in trio.__version__.split(".")[:2])
    except ValueError:
        return None
    if version < MIN_TRIO:
        return (f"vrouter ui needs trio>={'.'.join(map(str, MIN_TRIO))} (Starlette runs on it "
                f"through anyio); this Python has trio {trio.__version__}: pip install -U trio")
    return None


def cmd_ui(args) -> int:
    if (problem := _trio_too_old()) is not None:
        print(f"vrouter: {problem}", file=sys.stderr)
        return EXIT_HOST
    file = file_arg(args.cluster)
    cluster = live_cluster(file)   # the hub reads it again every MODEL_INTERVAL
    try:
        address = ipaddress.ip_address(args.listen)
    except ValueError:
        print(f"vrouter: --listen {args.listen!r}: an IP address (127.0.0.1, ::1, 0.0.0.0)",
              file=sys.stderr)
        return EXIT_CONFIG
    if not 0 <= args.port <= 65535:
        print(f"vrouter: --port {args.port}: 0-65535 (0: any free port)", file=sys.stderr)
        return EXIT_CONFIG
    if not address.is_loopback:
        print(f"vrouter: serving the page on {address}: anyone who reaches it sees the "
              "cluster's pods and flows (nothing on it changes the cluster)", file=sys.stderr)
    hub = Hub(file, cluster)
    try:
        trio.run(serve, hub, str(address), args.port)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"vrouter: cannot serve on {address}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_HOST
    return 0
