"""Names for what TCP reports: failures by errno name, socket addresses as ``host:port``,
and the addresses a host name stands for.

Users compare runs by these names (ETIMEDOUT after a silent peer, ECONNRESET or EOF after
a crash, ENETUNREACH with IP_RECVERR, EAI_NONAME for a name that does not resolve), so
server, client and lab all name them here. Addresses are printed as ``10.96.0.10:8000``
or ``[::1]:8000`` and read back in the same forms, so a user can paste what a log shows.
An address has one spelling (``normalized``), and a host given by name is compared by the
addresses it resolves to (``host_addresses``).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

EOF = "EOF"

_GAI_NAMES = {
    getattr(socket, name): name
    for name in dir(socket)
    if name.startswith("EAI_") and isinstance(getattr(socket, name), int)
}


def error_name(error: BaseException) -> str:
    """ETIMEDOUT, ECONNRESET, EAI_NONAME, EOF, ...: the name users look for."""
    if isinstance(error, EOFError):  # asyncio.IncompleteReadError is one
        return EOF
    if isinstance(error, socket.gaierror):
        return _GAI_NAMES.get(error.errno, f"EAI_{error.errno}")
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno, f"errno {error.errno}")
    return type(error).__name__


def format_address(sockaddr: Any) -> str:
    """``10.96.0.10:8000`` or ``[::1]:8000`` from a socket address tuple."""
    if not isinstance(sockaddr, tuple) or len(sockaddr) < 2:
        return str(sockaddr)
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def parse_endpoint(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port or None).

    The forms the logs print (``format_address``) read back; a bare IPv6 address (``::1``)
    is a host without a port. ``ValueError`` says what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"{text!r}: an IPv6 address in brackets needs its closing ']'")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: after ']' comes ':PORT' or nothing")
        return host, _port(text, rest[1:])
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not host:
            raise ValueError(f"{text!r}: the host is missing before ':'")
        return host, _port(text, port)
    if not text:
        raise ValueError("the host is empty")
    return text, None


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return int(port)


def normalized(host: str) -> str:
    """One spelling per address: an IPv4-mapped IPv6 address (a dual-stack socket's peer)
    reads as the IPv4 address it carries."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def host_addresses(host: str) -> frozenset[str]:
    """The addresses ``host`` stands for, ``normalized``: itself when it is one, else what
    it resolves to. A name that does not resolve raises the resolver's ``OSError``
    (``socket.gaierror``, EAI_NONAME): the caller says so, rather than match nothing."""
    return frozenset({normalized(host)} if _is_address(host) else _resolve(host))


def _resolve(host: str) -> set[str]:
    found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return {normalized(str(sockaddr[0])) for *_, sockaddr in found}


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
