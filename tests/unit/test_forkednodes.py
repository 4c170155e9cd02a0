"""Nodes forked from the launcher (vrouter.ops.forkednodes): exit codes and signals as Popen
reports them, the title ps shows, and no fork from a threaded process. Each case runs in a
fresh interpreter: the test process may hold threads of its own (trio's worker cache)."""
import json
import subprocess
import sys

CHILD = r"""
import json, os, signal, sys, threading, time
import vrouter.ops.cli as cli
from vrouter.ops import forkednodes

def main(argv):
    if argv[0] == "exit":
        return int(argv[1])
    if argv[0] == "raise":
        raise RuntimeError("a bug in the node")
    time.sleep(60)   # "sleep": until signalled

cli.main = main   # what the child imports after the fork
report = {}
child = forkednodes.fork_node(["exit", "7"], "vrouter run probe --node exits")
report["exit"] = child.wait(10)
child = forkednodes.fork_node(["raise"], "vrouter run probe --node raises")
report["raise"] = child.wait(10)
child = forkednodes.fork_node(["sleep"], "vrouter run probe --node sleeps")
report["running"] = child.poll()
deadline = time.monotonic() + 10
while open(f"/proc/{child.pid}/cmdline", "rb").read().split(b"\0")[0] != b"vrouter run probe --node sleeps":
    if time.monotonic() > deadline:
        break
    time.sleep(0.01)
report["title"] = open(f"/proc/{child.pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
try:
    child.wait(0.2)
    report["timeout"] = False
except subprocess.TimeoutExpired:
    report["timeout"] = True
child.send_signal(signal.SIGTERM)
report["term"] = child.wait(10)
child.kill()   # already gone: no error
threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
try:
    forkednodes.fork_node(["exit", "0"], "never")
    report["threaded"] = "forked"
except RuntimeError as exc:
    report["threaded"] = str(exc)
print(json.dumps(report))
""".replace("import json, os", "import json, os, subprocess")


def test_forked_nodes_report_like_popen_and_show_their_title():
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exit"] == 7
    assert report["raise"] == 1 and "a bug in the node" in result.stderr
    assert report["running"] is None
    assert report["title"] == "vrouter run probe --node sleeps"
    assert report["timeout"] is True
    assert report["term"] == -15
    assert report["threaded"] == "forking the nodes needs a single-threaded launcher"
