"""urllib3 (what requests and the Kubernetes Python client use): ``socket_options`` on its
connection pool carries TCP_USER_TIMEOUT and the keepalive times, set before the connection
is made, against the cookbook's HTTP/1.1 keep-alive server. Busy: ``GET /`` every second on
the pool's one connection; idle: ``GET /``, then ``GET /wait`` on the same pooled connection,
an answer that takes an hour (a watch with no events)."""

from __future__ import annotations

import socket
import time
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection

from cookbook.clients import common


def socket_options() -> list[tuple[int, int, int]]:
    """The recipe: urllib3's own default (TCP_NODELAY) kept, the five options added.
    TCP_USER_TIMEOUT is in milliseconds, the keepalive times in seconds."""
    return [
        *HTTPConnection.default_socket_options,
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, common.USER_TIMEOUT_MS),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, common.KEEPALIVE_IDLE_S),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, common.KEEPALIVE_INTERVAL_S),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, common.KEEPALIVE_COUNT),
    ]


def recommended() -> dict[str, Any]:
    """The pool's keyword arguments (PoolManager takes the same). No read timeout: it would
    also end a healthy watch that waits longer for its next event."""
    return {"socket_options": socket_options()}


def pool(host: str, port: int, settings: str) -> urllib3.HTTPConnectionPool:
    """One pooled connection, reused by every request, as a client's keep-alive pool does."""
    chosen = recommended() if settings == "recommended" else {}
    return urllib3.HTTPConnectionPool(host, port, maxsize=1, block=True, **chosen)


def main() -> int:
    args = common.parse(__doc__ or "")
    host, port = common.address()
    # Its retries (3 by default) reconnect on a new socket: the lab measures the first one.
    http = pool(host, port, args.settings)
    try:
        if args.mode == "idle":
            http.request("GET", "/")  # the pooled connection, as a watch finds it
            http.request("GET", "/wait")
            return 0
        while True:
            http.request("GET", "/")
            time.sleep(common.REQUEST_INTERVAL_S)
    except urllib3.exceptions.HTTPError as error:
        return common.failed(error)


if __name__ == "__main__":
    raise SystemExit(main())
