"""gRPC Python: ``grpc.keepalive_time_ms`` and ``grpc.keepalive_timeout_ms`` (which gRPC
also sets as the socket's TCP_USER_TIMEOUT), against ``tcpecho.lab.grpc_server``.
Busy: a unary call every second; idle: one call, then a call whose answer never comes."""

from __future__ import annotations

import time

import grpc

from cookbook.clients import common
from tcpecho.lab.grpc_server import ECHO, WAIT


def recommended() -> list[tuple[str, int]]:
    """The recipe: an HTTP/2 ping after 10 s without reads, the connection closed when it is
    not answered within 5 s (and TCP_USER_TIMEOUT 5 s on the socket); pings also while no
    call is in flight, as often as needed."""
    return [
        ("grpc.keepalive_time_ms", common.KEEPALIVE_IDLE_S * 1000),
        ("grpc.keepalive_timeout_ms", common.USER_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def main() -> int:
    args = common.parse(__doc__ or "")
    host, port = common.address()
    options = recommended() if args.settings == "recommended" else []
    with grpc.insecure_channel(f"{host}:{port}", options=options) as channel:
        echo = channel.unary_unary(ECHO)
        wait = channel.unary_unary(WAIT)
        try:
            echo(b"ping")
            if args.mode == "idle":
                wait(b"ping")  # no deadline: the answer would take an hour
                return 0
            while True:
                time.sleep(common.REQUEST_INTERVAL_S)
                echo(b"ping")  # no deadline either: that is the default
        except grpc.RpcError as error:
            return common.failed(error)


if __name__ == "__main__":
    raise SystemExit(main())
