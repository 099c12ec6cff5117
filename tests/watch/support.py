"""What the watch's tests share: running ``tcpecho watch`` as users run it, and reading its
one JSON snapshot back."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from tests.support import tcpecho_executable

Row = dict[str, Any]


def watch_argv(*args: str) -> list[str]:
    """``tcpecho watch ARGS``, as users run it."""
    return [tcpecho_executable(), "watch", *args]


def run_watch(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=30
    )


def snapshot_of(result: subprocess.CompletedProcess[str]) -> list[Row]:
    """The connections of the one JSON snapshot ``--once --json`` printed."""
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    connections: list[Row] = json.loads(lines[0])["connections"]
    return connections


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what if isinstance(what, str) else what()} in {timeout}s")
        time.sleep(0.05)
