"""Run inside a pod: try every address once, all at once (a TCP connection, or a UDP datagram
that an echo server answers) and print what happened to each, as a JSON list of outcomes:
"ok" (connected, or answered), "timeout" (nothing came back: what a NetworkPolicy drop looks
like), "refused" (a TCP RST or an ICMP port unreachable came back). Anything else (an address
already in use, no route) is a broken test, not an outcome: the probe fails.

The k-th address is tried from source port SPORT+k: a caller that never reuses a source port
never meets a connection conntrack still remembers from an earlier try."""
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def tcp(address, port, timeout, sport):
    try:
        socket.create_connection((address, port), timeout=timeout,
                                 source_address=("0.0.0.0", sport)).close()
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"


def udp(address, port, timeout, sport):
    """Three tries within the timeout: one lost datagram is not a blocked path."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", sport))
        s.connect((address, port))   # so that an ICMP port unreachable is reported to us
        s.settimeout(timeout / 3)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s.send(b"probe")
                s.recv(1024)
                return "ok"
            except ConnectionRefusedError:
                return "refused"
            except (socket.timeout, TimeoutError):
                continue
        return "timeout"


if __name__ == "__main__":
    proto, port, timeout, sport = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    addresses = sys.argv[5:]
    check = tcp if proto == "tcp" else udp
    with ThreadPoolExecutor(len(addresses)) as pool:
        print(json.dumps(list(pool.map(lambda k: check(addresses[k], port, timeout, sport + k),
                                       range(len(addresses))))))
