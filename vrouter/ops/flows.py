"""`vrouter observe`: the connections the nodes logged (their flow logs, vrouter.node.flowlog),
printed as `hubble observe` prints flows.

    vrouter observe demo --last 50 --verdict DROPPED
    vrouter observe demo -f --pod default/web-1 -o json

Each node applies the filters itself and answers with its newest flows (or, with -f, streams
them as they come); this merges them by time. Output: compact (Hubble's, with the node),
table (aligned columns) or json (one object per line, as `hubble observe -o json`).
"""
from __future__ import annotations

import datetime
import json
import queue
import sys
import threading

from vrouter.host import state
from vrouter.node import control
from vrouter.node.flowfilter import FilterError, build
from vrouter.node.flowlog import DEFAULT_LAST, endpoint_text
from vrouter.ops.common import EXIT_CONFIG, EXIT_HOST, cluster_arg

FILTERS = ("pod", "from_pod", "to_pod", "service", "namespace", "verdict", "event", "protocol",
           "port")
COLUMNS = ("TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")


def timestamp(flow: dict) -> str:
    """Hubble's StampMilli (Jan _2 15:04:05.000), in local time."""
    t = datetime.datetime.fromtimestamp(flow.get("time_ns", 0) / 1e9)
    return f"{t:%b} {t.day:>2} {t:%H:%M:%S}.{t.microsecond // 1000:03d}"


def hosts(flow: dict) -> tuple[str, str]:
    """SOURCE and DESTINATION: ns/pod:port, else the address (:port)."""
    l4 = next(iter((flow.get("l4") or {}).values()), {})
    ip = flow.get("IP") or {}
    return (endpoint_text(flow.get("source") or {}, ip.get("source", ""), l4.get("source_port")),
            endpoint_text(flow.get("destination") or {}, ip.get("destination", ""),
                          l4.get("destination_port")))


def arrow(flow: dict) -> str:
    """-> as sent, <- for a packet that went the reply way (the side that opened the
    connection stays on the left, as Hubble prints replies), <> when nobody knows."""
    reply = flow.get("is_reply")
    return "<>" if reply is None else "<-" if reply else "->"


def compact(flow: dict) -> str:
    src, dst = hosts(flow)
    return (f"{timestamp(flow)} [{flow.get('node_name')}]: {src} {arrow(flow)} {dst} "
            f"{flow.get('type')} {flow.get('verdict')} ({flow.get('Summary')})")


def table_row(flow: dict) -> list[str]:
    src, dst = hosts(flow)
    return [timestamp(flow), flow.get("node_name", ""), src, f"{arrow(flow)} {dst}",
            flow.get("type", ""), flow.get("verdict", ""), flow.get("Summary", "")]


def table(flows: list[dict]) -> str:
    rows = [list(COLUMNS)] + [table_row(f) for f in flows]
    widths = [max(len(r[k]) for r in rows) for k in range(len(COLUMNS) - 1)]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "   " + r[-1]
                     for r in rows)


def as_json(flow: dict) -> str:
    return json.dumps({"flow": flow, "node_name": flow.get("node_name"), "time": flow.get("time")})


def lost_line(node: str, lost: dict, output: str) -> str:
    if output == "json":
        return json.dumps({"lost_events": {**lost, "node_name": node}})
    return f"EVENTS LOST: {lost.get('flows')} on {node} ({lost.get('why')})"


def filter_values(args) -> dict:
    values = {name: getattr(args, name) for name in FILTERS if getattr(args, name)}
    if args.since:
        values["since"] = args.since
    return values


