"""A client loop inside a pod: a new TCP connection to HOST:PORT every 20 ms, each an HTTP GET
answered by tests/system/podserver.py, until the file STOP exists. Every answer's server (the
pod that answered) is counted; every failure is kept with its time and error. PROGRESS is
rewritten as it goes (for the test to follow), and the summary is printed as JSON at the end.

    python3 webloop.py HOST PORT STOP PROGRESS
"""
import json
import os
import socket
import sys
import time


def once(host, port):
    with socket.create_connection((host, port), timeout=2) as conn:
        conn.settimeout(2)
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise ConnectionError(f"answer {head[:40]!r}")
    return body.decode().strip()


def main():
    host, port, stop, progress = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ok, failures, by, last = 0, [], {}, []
    start = time.monotonic()
    while not os.path.exists(stop):
        t = round(time.monotonic() - start, 3)
        try:
            who = once(host, port)
            ok += 1
            by[who] = by.get(who, 0) + 1
            last = (last + [who])[-100:]
        except Exception as exc:
            failures.append([t, type(exc).__name__, str(exc)])
        summary = {"ok": ok, "failed": len(failures), "failures": failures[:20], "by": by,
                   "last": last}
        with open(progress + ".tmp", "w") as f:
            json.dump(summary, f)
        os.replace(progress + ".tmp", progress)
        time.sleep(0.02)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
