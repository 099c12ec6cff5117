"""tcpecho: a TCP echo server and client that show, and fix, the hang after a peer vanishes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tcpecho")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
