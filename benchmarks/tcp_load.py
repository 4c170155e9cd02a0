"""A small TCP load tool run inside pods, the same for vrouter and for the kernel reference.

    python3 tcp_load.py serve PORT [PORT...]            sink: count bytes, report them at EOF
    python3 tcp_load.py stream HOST PORT SECONDS        one connection, bulk send -> Gbit/s
    python3 tcp_load.py connect HOST PORT SECONDS N     N threads open and close connections -> /s

iperf3 does not fit a Service with two backends: its control and data connections are two flows,
and a ClusterIP may send them to different servers. Here every connection stands alone. The client
prints one JSON line.
"""
import json
import socket
import sys
import threading
import time

CHUNK = 256 * 1024


def serve(ports: list[int]) -> None:
    for port in ports[1:]:
        threading.Thread(target=_accept, args=(port,), daemon=True).start()
    _accept(ports[0])


def _accept(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4096)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_sink, args=(conn,), daemon=True).start()


def _sink(conn: socket.socket) -> None:
    """Read until EOF and answer with the byte count. A connection that opens with b"c" (the
    connection-rate test) is closed at once, by us: the TIME_WAIT state stays on the server, so
    the client does not run out of source ports."""
    buf = bytearray(CHUNK)
    total = 0
    with conn:
        conn.settimeout(120)
        while True:
            got = conn.recv_into(buf)
            if not got or (total == 0 and buf[:got] == b"c"):
                break
            total += got
        if total:
            conn.sendall(total.to_bytes(8, "big"))


def stream(host: str, port: int, seconds: float) -> dict:
    data = b"\0" * CHUNK
    with socket.create_connection((host, port), timeout=10) as s:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        received = int.from_bytes(s.recv(8), "big")
        elapsed = time.monotonic() - start
    return {"gbps": received * 8 / elapsed / 1e9, "bytes": received, "seconds": elapsed}


def connect(host: str, port: int, seconds: float, threads: int) -> dict:
    done = [0] * threads
    failed = [0] * threads
    deadline = time.monotonic() + seconds

    def work(k: int) -> None:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=2) as s:
                    s.sendall(b"c")   # "close": the server closes first
                    s.recv(1)
                done[k] += 1
            except OSError:
                failed[k] += 1

    start = time.monotonic()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start
    return {"per_second": sum(done) / elapsed, "connections": sum(done), "failed": sum(failed),
            "seconds": elapsed}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve([int(p) for p in sys.argv[2:]])
    elif mode == "stream":
        print(json.dumps(stream(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
    elif mode == "connect":
        print(json.dumps(connect(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
                                 int(sys.argv[5]))))
    else:
        sys.exit(f"unknown mode {mode!r}")
