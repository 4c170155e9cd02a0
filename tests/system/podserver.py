"""A web server for the pods of the workload tests, run by vrouter as a container's program:
every GET is answered with one line, the server's hostname (its pod's name: vrouter gives each
program the pod's UTS namespace) and $VERSION.

    python3 podserver.py PORT [TAG]     (TAG: ignored; it lets a test find its programs)
"""
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{socket.gethostname()} {os.environ.get('VERSION', '1')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    print(f"serving on {sys.argv[1]} as {socket.gethostname()}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
