"""Clients that run inside a pod while a test attacks or churns the cluster; each prints one
JSON object when done.

    stream HOST PORT SECONDS         one long-lived TCP connection (echo_server's "hold" mode):
                                     a line every 20 ms, answers counted per 1-second window,
                                     and the backend that answered
    connects HOST PORT SECONDS       a new TCP connection every 50 ms (1 s timeout each)
    udp HOST PORT SPORT SECONDS      a datagram from a fixed source port every 50 ms: who answered
                                     when (the echo server says its name)
"""
import json
import socket
import sys
import time


def stream(host, port, seconds):
    conn = socket.create_connection((host, port), timeout=5)
    conn.settimeout(0.05)
    conn.sendall(b"hold\n")
    start = time.monotonic()
    windows = [0] * int(seconds)
    pending = b""
    backend = None
    while (now := time.monotonic()) - start < seconds:
        conn.sendall(b"line\n")
        try:
            pending += conn.recv(65536)
        except (socket.timeout, TimeoutError):
            pass
        answers = pending.count(b"\n")
        if answers and backend is None:
            backend = pending.split(b" ")[0].decode()
        pending = pending[pending.rfind(b"\n") + 1:] if answers else pending
        windows[min(int(now - start), len(windows) - 1)] += answers
        time.sleep(0.02)
    conn.close()
    return {"windows": windows, "backend": backend}


def connects(host, port, seconds):
    ok = failed = 0
    errors = {}
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            with socket.create_connection((host, port), timeout=1) as conn:
                conn.sendall(b"x")
                conn.settimeout(1)
                if conn.recv(100):
                    ok += 1
                else:
                    raise ConnectionError("closed")
        except OSError as exc:
            failed += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        time.sleep(0.05)
    return {"ok": ok, "failed": failed, "errors": errors}


def udp(host, port, sport, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    s.connect((host, port))   # answers from the Service address only, as a client expects
    s.settimeout(0.05)
    answers = []
    start = time.time()
    while time.time() - start < seconds:
        try:
            s.send(b"u")
            data = s.recv(1024)
            answers.append((time.time(), data.split(b" ")[0].decode()))
        except OSError:   # timeout, or a port unreachable while no backend exists
            pass
        time.sleep(0.05)
    return {"answers": answers}


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "stream":
        result = stream(args[0], int(args[1]), float(args[2]))
    elif mode == "connects":
        result = connects(args[0], int(args[1]), float(args[2]))
    else:
        result = udp(args[0], int(args[1]), int(args[2]), float(args[3]))
    print(json.dumps(result))
