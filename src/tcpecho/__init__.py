"""tcpecho: a TCP echo server and client that show, and fix, the hang after a peer vanishes."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # The version is looked up on first use: importlib.metadata costs tens of milliseconds
    # at import, which every command (and ``tcpecho --help``) would otherwise pay.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("tcpecho")
        except PackageNotFoundError:  # running from a source tree that was not installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
