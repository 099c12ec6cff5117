"""The lab's HTTP/1.1 keep-alive server (``tcpecho lab --server-preset http``, and the
cookbook's urllib3 recipes), on the standard library: ``/`` answers at once, ``/wait``
after an hour (a Kubernetes watch that sees no event: a long read on a pooled connection,
the 15-minute block of Azure/AKS issue 1052).

HTTP/1.1 with a Content-Length on every answer, so a client keeps its connection between
requests, as urllib3's pool does; a thread per connection, so one waiting answer blocks
no other connection.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WAIT_S = 3600.0
ANSWER = b"ok\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close

    def do_GET(self) -> None:  # the name http.server dispatches to
        if self.path == "/wait":
            time.sleep(WAIT_S)
        elif self.path != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, format: str, *args: object) -> None:
        """A request a second for minutes: nothing on stderr for each."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True  # a waiting answer does not hold the server at exit
    server.serve_forever()


if __name__ == "__main__":
    main()
