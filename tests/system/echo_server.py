"""A tiny server for service tests, run inside a pod: answers every TCP connection and UDP
datagram with "<name> <client address> <payload length>" (TCP) or "<name> <client> " + payload
(UDP), so a test can tell which backend answered and what address it saw."""
import socket
import sys
import threading


def serve_tcp(name, port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(128)
    while True:
        conn, addr = srv.accept()
        threading.Thread(target=answer_tcp, args=(name, conn, addr), daemon=True).start()


def answer_tcp(name, conn, addr):
    with conn:
        data = conn.recv(65536)
        if data.startswith(b"hold"):   # a long-lived connection: answer every line until closed
            while data:
                conn.sendall(f"{name} {addr[0]}\n".encode())
                data = conn.recv(65536)
            return
        conn.sendall(f"{name} {addr[0]} {len(data)}\n".encode())


def serve_udp(name, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", port))
    while True:
        data, addr = srv.recvfrom(65536)
        srv.sendto(f"{name} {addr[0]} ".encode() + data, addr)


if __name__ == "__main__":
    name, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    threading.Thread(target=serve_udp, args=(name, udp_port), daemon=True).start()
    serve_tcp(name, tcp_port)
