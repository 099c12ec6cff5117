"""Plain Python sockets: TCP_USER_TIMEOUT and keepalive set with setsockopt, against the
lab's echo server."""

from __future__ import annotations

import socket
import time

from cookbook.clients import common


def configure(sock: socket.socket) -> None:
    """The recipe: bound unacknowledged data, and probe an idle connection."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, common.USER_TIMEOUT_MS)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, common.KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, common.KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, common.KEEPALIVE_COUNT)


def echo(sock: socket.socket) -> None:
    sock.sendall(b"ping\n")
    received = b""
    while not received.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        received += chunk


def main() -> int:
    args = common.parse(__doc__ or "")
    sock = socket.create_connection(common.address())
    if args.settings == "recommended":
        configure(sock)
    try:
        echo(sock)
        if args.mode == "idle":
            sock.recv(4096)  # a reply that never comes: only keepalive can end this
            raise ConnectionError("the server closed the connection")
        while True:
            time.sleep(common.REQUEST_INTERVAL_S)
            echo(sock)
    except OSError as error:
        return common.failed(error)


if __name__ == "__main__":
    raise SystemExit(main())
