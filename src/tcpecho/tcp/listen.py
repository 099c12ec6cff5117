"""Listening sockets for a host and port: the echo server's and the metrics endpoint's one way
to listen, so both take ``--host`` the same way.

``::`` is one dual-stack socket where the platform has them (like Go's ``net.Listen`` on
``[::]``); any other host gets one socket per address it resolves to. Each socket is bound
with SO_REUSEADDR, prepared by the caller (TCP options, SO_REUSEPORT) before ``listen``, and
left non-blocking for an event loop to take over.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

Prepare = Callable[[socket.socket], None]


def listen(
    host: str, port: int, *, backlog: int, prepare: Prepare | None = None
) -> list[socket.socket]:
    """Listening sockets for ``host:port``; ``OSError`` (or ``socket.gaierror``) when the
    host does not resolve or an address cannot be bound, with none left open."""
    if host == "::" and socket.has_dualstack_ipv6():
        return [listening_socket(socket.AF_INET6, ("::", port), True, backlog, prepare)]
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, _, _, _, sockaddr in socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        ):
            key = (family, str(sockaddr[0]))
            if key in seen:
                continue
            seen.add(key)
            sockets.append(listening_socket(family, sockaddr, False, backlog, prepare))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listening_socket(
    family: int, sockaddr: Any, dual_stack: bool, backlog: int, prepare: Prepare | None = None
) -> socket.socket:
    """One socket listening on ``sockaddr``; ``dual_stack`` lets an IPv6 one take IPv4 too."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(not dual_stack))
        if prepare is not None:
            prepare(sock)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
