"""The lab's HTTP/2 server (``tcpecho lab --server-preset http2``, and the cookbook's Go
``http2.Transport`` recipes), on the ``h2`` protocol library: cleartext HTTP/2 with prior
knowledge (h2c, RFC 9113 section 3.3), ``/`` answered at once, ``/wait`` after an hour (a
watch that sees no event, the kubelet's long GET on a pooled connection of kubernetes 87615).

Every stream of a connection on one socket, as HTTP/2 has them; PING frames answered as they
come (h2 queues the ACK), so a client's health check sees a live peer as long as there is
one. The server sends no pings of its own: what ends a dead connection is the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions

WAIT_S = 3600.0
ANSWER = b"ok\n"
READ_SIZE = 65536


class Connection:
    """One client's HTTP/2 connection: its frames in, its answers out, each ``/wait`` a task
    of its own so that the streams beside it go on."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.waiting: set[asyncio.Task[None]] = set()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)

    def received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.request(event.stream_id, dict(event.headers or []))
        self.flush()  # the answers, the PING ACKs and the SETTINGS ACKs h2 queued

    def request(self, stream_id: int, headers: dict[str | bytes, str | bytes]) -> None:
        path = headers.get(":path")
        if path == "/wait":
            task = asyncio.create_task(self.answer_later(stream_id))
            self.waiting.add(task)
            task.add_done_callback(self.waiting.discard)
        elif path == "/":
            self.answer(stream_id, 200, ANSWER)
        else:
            self.answer(stream_id, 404, b"not found\n")

    def answer(self, stream_id: int, status: int, body: bytes) -> None:
        headers = [
            (":status", str(status)),
            ("content-type", "text/plain"),
            ("content-length", str(len(body))),
        ]
        self.h2.send_headers(stream_id, headers)
        self.h2.send_data(stream_id, body, end_stream=True)

    async def answer_later(self, stream_id: int) -> None:
        await asyncio.sleep(WAIT_S)
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the stream reset meanwhile
            self.answer(stream_id, 200, ANSWER)
            self.flush()


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    connection = Connection(writer)
    connection.h2.initiate_connection()
    connection.flush()
    try:
        while data := await reader.read(READ_SIZE):
            connection.received(data)
            await writer.drain()
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass  # a client gone or speaking something else: this connection only
    finally:
        for task in connection.waiting:
            task.cancel()
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(serve_connection, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
