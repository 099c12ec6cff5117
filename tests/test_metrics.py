"""The /metrics endpoint: the text format over real sockets, on both loops, and what it
answers to anything that is not a scrape."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from structlog.testing import capture_logs

from tcpecho import metrics
from tcpecho.logs import get_logger
from tests.ci_checks import skip_unpromised
from tests.support import Scrape, http_request_on_loop, port_of

GET = b"GET /metrics HTTP/1.1\r\nHost: tcpecho\r\n\r\n"


class Served:
    def __init__(self, endpoint: metrics.MetricsEndpoint, registry: CollectorRegistry) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self.port = port_of(endpoint.addresses[0])


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    registry = metrics.new_registry()
    endpoint = await metrics.serve(registry, "127.0.0.1", 0, get_logger())
    assert endpoint is not None
    yield Served(endpoint, registry)
    await endpoint.close()


async def ask(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    return await http_request_on_loop("127.0.0.1", port, request)


async def test_a_scrape_is_the_registry_in_the_text_format(served: Served) -> None:
    things = Counter("tcpecho_test_things", "Things.", registry=served.registry)
    things.inc(3)
    status, headers, body = await ask(served.port, GET)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Connection"] == "close"
    scraped = Scrape.parse(body.decode())
    assert scraped.value("tcpecho_test_things_total") == 3
    # The process and platform collectors, and no _created series beside the counters.
    assert scraped.value("process_open_fds") > 0
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= scraped.names()
    assert "python_info" in scraped.names()
    assert not [name for name in scraped.names() if name.endswith("_created")]


async def test_head_and_a_query_string_are_scrapes_too(served: Served) -> None:
    status, headers, body = await ask(served.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0
    status, _, body = await ask(served.port, b"GET /metrics?name[]=up HTTP/1.0\r\n\r\n")
    assert status == 200
    assert b"process_open_fds" in body


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"hello\r\n\r\n", 400),
        (b"GET /metrics SPDY/3\r\n\r\n", 400),
    ],
)
async def test_anything_but_a_scrape_gets_a_clear_status(
    served: Served, request_head: bytes, status: int
) -> None:
    answered, headers, _ = await ask(served.port, request_head)
    assert answered == status
    if status == 405:
        assert headers["Allow"] == "GET, HEAD"


async def test_a_head_too_large_or_too_slow_is_dropped_without_an_answer(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    oversized = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * (2 * metrics.HEAD_LIMIT)
    assert (await ask(served.port, oversized))[0] == 0
    monkeypatch.setattr(metrics, "HEAD_TIMEOUT_S", 0.2)
    started = time.monotonic()
    assert (await ask(served.port, b"GET /metrics HTTP/1.1\r\n"))[0] == 0  # the head never ends
    # uvloop's timers run on the loop's clock, cached to the millisecond.
    assert 0.19 <= time.monotonic() - started < 2
    assert (await ask(served.port, GET))[0] == 200  # and it still serves


class _FailsOnce(Collector):
    def __init__(self) -> None:
        self.failed = False

    def collect(self) -> Iterator[Metric]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a collector's bug")
        return iter(())


async def test_a_collector_that_fails_is_a_500_and_the_next_scrape_works(served: Served) -> None:
    served.registry.register(_FailsOnce())
    status, _, body = await ask(served.port, GET)
    assert status == 500
    assert b"a collector's bug" in body
    assert (await ask(served.port, GET))[0] == 200


async def test_a_busy_port_is_logged_as_metrics_failed() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with capture_logs() as logged:
            endpoint = await metrics.serve(metrics.new_registry(), "127.0.0.1", port, get_logger())
    assert endpoint is None
    (failed,) = logged
    assert (failed["event"], failed["log_level"]) == ("metrics_failed", "error")
    assert (failed["host"], failed["port"], failed["errno"]) == ("127.0.0.1", port, "EADDRINUSE")


async def test_every_address_takes_ipv4_and_ipv6_on_one_socket() -> None:
    """One listener, ``[::]``, scraped over IPv4 and over IPv6; a host without dual-stack
    IPv6 (``0.0.0.0`` then) is not one this promise is made for."""
    host = metrics.every_address()
    if host != "::":
        skip_unpromised("no dual-stack IPv6 here: every_address() is 0.0.0.0")
    endpoint = await metrics.serve(metrics.new_registry(), host, 0, get_logger())
    assert endpoint is not None
    try:
        assert len(endpoint.addresses) == 1
        assert endpoint.addresses[0].startswith("[::]:")
        port = port_of(endpoint.addresses[0])
        for address in ("127.0.0.1", "::1"):
            assert (await http_request_on_loop(address, port, GET))[0] == 200, address
    finally:
        await endpoint.close()


def test_prometheus_client_is_loaded_only_when_metrics_are_asked_for() -> None:
    """tcpecho --help, and a server or client run without --metrics-port, never import it."""
    code = (
        "import sys, tcpecho.cli, tcpecho.server.server, tcpecho.client.client, "
        "tcpecho.server.supervisor; print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "False"
