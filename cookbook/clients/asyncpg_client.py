"""asyncpg against PostgreSQL. asyncpg has no keepalive or TCP_USER_TIMEOUT parameter (its
issue 606, open), and it makes its socket itself, inside the event loop's
``create_connection``: the recipe is an event loop whose ``create_connection`` makes the
socket, sets the options and then connects it, so they hold from the SYN on, through the
startup and authentication, on every connection a pool makes.

The common alternative, ``setsockopt`` in a pool's ``init`` callback, sets them only once
the handshake is over (docs/cookbook.md says what that leaves, as the lab saw it). Busy:
``SELECT 1`` every second; idle: a query whose answer takes an hour (``pg_sleep``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import asyncpg

from cookbook.clients import common


def configure(sock: socket.socket) -> None:
    """TCP_USER_TIMEOUT in milliseconds, the keepalive times in seconds."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, common.USER_TIMEOUT_MS)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, common.KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, common.KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, common.KEEPALIVE_COUNT)


class ConfiguredLoop(asyncio.SelectorEventLoop):
    """asyncpg connects with ``loop.create_connection(factory, host, port)``; this loop
    makes that socket itself, configured before its SYN, and hands it over as ``sock=``."""

    async def create_connection(
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None, **kw: Any
    ) -> tuple[Any, Any]:
        if host is None or kw.get("sock") is not None or kw.get("local_addr") is not None:
            return await super().create_connection(protocol_factory, host, port, **kw)
        family, kind, proto, _, address = (
            await self.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            configure(sock)
            await self.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        if kw.get("ssl"):  # direct TLS: the name to check is the host's
            kw.setdefault("server_hostname", host)
        return await super().create_connection(protocol_factory, sock=sock, **kw)


def create_pool(host: str, port: int) -> Any:
    """One pooled connection (asyncpg's pool opens ten by default), made on entering it.
    ``command_timeout`` stays None: a deadline on every query would also end a healthy one
    that runs longer."""
    return asyncpg.create_pool(
        host=host, port=port, user="postgres", database="postgres", min_size=1, max_size=1
    )


async def run(mode: str) -> None:
    host, port = common.address()
    async with create_pool(host, port) as pool:
        if mode == "idle":
            await pool.execute("SELECT pg_sleep(3600)")
            return
        while True:
            await pool.fetchval("SELECT 1")
            await asyncio.sleep(common.REQUEST_INTERVAL_S)


def main() -> int:
    args = common.parse(__doc__ or "")
    loop_factory = ConfiguredLoop if args.settings == "recommended" else None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run(args.mode))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
        return common.failed(error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
