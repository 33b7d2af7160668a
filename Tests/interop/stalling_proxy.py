"""A loopback HTTP proxy in front of the test S3 server (SeaweedFS) that can hold requests: the "stalled S3" of
the test that proves no blob store call blocks vaultd's threads.

    python stalling_proxy.py UPSTREAM_URL

Prints "port N" once it listens on 127.0.0.1 (an ephemeral port). Requests are forwarded unchanged (the Host header
too, so SigV4 signatures still verify), except:
  PUT /__stall    body: a substring; from now on, requests whose path contains it are held (not answered)
  DELETE /__stall releases every held request (they are then forwarded) and stops holding
  GET /__held     the number of requests being held now
"""

import http.client
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = urllib.parse.urlparse(sys.argv[1])
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

state = threading.Condition()
pattern = None
held = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        global pattern, held
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/__stall":
            with state:
                pattern = body.decode() if self.command == "PUT" else None
                state.notify_all()
            return self.reply(204)
        if self.path == "/__held":
            with state:
                return self.reply(200, str(held).encode())
        with state:
            if pattern is not None and pattern in self.path:
                held += 1
                state.notify_all()
                while pattern is not None and pattern in self.path:
                    state.wait()
                held -= 1
        upstream = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=120)
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        upstream.request(self.command, self.path, body=body if body or length else None, headers=headers)
        response = upstream.getresponse()
        content = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            # A HEAD answer keeps the object's length; any other carries exactly the bytes read.
            if name.lower() not in HOP_BY_HOP and (self.command == "HEAD" or name.lower() != "content-length"):
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
