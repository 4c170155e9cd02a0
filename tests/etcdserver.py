"""A real etcd (Debian's etcd-server) for tests: one member, its data in a temporary directory,
listening on a loopback address of its own (127.A.B.1, unique within the run) or on an address
inside a network namespace the test made. Stopped, killed and started again at will; `close`
kills it and removes its data, also when the test failed."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 30.0
_used: set[tuple[int, int]] = set()


def loopback_address() -> str:
    """127.A.B.1 with A, B random and unused in this run: parallel runs do not collide."""
    while True:
        pair = (secrets.randbelow(250) + 2, secrets.randbelow(250) + 2)
        if pair not in _used:
            _used.add(pair)
            return f"127.{pair[0]}.{pair[1]}.1"


class EtcdServer:
    def __init__(self, address: str | None = None, netns: str | None = None,
                 client_port: int = 2379, peer_port: int = 2380):
        self.address = address or loopback_address()
        self.netns = netns
        self.url = f"http://{self.address}:{client_port}"
        self.peer_url = f"http://{self.address}:{peer_port}"
        self.data = Path(tempfile.mkdtemp(prefix="vrouter-etcd-"))
        self.log = self.data / "etcd.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return prefix + [ETCD, "--name", "vt", "--data-dir", str(self.data / "member"),
                         "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                         "--listen-peer-urls", self.peer_url,
                         "--initial-advertise-peer-urls", self.peer_url,
                         "--initial-cluster", f"vt={self.peer_url}",
                         "--enable-grpc-gateway", "--log-level", "warn"]

    def start(self) -> "EtcdServer":
        if self.running:
            return self
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd did not answer within {START_TIMEOUT} s:\n{self.tail()}")
            time.sleep(0.05)
        return self

    def healthy(self) -> bool:
        """Whether etcd answers a status request (through the JSON gateway the nodes use)."""
        if self.netns:
            result = subprocess.run(["ip", "netns", "exec", self.netns, "curl", "-s", "-m", "1",
                                     "-X", "POST", "-d", "{}", f"{self.url}/v3/maintenance/status"],
                                    capture_output=True, text=True)
            return '"version"' in result.stdout
        try:
            request = urllib.request.Request(f"{self.url}/v3/maintenance/status", data=b"{}",
                                             method="POST")
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(request, timeout=1) as response:
                return "version" in json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop it (the data stays: `start` brings the same store back)."""
        if self.running:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        env = {**os.environ, "ETCDCTL_API": "3"}
        result = subprocess.run(prefix + ["etcdctl", "--endpoints", self.url, *args],
                                capture_output=True, text=True, env=env, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {result.stderr}")
        return result

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.data, ignore_errors=True)
