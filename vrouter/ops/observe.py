"""The observing commands: `vrouter capture` (pcapng of a node's ports), `vrouter trace`
(where a packet would go, node by node, stage by stage) and `vrouter metrics`."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import sys
import time

from vrouter.host import state
from vrouter.model.config import Cluster
from vrouter.ops import control
from vrouter.ops.common import (
    EXIT_CONFIG, EXIT_HOST, cluster_arg, node_of_pod, unknown_node,
)

MAX_HOPS = 8
FINISH_TIMEOUT = 5.0   # seconds the node gets to send the rest of a capture


def _copy(sock, out, deadline: float | None) -> bool:
    """Stream to `out` until the node closes (False) or Ctrl-C / the deadline (True)."""
    try:
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                sock.settimeout(left)
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                return True
            if not data:
                return False
            out.write(data)
            out.flush()
    except KeyboardInterrupt:
        return True


def cmd_capture(args) -> int:
    """Stream a node's frames as pcapng into a file or stdout, until Ctrl-C or --seconds."""
    cluster = cluster_arg(args.cluster)
    node = args.node or (node_of_pod(cluster, args.pod) if args.pod else None)
    if node is None:
        print("vrouter: capture needs --node (or --pod of a known pod)", file=sys.stderr)
        return EXIT_CONFIG
    args.node = node
    if unknown_node(args, cluster):
        return EXIT_CONFIG
    where = "pod" if args.pod else "overlay" if args.overlay else "outside" if args.outside \
        else "all"
    direction = "both" if args.both else "sent" if args.sent else "received"
    try:
        header, sock, first = control.open_stream(state.socket_path(cluster.name, node), "capture",
                                                  where=where, pod=args.pod, direction=direction)
    except OSError:
        print(f"vrouter: node {node!r} of cluster {cluster.name!r} is not running",
              file=sys.stderr)
        return EXIT_HOST
    if not header.get("ok"):
        sock.close()
        print(f"vrouter: capture refused: {header.get('error')}", file=sys.stderr)
        return EXIT_CONFIG
    out = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")
    print(f"capturing {', '.join(header['interfaces'])} on {node} ({direction}) into "
          f"{'stdout' if args.write == '-' else args.write}; Ctrl-C stops", file=sys.stderr)
    deadline = time.monotonic() + args.seconds if args.seconds else None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        out.write(first)
        if _copy(sock, out, deadline):
            # Ctrl-C or time is up: say so by closing our side; the node sends what it has
            # captured up to now and closes (a second Ctrl-C does not wait for that)
            sock.shutdown(socket.SHUT_WR)
            _copy(sock, out, time.monotonic() + FINISH_TIMEOUT)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        sock.close()
        try:
            out.flush()
        except BrokenPipeError:
            pass
        if out is not sys.stdout.buffer:
            out.close()
        else:   # a reader that went away must not make Python complain on exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _destination(cluster: Cluster, text: str, port: int | None
                 ) -> tuple[str, int | None, str | None, str]:
    """--to: an address, a pod's name, or a Service (NAME or NAMESPACE/NAME), optionally :PORT
    and /PROTO (10.96.0.10:53/udp): (address, port, protocol or None, what it is)."""
    proto = None
    head, slash, tail = text.rpartition("/")
    if slash and tail.lower() in ("tcp", "udp", "icmp"):
        text, proto = head, tail.lower()
    name, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"--to {text!r}: {port_text!r} is not a port")
        port = int(port_text)
    try:
        return str(ipaddress.IPv4Address(name)), port, proto, name
    except ValueError:
        pass
    pod = next((p for p in cluster.pods if p.name == name), None)
    if pod is not None:
        return str(pod.ip), port, proto, f"pod {pod.name}"
    key = name if "/" in name else f"default/{name}"
    service = next((s for s in cluster.services if s.key == key), None)
    if service is None:
        raise ValueError(f"--to {text!r}: neither an IPv4 address, a pod nor a Service")
    if service.external_name:
        raise ValueError(f"--to {text!r}: Service {key} is an ExternalName (a DNS name for "
                         f"{service.external_name}, no address)")
    if service.cluster_ip is None:
        raise ValueError(f"--to {text!r}: Service {key} is headless (no cluster IP)")
    if port is None and service.ports:
        port = service.ports[0].port
        proto = proto or service.ports[0].protocol.lower()
    return str(service.cluster_ip), port, proto, f"Service {key}"


