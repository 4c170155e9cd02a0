"""`vrouter logs [CLUSTER] POD`: what a pod's program wrote, as `kubectl logs` shows it (the
node that runs the pod keeps it: vrouter.node.programs)."""
from __future__ import annotations

import os
import signal
import sys

from vrouter.host import state
from vrouter.ops import control
from vrouter.ops.common import EXIT_CONFIG, EXIT_HOST, cluster_arg, node_of_pod


def running_clusters() -> list[str]:
    """The clusters that have a running node on this machine."""
    try:
        names = sorted(os.listdir(state.STATE_ROOT))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        records = (state.read_record(name, p.stem) for p in state.cluster_dir(name).glob("*.json"))
        if any(state.is_running(r) for r in records):
            found.append(name)
    return found


def cmd_logs(args) -> int:
    if args.pod is None:   # `vrouter logs POD`: the running cluster that has it
        args.pod = args.cluster
        names = running_clusters()
        holding = [n for n in names if node_of_pod(cluster_arg(n), args.pod)]
        if len(holding) != 1:
            print(f"vrouter: pod {args.pod!r} is in " + (
                f"several running clusters ({', '.join(holding)}): name one, `vrouter logs "
                "CLUSTER POD`" if holding else "no running cluster" + (
                    f" (running: {', '.join(names)})" if names else "")), file=sys.stderr)
            return EXIT_CONFIG
        args.cluster = holding[0]
    if args.tail is not None and args.tail < 0:
        print("vrouter: --tail must be 0 or more", file=sys.stderr)
        return EXIT_CONFIG
    cluster = cluster_arg(args.cluster)
    node = node_of_pod(cluster, args.pod)
    if node is None:
        print(f"vrouter: cluster {cluster.name!r} has no pod {args.pod!r}", file=sys.stderr)
        return EXIT_CONFIG
    fields = {"pod": args.pod, "container": args.container, "tail": args.tail,
              "previous": args.previous, "follow": args.follow}
    path = state.socket_path(cluster.name, node)
    try:
        if not args.follow or args.previous:
            answer = control.request(path, "logs", **fields)
        else:
            answer, sock, first = control.open_stream(path, "logs", **fields)
    except OSError:
        print(f"vrouter: node {node!r} of cluster {cluster.name!r} is not running",
              file=sys.stderr)
        return EXIT_HOST
    if not answer.get("ok"):
        print(f"vrouter: {answer.get('error')}", file=sys.stderr)
        if args.follow and not args.previous:
            sock.close()
        return EXIT_CONFIG
    if answer.get("dropped"):
        print(f"vrouter: {answer['dropped']} older lines are gone (at most 1 MiB is kept per "
              "run)", file=sys.stderr)
    if "lines" in answer:
        for line in answer["lines"]:
            print(line)
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.stdout.buffer.write(first)
        sys.stdout.flush()
        while True:
            data = sock.recv(65536)
            if not data:   # the program's run ended (or the pod went)
                break
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        sock.close()
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("logs", help="what a pod's program wrote (stdout and stderr), as kubectl "
                       "logs shows it")
    p.add_argument("cluster", metavar="[CLUSTER]", help="a cluster file or the name of a "
                   "running cluster (default: the running cluster that has the pod)")
    p.add_argument("pod", metavar="POD", nargs="?", help="the pod")
    p.add_argument("-c", "--container", help="the container (default: the pod's first)")
    p.add_argument("-f", "--follow", action="store_true", help="then what it writes, until its "
                   "run ends or Ctrl-C")
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.add_argument("-p", "--previous", action="store_true", help="the run before the current "
                   "one (after a restart)")
    p.set_defaults(func=cmd_logs)
