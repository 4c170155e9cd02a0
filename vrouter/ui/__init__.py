"""`vrouter ui`: the live page of a running cluster (vrouter.ui.server), served under trio."""

DEFAULT_PORT = 8089


def add_parser(sub) -> None:
    """The command's arguments; the server (Starlette, Hypercorn) is imported when it runs."""
    p = sub.add_parser("ui", help="a live page of a running cluster: map, flows, pods, trace, "
                       f"counters (http://127.0.0.1:{DEFAULT_PORT}/)")
    p.add_argument("cluster", help="a cluster file, or the name of a running cluster")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: "
                   "any free port (printed)")
    p.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                   help="the address to serve on (default: loopback only)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from vrouter.ui.server import cmd_ui
    return cmd_ui(args)
