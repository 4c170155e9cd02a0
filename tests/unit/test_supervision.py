"""`vrouter up` as a supervisor, without processes: when a node that exited is started again,
when it is given up; and the interpreter nodes are started with imports the launcher's code."""
import json
import os
import subprocess
import sys

import fastpath
import vrouter
from vrouter.ops.launcher import RestartPolicy, describe_exit, import_path, python_command


def test_the_first_restart_is_immediate_then_the_pause_grows():
    policy = RestartPolicy(max_restarts=5, window=60, backoff=(0, 1, 2, 4, 8))
    now, delays = 100.0, []
    for _ in range(5):
        delay = policy.next("node-a", now)
        delays.append(delay)
        now += delay + 0.5   # it runs half a second, then dies again
    assert delays == [0, 1, 2, 4, 8]


def test_after_max_restarts_within_the_window_the_node_is_given_up():
    policy = RestartPolicy(max_restarts=3, window=60, backoff=(0,))
    assert [policy.next("node-a", t) for t in (0, 1, 2)] == [0, 0, 0]
    assert policy.next("node-a", 3) is None
    assert policy.next("node-b", 3) == 0   # other nodes have budgets of their own


def test_restarts_older_than_the_window_are_forgotten():
    policy = RestartPolicy(max_restarts=2, window=60, backoff=(0, 5))
    assert policy.next("node-a", 0) == 0
    assert policy.next("node-a", 10) == 5
    assert policy.next("node-a", 30) is None          # a third within a minute
    assert policy.next("node-a", 70) == 5             # the first has left the window
    assert policy.next("node-a", 200) == 0            # a node that stayed up starts afresh


def test_exits_are_described():
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3 (its data path failed)"
    assert describe_exit(1) == "exited with code 1"


def test_the_node_interpreter_imports_the_launchers_files_not_the_working_directorys(tmp_path):
    for package in ("vrouter", "fastpath"):   # decoys where `python -m` would look first
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(
            f"raise ImportError('the {package} of the working directory')")
    command = python_command()
    assert command[:3] == [sys.executable, "-I", "-c"]
    assert import_path()[0] == os.path.dirname(os.path.dirname(vrouter.__file__))
    probe = [sys.executable, "-I", "-c", "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
             "import vrouter, fastpath; print(json.dumps([vrouter.__file__, fastpath.__file__]))",
             command[4]]
    # PYTHONPATH pointing at the decoys too: -I ignores it, the explicit path decides
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [vrouter.__file__, fastpath.__file__]


EDITABLE = """
import importlib.abc, importlib.util, json, subprocess, sys
root = sys.argv[1]

class Editable(importlib.abc.MetaPathFinder):   # what an editable install's finder does
    def find_spec(self, name, path=None, target=None):
        if name in ("vrouter", "fastpath"):
            return importlib.util.spec_from_file_location(
                name, f"{root}/{name}/__init__.py", submodule_search_locations=[f"{root}/{name}"])

sys.meta_path.insert(0, Editable())
import vrouter, fastpath
from vrouter.ops.launcher import python_command
assert not any(p == root for p in sys.path), "imported through the finder, not sys.path"
command = python_command()
child = subprocess.run(command[:3] + ["import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
                                      "import vrouter, fastpath; "
                                      "print(json.dumps([vrouter.__file__, fastpath.__file__]))",
                                      command[4]], capture_output=True, text=True)
print(json.dumps({"parent": [vrouter.__file__, fastpath.__file__], "child": child.stdout,
                  "errors": child.stderr}))
"""


def test_a_launcher_imported_through_an_editable_finder_starts_nodes_that_import_the_same(
        tmp_path):
    """An editable install imports vrouter through a meta-path finder, not sys.path (and this
    machine's own editable install points elsewhere): the node interpreter still gets the
    launcher's files, through the explicit path."""
    root = os.path.dirname(os.path.dirname(vrouter.__file__))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", EDITABLE, root], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["parent"] == [vrouter.__file__, fastpath.__file__]
    assert json.loads(seen["child"]) == seen["parent"], seen["errors"]
