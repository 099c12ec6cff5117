"""redis-py: ``socket_keepalive_options`` carries TCP_USER_TIMEOUT as well as the keepalive
times, against redis-server. Busy: PING every second; idle: a pooled connection between
commands (one PING, then nothing)."""

from __future__ import annotations

import socket
import time
from typing import Any

import redis

from cookbook.clients import common


def recommended() -> dict[str, Any]:
    """The recipe. redis-py sets every key of socket_keepalive_options at level IPPROTO_TCP,
    so TCP_USER_TIMEOUT goes in there too; socket_timeout=None leaves blocking commands
    (BLPOP) free to wait as long as they are told."""
    return {
        "socket_timeout": None,
        "socket_keepalive": True,
        "socket_keepalive_options": {
            socket.TCP_USER_TIMEOUT: common.USER_TIMEOUT_MS,
            socket.TCP_KEEPIDLE: common.KEEPALIVE_IDLE_S,
            socket.TCP_KEEPINTVL: common.KEEPALIVE_INTERVAL_S,
            socket.TCP_KEEPCNT: common.KEEPALIVE_COUNT,
        },
    }


def main() -> int:
    args = common.parse(__doc__ or "")
    host, port = common.address()
    settings = recommended() if args.settings == "recommended" else {}
    # Its retries, if any, reconnect on a new socket: the lab measures the first one.
    client = redis.Redis(host=host, port=port, **settings)
    try:
        client.ping()
        if args.mode == "idle":
            time.sleep(3600)
            return 0
        while True:
            time.sleep(common.REQUEST_INTERVAL_S)
            client.ping()
    except redis.RedisError as error:
        return common.failed(error)


if __name__ == "__main__":
    raise SystemExit(main())