def cmd_observe(args) -> int:
    """Ask every node (or --node) for its flows; print them merged by time, or follow them."""
    cluster = cluster_arg(args.cluster)
    try:
        flow_filter = build(filter_values(args))
    except FilterError as exc:
        print(f"vrouter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.last is not None and args.last < 0:
        print(f"vrouter: --last {args.last}: a number of flows, 0 or more", file=sys.stderr)
        return EXIT_CONFIG
    known = {n.name for n in cluster.nodes if not n.kernel}
    for name in args.node or ():
        if name not in known:
            print(f"vrouter: --node {name!r}: no vrouter node of that name (nodes: "
                  f"{', '.join(sorted(known))})", file=sys.stderr)
            return EXIT_CONFIG
    nodes = list(args.node) if args.node else [n.name for n in cluster.nodes if not n.kernel]
    last = args.last
    if last is None and not args.follow and flow_filter.since is None:
        last = DEFAULT_LAST
    request = {"filter": flow_filter.to_request(), "last": last}
    if args.follow:
        return _follow(cluster, nodes, request, args.output)
    flows, missing = [], 0
    for name in nodes:
        try:
            answer = control.request(state.socket_path(cluster.name, name), "flows", timeout=30,
                                     **request)
        except OSError:
            print(f"vrouter: node {name!r} of cluster {cluster.name!r} is not running",
                  file=sys.stderr)
            missing += 1
            continue
        if not answer.get("ok"):
            print(f"vrouter: {name}: {answer.get('error')}", file=sys.stderr)
            return EXIT_CONFIG
        if answer.get("lost_ring_full"):
            print(f"vrouter: {name} lost {answer['lost_ring_full']} flow events since it "
                  "started (its ring was full before it was read)", file=sys.stderr)
        flows += answer["flows"]
    flows.sort(key=lambda f: f.get("time_ns", 0))
    if last:
        flows = flows[-last:]
    if args.output == "json":
        out = "\n".join(as_json(f) for f in flows)
    elif args.output == "table":
        out = table(flows) if flows else ""
    else:
        out = "\n".join(compact(f) for f in flows)
    if out:
        print(out, flush=True)
    return EXIT_HOST if missing == len(nodes) else 0


def _follow(cluster, nodes: list[str], request: dict, output: str) -> int:
    """One reader thread per node puts its lines into one queue; printed as they come."""
    lines: queue.Queue = queue.Queue(maxsize=4096)
    sockets = []
    for name in nodes:
        try:
            header, sock, rest = control.open_stream(state.socket_path(cluster.name, name),
                                                     "flows", follow=True, **request)
        except OSError:
            print(f"vrouter: node {name!r} of cluster {cluster.name!r} is not running",
                  file=sys.stderr)
            continue
        if not header.get("ok"):
            sock.close()
            print(f"vrouter: {name}: {header.get('error')}", file=sys.stderr)
            return EXIT_CONFIG
        sockets.append(sock)
        threading.Thread(target=_read, args=(name, sock, rest, lines), daemon=True).start()
    if not sockets:
        return EXIT_HOST
    if output == "table":
        print("   ".join(COLUMNS), flush=True)
    ended = 0
    try:
        while ended < len(sockets):
            name, item = lines.get()
            if item is None:
                ended += 1
                print(f"vrouter: {name} closed the stream (stopped?)", file=sys.stderr)
                continue
            if "lost" in item:
                print(lost_line(name, item["lost"], output), flush=True)
            elif output == "json":
                print(as_json(item["flow"]), flush=True)
            elif output == "table":
                print("   ".join(table_row(item["flow"])), flush=True)
            else:
                print(compact(item["flow"]), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        for sock in sockets:
            sock.close()
    return 0


def _read(name: str, sock, rest: bytes, lines: queue.Queue) -> None:
    """A node's stream: JSON lines until it closes (then None)."""
    buffer = rest
    try:
        while True:
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    lines.put((name, json.loads(line)))
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buffer += chunk
    except (OSError, ValueError):
        pass
    lines.put((name, None))


def add_parser(sub) -> None:
    p = sub.add_parser("observe", help="the connections the nodes saw start, end and be refused "
                       "(their flow logs), as `hubble observe` prints flows")
    p.add_argument("cluster", help="a cluster file, or the name of a running cluster")
    p.add_argument("--node", action="append", metavar="N", help="only this node (repeatable)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    p.add_argument("--last", type=int, metavar="N", help=f"the newest N flows (default "
                   f"{DEFAULT_LAST}, or all with --since; -f: none of the past)")
    p.add_argument("--since", metavar="DURATION", help="flows of the last DURATION (30s, 5m, 1h)")
    for name, what in (("pod", "a pod on either side"), ("from-pod", "the source pod"),
                       ("to-pod", "the destination pod"),
                       ("service", "the Service it was made to"),
                       ("namespace", "a pod or Service of this namespace on either side")):
        p.add_argument(f"--{name}", action="append", metavar="NS/NAME" if name != "namespace"
                       else "NS", help=f"{what} (a name prefix; NAME alone: namespace default)"
                       if name != "namespace" else what)
    p.add_argument("--verdict", action="append", metavar="V",
                   help="FORWARDED, TRANSLATED, DROPPED or REJECTED")
    p.add_argument("--event", action="append", metavar="E", help="start, end, drop or reject")
    p.add_argument("--protocol", action="append", metavar="P", help="tcp, udp or icmp")
    p.add_argument("--port", action="append", metavar="N", help="a port on either side")
    p.add_argument("-o", "--output", choices=("compact", "table", "json"), default="compact",
                   help="compact (default), table, or json: one object per line")
    p.set_defaults(func=cmd_observe)
