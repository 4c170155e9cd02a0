"""configs/policies.yaml as a system test runs it: the same pods, Services and policies, with
the test's unique names (cluster, pods, underlay addresses), and web servers in the api and the
database as the file's header comment starts them."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from tests.system.cluster import Cluster, wait_for
from vrouter.model import config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "policies.yaml"
SERVERS = {"api": 8080, "db": 5432}


class PoliciesCluster(Cluster):
    """`cluster.pod("frontend")` is the pod (and netns) of the file's pol-frontend."""

    def __init__(self, tmp_path: Path):
        # the README's screenshots show the file's own pod names (pol-...): only then, when a
        # person asks for them (VROUTER_SCREENSHOTS), the names are not unique
        prefix = "pol" if os.environ.get("VROUTER_SCREENSHOTS") else None
        super().__init__(tmp_path, pods_per_node=(0, 0), prefix=prefix)
        text = CONFIG.read_text()
        for old, new in (("name: policies", f"name: {self.prefix}"),
                         ("pol-", f"{self.prefix}-"),
                         ("127.0.0.31", self.nodes[0]["underlay"]),
                         ("127.0.0.32", self.nodes[1]["underlay"])):
            assert old in text, f"{CONFIG} has no {old!r} any more"
            text = text.replace(old, new)
        self.path.write_text(text)
        self.pod_ips = {p.name: str(p.ip) for p in config.load(self.path, check_host=False).pods}


@contextlib.contextmanager
def web_servers(cluster: PoliciesCluster):
    """python3 -m http.server in the api (8080) and the database (5432) pods."""
    servers = []
    try:
        for short, port in SERVERS.items():
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", cluster.pod(short), sys.executable, "-m", "http.server",
                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for short, port in SERVERS.items():
            wait_for(lambda: f":{port}" in cluster.sh(short, "ss", "-ltn").stdout,
                     what=f"web server in {short}")
        yield
    finally:
        for server in servers:
            server.kill()
            server.wait()


def curl(cluster: PoliciesCluster, short: str, url: str, seconds: float = 2) -> int:
    """curl's exit code (0: an answer; 28: it timed out) from pod `short`."""
    return cluster.sh(short, "curl", "-s", "-o", "/dev/null", "-m", f"{seconds:g}", url,
                      timeout=seconds + 30).returncode
