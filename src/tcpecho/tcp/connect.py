"""Opening a TCP connection with options applied before connect: the client's and the load
generator's one way to connect.

A name can resolve to several addresses (IPv6 and IPv4, several pods): each is tried in
turn, as ``socket.create_connection`` does, with the options set before the SYN leaves, so
that TCP_SYNCNT bounds the connect itself and the connection never runs unprotected.
"""

from __future__ import annotations

import asyncio
import socket

from tcpecho.tcp.options import TcpOptions


async def connect(host: str, port: int, tcp: TcpOptions) -> socket.socket:
    """A connected, non-blocking socket to ``host:port`` carrying ``tcp``.

    Raises ``socket.gaierror`` when the name does not resolve, and the last address's
    ``OSError`` when no address accepts the connection."""
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last_error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            tcp.apply(sock)
            await loop.sock_connect(sock, address)
        except OSError as error:
            sock.close()
            last_error = error
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert last_error is not None  # getaddrinfo returns at least one address or raises
    raise last_error
