"""The lab's gRPC server (``tcpecho lab --server-preset grpc``, and the cookbook's gRPC recipes):
``Echo`` answers at once, ``Wait`` after an hour.

Bytes in, bytes out, through a generic handler, so no generated code is needed. It accepts
the clients' keepalive pings (every 10 s, also without calls): gRPC servers refuse pings
more often than every 5 minutes by default and answer them with GOAWAY ``too_many_pings``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time

import grpc

SERVICE = "cookbook.Echo"  # the name the cookbook's clients call
ECHO, WAIT = f"/{SERVICE}/Echo", f"/{SERVICE}/Wait"
WAIT_S = 3600.0

SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
]


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _wait(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(WAIT_S)
    return request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Wait": grpc.unary_unary_rpc_method_handler(_wait),
        },
    )
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=8),
        handlers=[handler],
        options=SERVER_OPTIONS,
    )
    server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
