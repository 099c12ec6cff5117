"""libpq through psycopg 3: ``tcp_user_timeout`` and ``keepalives*`` in the connection
string, against PostgreSQL. Busy: ``SELECT 1`` every second; idle: a query whose answer
takes an hour (``pg_sleep``), the idle read of ruby-pg issue 509."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from cookbook.clients import common


def recommended() -> dict[str, Any]:
    """The recipe: libpq's parameters (tcp_user_timeout in milliseconds, keepalives in s)."""
    return {
        "tcp_user_timeout": common.USER_TIMEOUT_MS,
        "keepalives": 1,
        "keepalives_idle": common.KEEPALIVE_IDLE_S,
        "keepalives_interval": common.KEEPALIVE_INTERVAL_S,
        "keepalives_count": common.KEEPALIVE_COUNT,
    }


def main() -> int:
    args = common.parse(__doc__ or "")
    host, port = common.address()
    settings: dict[str, Any] = {
        "defaults": {},
        "recommended": recommended(),
        # ruby-pg issue 509: this alone leaves a wait for an answer unbounded.
        "user-timeout-only": {"tcp_user_timeout": common.USER_TIMEOUT_MS},
    }[args.settings]
    try:
        with psycopg.connect(
            host=host, port=port, user="postgres", dbname="postgres", autocommit=True, **settings
        ) as connection:
            if args.mode == "idle":
                connection.execute("SELECT pg_sleep(3600)")
                return 0
            while True:
                connection.execute("SELECT 1").fetchone()
                time.sleep(common.REQUEST_INTERVAL_S)
    except psycopg.Error as error:
        return common.failed(error)


if __name__ == "__main__":
    raise SystemExit(main())
