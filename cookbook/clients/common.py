"""What every cookbook client shares: its arguments, the service's address and the values
the recommended settings use (short, so the lab's run stays short; see docs/cookbook.md)."""

from __future__ import annotations

import argparse
import os
import sys

# The recommended settings, in the units each option takes somewhere.
USER_TIMEOUT_MS = 5000  # TCP_USER_TIMEOUT: unacknowledged data is given up after 5 s
KEEPALIVE_IDLE_S = 10  # the first probe after 10 s without data
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3
REQUEST_INTERVAL_S = 1.0  # busy: a request every second
# The library's defaults, the recommended settings, and (libpq) TCP_USER_TIMEOUT alone.
SETTINGS = ("defaults", "recommended", "user-timeout-only")


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("mode", choices=("busy", "idle"))
    parser.add_argument("settings", choices=SETTINGS)
    return parser.parse_args()


def address() -> tuple[str, int]:
    """The service's address, as the lab gives it (a loopback echo server otherwise)."""
    return os.environ.get("TCPECHO_LAB_HOST", "127.0.0.1"), int(
        os.environ.get("TCPECHO_LAB_PORT", "8000")
    )


def failed(error: BaseException) -> int:
    print(f"connection failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 1
