"""Run inside a pod: try every address once, all at once (a TCP connection, or a UDP datagram
that an echo server answers) and print which answered, as a JSON list.

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
        return True
    except OSError:
        return False


def udp(address, port, timeout, sport):
    """Three tries within the timeout: one lost datagram is not a blocked path."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", sport))
        s.settimeout(timeout / 3)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s.sendto(b"probe", (address, port))
                s.recv(1024)
                return True
            except OSError:
                continue
        return False


if __name__ == "__main__":
    proto, port, timeout, sport = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    addresses = sys.argv[5:]
    check = tcp if proto == "tcp" else udp
    with ThreadPoolExecutor(len(addresses)) as pool:
        print(json.dumps(list(pool.map(lambda k: check(addresses[k], port, timeout, sport + k),
                                       range(len(addresses))))))