def _entry_node(cluster: Cluster, args, dst: str) -> str | None:
    """Where a packet from the outside host enters: --node, the node that has the address,
    or the node that announces it (a load-balancer address)."""
    from vrouter.node.servicetables import announcer
    if args.node:
        return args.node
    for node in cluster.nodes:
        if str(node.address) == dst:
            return node.name
    for service in cluster.services:
        if any(str(ip) == dst for ip in service.external_ips):
            return announcer(cluster, service, ipaddress.IPv4Address(dst))
    return None


def cmd_trace(args) -> int:
    """Ask the node of --from where the packet goes, then each node it is sent to."""
    cluster = cluster_arg(args.cluster)
    try:
        dst, port, to_proto, what = _destination(cluster, args.to, args.port)
    except ValueError as exc:
        print(f"vrouter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.proto and to_proto and args.proto != to_proto:
        print(f"vrouter: --to {args.to!r} says {to_proto} but --proto says {args.proto}",
              file=sys.stderr)
        return EXIT_CONFIG
    proto = args.proto or to_proto or ("tcp" if port is not None else "icmp")
    request = {"dst": dst, "proto": proto, "sport": args.sport, "dport": port or 0}
    if args.source == "outside":
        node = _entry_node(cluster, args, dst)
        if node is None:
            print(f"vrouter: which node does the outside host send {dst} to? give --node",
                  file=sys.stderr)
            return EXIT_CONFIG
        request["from"] = "outside"
    else:
        node = node_of_pod(cluster, args.source)
        if node is None:
            print(f"vrouter: --from {args.source!r}: no such pod in cluster {cluster.name} "
                  "(or 'outside')", file=sys.stderr)
            return EXIT_CONFIG
        request.update({"from": "pod", "pod": args.source})
    hops = []
    for _ in range(MAX_HOPS):
        try:
            answer = control.request(state.socket_path(cluster.name, node), "trace", timeout=30,
                                     **request)
        except OSError:
            hops.append({"node": node, "error": "not a running vrouter node (a kernel node, "
                         "or stopped): the trace ends here"})
            break
        if not answer.get("ok"):
            if not hops:
                print(f"vrouter: trace refused by {node}: {answer.get('error')}",
                      file=sys.stderr)
                return EXIT_CONFIG
            hops.append({"node": node, "error": answer.get("error")})
            break
        hops.append(answer)
        to = answer.get("to") or {}
        if not to.get("datagram"):
            break
        node = to["node"]
        request = {"from": "overlay", "source": to["source"], "datagram": to["datagram"]}
    if args.json:
        print(json.dumps({"destination": what, "hops": hops}, indent=2))
    else:
        print(render_trace(hops))
    return 0


def render_trace(hops: list[dict]) -> str:
    lines = []
    for hop in hops:
        if "error" in hop:
            lines.append(f"{hop['node']}: {hop['error']}")
            continue
        first = hop["steps"][0]["packet"] if hop["steps"] else ""
        lines.append(f"{hop['node']}: {hop['input']}: {first}")
        for step in hop["steps"]:
            arrow = f"-> {step['next']}" if step["next"] else f"=> {hop.get('verdict')}"
            line = f"  {step['stage']:<11} {arrow:<15}"
            if "rewritten_from" in step:
                line += f" {step['packet']}"
            lines.append(line.rstrip())
            if "service" in step:
                lines.append("      " + _describe_service(step["service"]))
        to = hop.get("to") or {}
        where = (f"pod {to['pod']} (port {to['port']})" if "pod" in to
                 else f"node {to['node']} ({to['underlay']})" if "node" in to
                 else "every pod port" if "pods" in to
                 else "the outside network" if "outside" in to else None)
        lines.append(f"  {hop.get('kind')}: {hop.get('explanation')}"
                     + (f" -> {where}" if where else ""))
        if "outer" in hop:
            o = hop["outer"]
            lines.append(f"  outer: IP {o['src']} > {o['dst']} UDP {o['sport']} > {o['dport']} "
                         f"VXLAN vni {o['vni']}, inner frame {o['inner_length']} bytes")
    return "\n".join(lines)


def _describe_service(service: dict) -> str:
    if service.get("reply_of_translated_connection"):
        return f"the reply of a translated connection, translated back ({service['connection']})"
    pod = (f" (pod {service['backend_pod']} on {service['backend_node']})"
           if service.get("backend_pod") else "")
    snat = ", source translated to the gateway" if service.get("snat") else ""
    return (f"Service {service['service']} port {service['port_name'] or '-'} "
            f"{service['frontend']}: {service['connection']} connection to backend "
            f"{service['backend']}{pod}{snat}")


def cmd_metrics(args) -> int:
    """The Prometheus text of a node (or of every node), through its control socket: the same
    as its HTTP endpoint serves when cluster.metricsPort is set."""
    cluster = cluster_arg(args.cluster)
    if args.node and unknown_node(args, cluster):
        return EXIT_CONFIG
    names = [args.node] if args.node else [n.name for n in cluster.nodes]
    failed = 0
    for name in names:
        try:
            answer = control.request(state.socket_path(cluster.name, name), "metrics", timeout=30)
        except OSError:
            print(f"vrouter: node {name!r} of cluster {cluster.name!r} is not running",
                  file=sys.stderr)
            failed = EXIT_HOST
            continue
        if len(names) > 1:
            print(f"# node {name}")
        print(answer.get("text") or answer.get("error"), end="")
    return failed


def add_parsers(sub) -> None:
    p = sub.add_parser("capture", help="stream what a node sees at a point as pcapng "
                       "(`-w - | tcpdump -nr -`, or a file for Wireshark)")
    p.add_argument("cluster", help="a cluster file, or the name of a running cluster")
    p.add_argument("--node", help="the node (default: the one of --pod)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pod", help="one pod's port")
    which.add_argument("--overlay", action="store_true", help="the overlay (inner frames)")
    which.add_argument("--outside", action="store_true", help="the port on the outside network")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--sent", action="store_true", help="as the node writes them (after NAT); "
                      "default: as it reads them")
    when.add_argument("--both", action="store_true", help="as read and as written")
    p.add_argument("-w", "--write", default="-", metavar="FILE", help="pcapng file, - for stdout")
    p.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("trace", help="where a packet would go, node by node and stage by stage "
                       "(nothing is sent, nothing changes)")
    p.add_argument("cluster", help="a cluster file, or the name of a running cluster")
    p.add_argument("--from", dest="source", required=True, metavar="POD|outside",
                   help="the pod that sends it, or 'outside' (the outside host)")
    p.add_argument("--to", required=True, metavar="DEST",
                   help="IPv4, a pod's name, or a Service (NAME or NAMESPACE/NAME), then "
                   "[:PORT][/tcp|/udp|/icmp], e.g. 10.96.0.10:53/udp")
    p.add_argument("--port", type=int, help="destination port (default: a Service's first)")
    p.add_argument("--proto", choices=("tcp", "udp", "icmp"),
                   help="default: tcp with a port, else icmp (an echo request)")
    p.add_argument("--sport", type=int, default=40000, help="source port, or the echo id")
    p.add_argument("--node", help="--from outside: the node it is sent to (default: the one "
                   "that has or announces the address)")
    p.add_argument("--json", action="store_true", help="the hops as JSON")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("metrics", help="a node's Prometheus metrics, as its endpoint serves them "
                       "(cluster.metricsPort; this works without it)")
    p.add_argument("cluster", help="a cluster file, or the name of a running cluster")
    p.add_argument("--node", help="one node (default: all, one after the other)")
    p.set_defaults(func=cmd_metrics)
