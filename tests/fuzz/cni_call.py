"""Fuzz target: a CNI plugin call, its environment and stdin (vrouter.ops.cni.main).

Input: NUL-separated fields CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, then
the network configuration as stdin (bytes, decoded as a real stdin would be). The plugin talks
to a stand-in node: cluster "fz", node "node-a", under a state directory of this process
(VROUTER_STATE_DIR), which answers every request as a node that succeeds would; CNI_PATH is an
empty directory, so no IPAM plugin runs. Nothing reaches /run/vrouter or a running node.

Properties: main returns 0 or 1 and never raises; it asks no socket outside its state
directory (a cluster or node name is no path); on 1, stdout is exactly one CNI error object
(cniVersion, an integer code, msg); on 0, ADD and VERSION print one result object and the other
commands print nothing."""
if __name__ == "__main__":
    from tests.fuzz import runner
    raise SystemExit(runner.main("tests.fuzz.cni_call"))

import atexit
import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

from vrouter.host import state
from vrouter.ops import cni, control

FIELDS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS")
CLUSTER, NODE = "fz", "node-a"
ANSWERS = {
    "attach": {"ok": True, "pod": "ctr", "namespace": "default", "port": 3, "ifname": "eth0",
               "ifindex": 7, "mac": "0a:58:0a:f4:01:05", "netns": "/proc/1/ns/net",
               "ip": "10.244.1.5/24", "gateway": "10.244.1.1",
               "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"],
                       "options": ["ndots:5"]}},
    "detach": {"ok": True, "detached": True, "pod": "ctr"},
    "gc": {"ok": True, "removed": []},
    "status": {"ok": True, "ready": True},
}
ANSWERS["check"] = ANSWERS["attach"]

_place: list[Path] = []


def setup() -> Path:
    """The state directory with the stand-in node listening in it (once per process)."""
    if _place:
        return _place[0]
    root = Path(tempfile.mkdtemp(prefix="vrouter-fuzz-cni-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / "cni-path").mkdir()
    (root / "netns").touch()   # a CNI_NETNS that exists
    node_dir = root / "state" / CLUSTER
    node_dir.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(node_dir / f"{NODE}.sock"))
    listener.listen(8)
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    _place.append(root)
    return root


def _serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        with conn:
            request = json.loads(control.receive_line(conn) or b"{}")
            conn.sendall(json.dumps(ANSWERS.get(request.get("cmd"), {"ok": False})).encode()
                         + b"\n")


class Escaped(AssertionError):
    """The plugin went for a socket outside its state directory."""


def _guarded_request(path, *args, **kwargs):
    """Only the stand-in node may be asked: a name like ../../run/vrouter/demo must not reach a
    real one (and is a finding: the plugin must refuse such names itself)."""
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(state.STATE_ROOT)):
        raise Escaped(f"the plugin asked {path}, outside {state.STATE_ROOT}")
    return _request(path, *args, **kwargs)


_request = control.request


@contextlib.contextmanager
def _stand_in(root: Path):
    """The plugin's state directory and control client pointed at the stand-in node for one
    call only (the rest of a test process keeps the real ones)."""
    saved = state.STATE_ROOT, control.request
    state.STATE_ROOT, control.request = root / "state", _guarded_request
    try:
        yield
    finally:
        state.STATE_ROOT, control.request = saved


def call(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    root = setup()
    saved = {k: os.environ.get(k) for k in (*FIELDS, "CNI_PATH")}
    out = io.StringIO()
    old_stdin = sys.stdin
    try:
        for k in FIELDS:
            os.environ.pop(k, None)
        os.environ.update(env)
        os.environ["CNI_PATH"] = str(root / "cni-path")
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")   # as Python's own
        with contextlib.redirect_stdout(out), _stand_in(root):
            code = cni.main()
    finally:
        sys.stdin = old_stdin
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue()


def decode(data: bytes) -> tuple[dict[str, str], bytes]:
    parts = data.split(b"\0", len(FIELDS))
    env = {k: os.fsdecode(v) for k, v in zip(FIELDS, parts) if v}
    stdin = parts[len(FIELDS)] if len(parts) > len(FIELDS) else b""
    return env, stdin


def check(data: bytes) -> None:
    env, stdin = decode(data)
    code, out = call(env, stdin)
    assert code in (0, 1), code
    lines = out.splitlines()
    command = env.get("CNI_COMMAND")
    if code == 1:
        assert len(lines) == 1, out
        error = json.loads(lines[0])
        assert isinstance(error.get("code"), int) and isinstance(error.get("msg"), str), error
        assert error.get("cniVersion") in cni.SUPPORTED, error
    elif command in ("ADD", "VERSION"):
        assert len(lines) == 1, out
        result = json.loads(lines[0])
        assert result.get("cniVersion") in cni.SUPPORTED, result
    else:
        assert out == "", out
