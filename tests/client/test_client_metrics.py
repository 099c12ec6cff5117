"""The client's /metrics: what it has done, counted from the events it logs, and what it is
doing now, read when scraped; over real sockets, from the installed program."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

import pytest

from tests.conftest import RunningServer, Spawn
from tests.support import LoggedProcess, Scrape, port_of, scrape

StartServer = Callable[..., RunningServer]
ClientArgv = Callable[..., list[str]]
# After one failure the client backs off for 15-30 s: long enough to scrape it standing still.
FROZEN_AFTER_A_FAILURE = ("--retries", 1, "--retry-backoff", "30s")


def _metrics_port(client: LoggedProcess) -> int:
    (address,) = client.wait_for("metrics_started")["addresses"]
    return port_of(address)


def _failures(scraped: Scrape) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["errno"], dict(labels)["phase"]): value
        for labels, value in scraped.labelled("tcpecho_client_failures_total").items()
    }


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_healthy_client_counts_its_echoes_and_shows_its_connection(
    start_server: StartServer, spawn: Spawn, client_argv: ClientArgv, loop: str
) -> None:
    server = start_server()
    argv = client_argv(server.port, "--interval", "50ms", "--user-timeout", "5s", "--loop", loop)
    client = spawn([*argv, "--metrics-port", "0"])
    port = _metrics_port(client)
    connected = client.wait_for("connected")
    client.wait_for("response_received", count=5)
    scraped = scrape("127.0.0.1", port)
    requests = scraped.value("tcpecho_client_requests_total")
    responses = scraped.value("tcpecho_client_responses_total")
    assert responses >= 5
    assert requests - responses in (0, 1)  # one may be on its way
    assert scraped.value("tcpecho_client_rtt_seconds_count") == responses
    assert scraped.value("tcpecho_client_rtt_seconds_bucket", le="+Inf") == responses
    assert 0 < scraped.value("tcpecho_client_rtt_seconds_sum") < 0.1 * responses  # loopback
    assert _failures(scraped) == {}
    assert scraped.value("tcpecho_client_detection_seconds_count") == 0
    assert scraped.value("tcpecho_client_reconnects_total") == 0
    assert scraped.value("tcpecho_client_connected") == 1
    assert 0 <= scraped.value("tcpecho_client_waiting_seconds") < 1
    assert scraped.value("tcpecho_client_retransmits") == 0  # loopback loses nothing
    # What connected expected beforehand, from the same model and the same socket.
    expected = connected["expected_busy"]
    assert expected["limited_by"] == "user_timeout"
    assert expected["low_s"] < scraped.value("tcpecho_client_expected_detection_seconds")
    assert scraped.value("tcpecho_client_expected_detection_seconds") <= expected["high_s"] + 0.1
    # The socket options as the kernel took them, written as the logs write them.
    (options,) = scraped.labelled("tcpecho_client_socket_options_info")
    as_logged = {
        key: str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in connected["options"].items()
    }
    assert dict(options) == as_logged
    assert dict(options)["user_timeout_ms"] == "5000"
    client.signal(signal.SIGTERM)
    assert client.wait(10) == 0
    client.assert_no_traceback()


def test_a_read_timeout_is_counted_with_its_detection_time(
    spawn: Spawn, client_argv: ClientArgv
) -> None:
    with socket.socket() as silent:  # the kernel accepts and acknowledges; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        argv = client_argv(silent.getsockname()[1], "--read-timeout", "300ms")
        client = spawn([*argv, *map(str, FROZEN_AFTER_A_FAILURE), "--metrics-port", "0"])
        port = _metrics_port(client)
        failed = client.wait_for("connection_failed")
        client.wait_for("reconnecting")
        scraped = scrape("127.0.0.1", port)
    assert (failed["errno"], failed["phase"]) == ("READ_TIMEOUT", "request")
    assert _failures(scraped) == {("READ_TIMEOUT", "request"): 1}
    assert scraped.value("tcpecho_client_detection_seconds_count") == 1
    assert scraped.value("tcpecho_client_detection_seconds_sum") == pytest.approx(
        failed["detection_s"], abs=1e-6
    )
    assert scraped.value("tcpecho_client_detection_seconds_bucket", le="0.25") == 0
    assert scraped.value("tcpecho_client_detection_seconds_bucket", le="0.5") == 1
    assert scraped.value("tcpecho_client_requests_total") == 1
    assert scraped.value("tcpecho_client_responses_total") == 0
    assert scraped.value("tcpecho_client_reconnects_total") == 1
    # Backing off: nothing connected, nothing waiting, no connection's counters.
    assert scraped.value("tcpecho_client_connected") == 0
    assert scraped.value("tcpecho_client_waiting_seconds") == 0
    assert scraped.value("tcpecho_client_retransmits") == 0
    assert "tcpecho_client_expected_detection_seconds" not in scraped.names()
    client.signal(signal.SIGTERM)
    assert client.wait(10) == 1  # a failure was outstanding
    assert client.wait_for("summary")["failures"] == sum(_failures(scraped).values())


def test_a_failure_without_a_detection_time_is_counted_but_not_timed(
    start_server: StartServer, spawn: Spawn, client_argv: ClientArgv
) -> None:
    server = start_server()
    argv = client_argv(server.port, "--interval", "200ms", *FROZEN_AFTER_A_FAILURE)
    client = spawn([*argv, "--metrics-port", "0"])
    port = _metrics_port(client)
    client.wait_for("response_received", count=2)
    server.process.signal(signal.SIGKILL)
    failed = client.wait_for("connection_failed", timeout=5)
    client.wait_for("reconnecting")
    scraped = scrape("127.0.0.1", port)
    if failed["detection_s"] is None:  # idle when the server died: nothing was waiting
        assert _failures(scraped) == {(failed["errno"], "idle"): 1}
        assert scraped.value("tcpecho_client_detection_seconds_count") == 0
    else:  # the rare request sent just as the server died
        assert _failures(scraped) == {(failed["errno"], "request"): 1}
        assert scraped.value("tcpecho_client_detection_seconds_count") == 1
    assert scraped.value("tcpecho_client_connected") == 0


def test_a_busy_metrics_port_is_a_runtime_failure_before_the_client_starts(
    spawn: Spawn, client_argv: ClientArgv
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        client = spawn([*client_argv(8000), "--metrics-port", str(busy)])
        assert client.wait(10) == 1
    failed = client.wait_for("metrics_failed")
    assert (failed["port"], failed["errno"]) == (busy, "EADDRINUSE")
    assert [event["event"] for event in client.events] == ["metrics_failed"]
    client.assert_no_traceback()
