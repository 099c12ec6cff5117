"""Shared fixtures: both event loops for async tests, tcpecho subprocesses, privileges."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from tcpecho.server.server import EchoServer, ServerConfig
from tests.support import LoggedProcess, free_port, tcpecho_executable

# pytester tests the plugin that, where every check is promised, fails a test that skips.
pytest_plugins = ["pytester", "tests.ci_checks"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on uvloop and on plain asyncio: the product supports both."""
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def root_missing() -> str | None:
    """Why root-only tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, PID namespaces)"
    return None


def nft_missing() -> str | None:
    reason = root_missing()
    if reason:
        return reason
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install -y nftables iproute2)"
    return None


requires_root = pytest.mark.skipif(root_missing() is not None, reason=str(root_missing()))
requires_netns = pytest.mark.skipif(nft_missing() is not None, reason=str(nft_missing()))


Spawn = Callable[..., LoggedProcess]


@pytest.fixture
async def echo_server_port() -> AsyncIterator[int]:
    """An EchoServer on the test's own event loop, on an ephemeral loopback port."""
    server = EchoServer(ServerConfig(host="127.0.0.1", port=0))
    serving = asyncio.create_task(server.serve())
    await server.started.wait()
    yield int(server.addresses[0].rsplit(":", 1)[1])
    server.stop()
    assert await serving == 0


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start processes that are killed at teardown, whatever the test did."""
    started: list[LoggedProcess] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> LoggedProcess:
        process = LoggedProcess(argv, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def tcpecho() -> str:
    return tcpecho_executable()


class RunningServer:
    def __init__(self, process: LoggedProcess, port: int) -> None:
        self.process = process
        self.port = port


@pytest.fixture
def start_server(spawn: Spawn, tcpecho: str) -> Callable[..., RunningServer]:
    """Start ``tcpecho server`` on a free loopback port and wait until it listens."""

    def start(*args: str, host: str = "127.0.0.1", port: int | None = None) -> RunningServer:
        for _ in range(5):  # another process may take the free port before we bind it
            chosen = port or free_port(host)
            process = spawn([tcpecho, "server", "--host", host, "--port", str(chosen), *args])
            try:
                process.wait_for("server_started", timeout=10)
                return RunningServer(process, chosen)
            except AssertionError:
                if process.named("server_failed") and port is None:
                    continue
                raise
        raise AssertionError("could not start a server on a free port")

    return start


@pytest.fixture
def client_argv(tcpecho: str) -> Callable[..., list[str]]:
    def argv(port: int, *args: Any, server: str = "127.0.0.1") -> list[str]:
        return [tcpecho, "client", "--server", server, "--port", str(port), *map(str, args)]

    return argv
