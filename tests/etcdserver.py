"""A real etcd (Debian's etcd-server) for tests: one member, its data in a temporary directory,
listening on a loopback address of its own (127.A.B.1, unique within the run) or on an address
inside a network namespace the test made; with `tls=True` it serves https only and asks every
client for a certificate of its own CA (`make_certificates`). Stopped, killed and started again
at will; `close` kills it and removes its data and certificates, also when the test failed."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
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


def make_certificates(directory: Path, address: str) -> dict[str, Path]:
    """A CA of its own, a server certificate for `address` and a client certificate, with
    openssl (P-256 keys, valid one day): {ca, server, server_key, client, client_key}."""
    files = {name: directory / f"{name}.pem" for name in
             ("ca", "ca_key", "server", "server_key", "client", "client_key")}

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)}: {result.stderr}")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", str(files["ca_key"]), "-out", str(files["ca"]),
            "-days", "1", "-subj", "/CN=vrouter test CA")
    # etcd's JSON gateway dials etcd's gRPC with the server's certificate: it is a client too
    for who, extensions in (("server", f"subjectAltName=IP:{address}\n"
                                       "extendedKeyUsage=serverAuth,clientAuth"),
                            ("client", "extendedKeyUsage=clientAuth")):
        csr, ext = directory / f"{who}.csr", directory / f"{who}.ext"
        ext.write_text(extensions + "\n")
        openssl("req", "-new", *key, "-keyout", str(files[f"{who}_key"]), "-out", str(csr),
                "-subj", f"/CN=vrouter test {who}")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey",
                str(files["ca_key"]), "-CAcreateserial", "-days", "1", "-extfile", str(ext),
                "-out", str(files[who]))
    return files


class EtcdServer:
    def __init__(self, address: str | None = None, netns: str | None = None,
                 client_port: int = 2379, peer_port: int = 2380, tls: bool = False,
                 also: tuple[str, ...] = ()):
        self.address = address or loopback_address()
        self.netns = netns
        self.url = f"{'https' if tls else 'http'}://{self.address}:{client_port}"
        # more addresses it answers at, as the members of an etcd cluster do
        self.urls = [self.url] + [f"{self.url.split(':')[0]}://{a}:{client_port}" for a in also]
        self.peer_url = f"http://{self.address}:{peer_port}"
        self.data = Path(tempfile.mkdtemp(prefix="vrouter-etcd-"))
        self.log = self.data / "etcd.log"
        self.proc: subprocess.Popen | None = None
        self.certs = make_certificates(self.data, self.address) if tls else None

    def argv(self) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        tls = [] if not self.certs else [
            "--cert-file", str(self.certs["server"]), "--key-file", str(self.certs["server_key"]),
            "--trusted-ca-file", str(self.certs["ca"]), "--client-cert-auth"]
        return prefix + [ETCD, "--name", "vt", "--data-dir", str(self.data / "member"),
                         "--listen-client-urls", ",".join(self.urls),
                         "--advertise-client-urls", ",".join(self.urls),
                         "--listen-peer-urls", self.peer_url,
                         "--initial-advertise-peer-urls", self.peer_url,
                         "--initial-cluster", f"vt={self.peer_url}",
                         "--enable-grpc-gateway", "--log-level", "warn", *tls]

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
            handlers: list = [urllib.request.ProxyHandler({})]
            if self.certs:
                context = ssl.create_default_context(cafile=str(self.certs["ca"]))
                context.load_cert_chain(str(self.certs["client"]), str(self.certs["client_key"]))
                handlers.append(urllib.request.HTTPSHandler(context=context))
            opener = urllib.request.build_opener(*handlers)
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
        tls = [] if not self.certs else [f"--cacert={self.certs['ca']}",
                                         f"--cert={self.certs['client']}",
                                         f"--key={self.certs['client_key']}"]
        result = subprocess.run(prefix + ["etcdctl", "--endpoints", self.url, *tls, *args],
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
