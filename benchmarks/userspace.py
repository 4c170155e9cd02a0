"""A userspace network stack people already use beside vrouter: podman's rootless networking,
slirp4netns, moving one iperf3 TCP stream from a namespace of its own to an iperf3 server on
the host's loopback (slirp4netns's 10.0.2.2 is the host's 127.0.0.1). Nothing leaves the
machine. python3 -m benchmarks.userspace [--seconds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid

HOST_ALIAS = "10.0.2.2"      # slirp4netns: the host's loopback, as seen from the namespace
READY_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def slirp_namespace():
    """A namespace whose tap0 slirp4netns serves (MTU 65520, as podman configures it)."""
    name = f"vtslirp-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    slirp = None
    try:
        slirp = subprocess.Popen(["slirp4netns", "--configure", "--mtu=65520", "--netns-type=path",
                                  f"/run/netns/{name}", "tap0"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while "10.0.2.100" not in subprocess.run(["ip", "-n", name, "-4", "addr", "show", "tap0"],
                                                 capture_output=True, text=True).stdout:
            if slirp.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("slirp4netns did not configure tap0")
            time.sleep(0.05)
        yield name
    finally:
        if slirp is not None:
            slirp.terminate()
            slirp.wait(10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def slirp_tcp_gbps(seconds: float) -> float | None:
    """One iperf3 TCP stream through slirp4netns, in Gbit/s (None without slirp4netns)."""
    if shutil.which("slirp4netns") is None:
        return None
    port = _free_port()
    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_TIMEOUT   # listening (a probe connection would be
        while not subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                                 text=True).stdout.strip():   # the one client -1 serves)
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("iperf3 -s did not start")
            time.sleep(0.05)
        with slirp_namespace() as netns:
            result = subprocess.run(["ip", "netns", "exec", netns, "iperf3", "-c", HOST_ALIAS,
                                     "-p", str(port), "-t", str(seconds), "-J"],
                                    capture_output=True, text=True, timeout=seconds + 30)
        if result.returncode != 0:
            raise RuntimeError(f"iperf3 through slirp4netns failed: {result.stdout[-500:]}")
        return json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.userspace")
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    gbps = slirp_tcp_gbps(args.seconds)
    print("slirp4netns is not installed" if gbps is None else
          f"slirp4netns (namespace -> host loopback) TCP: {gbps:.2f} Gbit/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
