"""How the logs name things: socket addresses as ``host:port`` and failures by errno name.

Users compare runs by these names (ETIMEDOUT after a silent peer, ECONNRESET or EOF after
a crash, ENETUNREACH with IP_RECVERR), so server, client and lab all name them here.
"""

from __future__ import annotations

import asyncio
import errno
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
    if isinstance(error, asyncio.IncompleteReadError | EOFError):
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
