"""Podman as a test's container runtime, with its CNI backend, isolated in a temporary directory:
its own storage (--root/--runroot), containers.conf (runc, cgroupfs, ulimits within the hard
limits), CNI network and plugin directories. The image is busybox-static imported with
`podman import` (there is no registry). Everything goes with the directory."""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ping", "ip", "sleep", "cat", "echo", "mkdir", "httpd", "wget", "hostname")
IMAGE = "localhost/vrouter-busybox:test"


class Podman:
    def __init__(self, root: Path, cluster):
        if not shutil.which("podman") or not os.path.exists(BUSYBOX):
            pytest.fail("podman and busybox-static are needed (.ci/run installs them)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.runroot = Path(tempfile.mkdtemp(prefix="vrp-", dir="/tmp"))   # podman: <= 50 chars
        self.net_d = root / "net.d"
        self.plugins = root / "plugins"
        hard_files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard_procs = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        files = min(1024, hard_files) if hard_files > 0 else 1024
        procs = min(1024, hard_procs) if hard_procs > 0 else 1024
        self.conf = root / "containers.conf"
        self.conf.write_text(f"""[containers]
default_ulimits = ["nofile={files}:{files}", "nproc={procs}:{procs}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "cni"
network_config_dir = "{self.net_d}"
cni_plugin_dirs = ["{self.plugins}", "/usr/lib/cni"]
""")
        for node in cluster.nodes:
            self.vrouter("cni-conf", str(cluster.path), "--node", node["name"], "--install",
                         str(self.net_d), "--plugin-dir", str(self.plugins))
        self._import_image()

    def vrouter(self, *args):
        result = subprocess.run([sys.executable, "-m", "vrouter", *args], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    def run(self, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
        result = subprocess.run(["podman", "--root", str(self.root / "storage"),
                                 "--runroot", str(self.runroot), *args],
                                capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "CONTAINERS_CONF": str(self.conf)})
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr}"
        return result

    def _import_image(self) -> None:
        tar = self.root / "busybox.tar"
        with tarfile.open(tar, "w") as t:
            t.add(BUSYBOX, arcname="bin/busybox")
            for applet in APPLETS:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                t.addfile(link)
        self.run("import", str(tar), IMAGE)

    def close(self) -> None:
        self.run("rm", "--all", "--force", "--time", "0", check=False)
        self.run("system", "reset", "--force", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)
