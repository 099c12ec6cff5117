"""The events module: every event the programs log is declared once and reads back the same."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from tcpecho import events
from tcpecho.logs import get_logger
from tcpecho.tcp.info import TcpInfo
from tcpecho.tcp.options import EffectiveOptions
from tests.conftest import RunningServer
from tests.support import tcpecho_executable

OPTIONS = EffectiveOptions(True, 2000, True, 10, 1, 3, 6, False)
INFO = TcpInfo("CLOSE", 3, 0, 0, 1632.0, 0, 1, 4, 0.2, 0.1, 768, 2748, 2748)


def test_an_event_is_logged_at_its_level_with_exactly_its_fields() -> None:
    failed = events.ConnectionFailed(
        phase="request",
        errno="ETIMEDOUT",
        error="[Errno 110] Connection timed out",
        seq=4,
        detection_s=2.44,
        since_last_response_s=2.74,
        tcp_info=INFO,
    )
    with capture_logs() as logged:
        events.emit(get_logger(), failed)
        events.emit(get_logger(), events.WorkerExited(worker=1, pid=7, exit_code=0, expected=True))
        events.emit(get_logger(), events.WorkerExited(worker=1, pid=7, exit_code=1, expected=False))
    first, stopped, died = logged
    assert first["log_level"] == "error"
    assert first["event"] == "connection_failed"
    assert first["tcp_info"] == dataclasses.asdict(INFO)  # nested values as plain JSON objects
    assert set(first) - {"event", "log_level"} == {f.name for f in dataclasses.fields(failed)}
    assert (stopped["log_level"], died["log_level"]) == ("info", "error")


def test_a_json_line_reads_back_into_its_event() -> None:
    line = json.dumps(
        {
            "timestamp": "2026-11-27T21:54:44.198152Z",
            "level": "info",
            "event": "connected",
            "local": "127.0.0.1:44304",
            "peer": "127.0.0.1:18000",
            "connect_s": 0.003,
            "options": dataclasses.asdict(OPTIONS),
            "expected_busy": {"low_s": 2.394, "high_s": 2.95, "limited_by": "user_timeout"},
            "expected_idle": {"low_s": 13.0, "high_s": 14.08, "limited_by": "keepalive"},
            "connection": 1,
        }
    )
    logged = events.parse_line(line)
    assert logged is not None
    assert logged.event == events.Connected(
        "127.0.0.1:44304",
        "127.0.0.1:18000",
        0.003,
        OPTIONS,
        events.Expected(2.394, 2.95, "user_timeout"),
        events.Expected(13.0, 14.08, "keepalive"),
    )
    assert logged.context == {"connection": 1}
    at = dt.datetime(2026, 11, 27, 21, 54, 44, 198152, tzinfo=dt.UTC)
    assert logged.timestamp == pytest.approx(at.timestamp())
    assert logged.raw["event"] == "connected"


@pytest.mark.parametrize(
    "line",
    [
        "Error from server (BadRequest): container is waiting",
        '["not", "an", "event"]',
        '{"event": "not_ours", "timestamp": "2026-11-27T21:54:44Z"}',
        "",
        b"\xff\xfe",
    ],
)
def test_other_lines_are_not_events(line: str | bytes) -> None:
    assert events.parse_line(line) is None


def test_an_event_line_without_its_fields_is_an_error_not_a_silence() -> None:
    with pytest.raises(ValueError, match="connection_failed"):
        events.parse_line('{"event": "connection_failed", "timestamp": "2026-11-27T21:54:44Z"}')


def test_every_line_the_programs_write_is_a_declared_event(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    endpoint = f"127.0.0.1:{server.port}"
    client = subprocess.run(
        [
            tcpecho_executable(),
            "client",
            "--server",
            endpoint,
            "--count",
            "2",
            "--interval",
            "10ms",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    names = []
    for line in client.stdout.splitlines():
        logged = events.parse_line(line)
        assert logged is not None, line
        names.append(logged.event.name)
    assert names == [
        *("client_started", "connecting", "connected", "request_sent", "response_received"),
        *("request_sent", "response_received", "summary"),
    ]
    server.process.wait_for("connection_closed")
    for event in server.process.events:
        raw = {k: v for k, v in event.items() if k != "_received_at"}
        assert events.parse_line(json.dumps(raw)) is not None, raw


def test_the_registry_names_every_event_once() -> None:
    # Every event class, and each under its own name (the count fails on a duplicate name).
    assert set(events.EVENTS.values()) == set(events.Event.__subclasses__())
    assert len(events.EVENTS) == len(events.Event.__subclasses__()) == 33
    for name, cls in events.EVENTS.items():
        assert cls.name == name
        assert dataclasses.is_dataclass(cls)
