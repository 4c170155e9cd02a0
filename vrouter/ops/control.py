"""The node's control socket, as the commands use it: the client side of vrouter.node.control
(which owns the protocol and the server; kept here so that callers of vrouter.ops.control work)."""
from vrouter.node.control import Stream, open_stream, receive_line, request  # noqa: F401
