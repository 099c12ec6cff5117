"""The plain uvloop echo: an ``asyncio.Protocol`` whose ``data_received`` writes the bytes
back, and nothing else (no logs, no accounting, no backpressure beyond the transport's).

The benchmark's yardstick for what tcpecho's own code costs on top of uvloop, per request
and per accepted connection:

    python -m benchmarks.uvloop_echo PORT
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import uvloop


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = transport.write  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.write(data)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(Echo, sock=sock, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
