"""The command line: bad input ends in one clear usage error (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import free_port, tcpecho_executable

BAD_INPUT = [
    # (arguments, environment, words the error must contain)
    (["client", "--user-timeout", "30"], {}, "not a duration"),
    (["client", "--user-timeout", "-1s"], {}, "negative"),
    (["client", "--user-timeout", "abc"], {}, "not a duration"),
    (["client", "--user-timeout", "2147484s"], {}, "above the maximum"),
    (["client", "--user-timeout", "1500us"], {}, "whole number of milliseconds"),
    (["client", "--interval", "5"], {}, "not a duration"),
    (["client", "--keepalive-idle", "500ms"], {}, "whole number of seconds"),
    (["client", "--keepalive-idle", "1.5s"], {}, "whole number of seconds"),
    (["client", "--keepalive-idle", "32768s"], {}, "above the maximum"),
    (["client", "--keepalive-interval", "0s"], {}, "below the minimum"),
    (["client", "--keepalive-count", "0"], {}, "--keepalive-count"),
    (["client", "--keepalive-count", "128"], {}, "--keepalive-count"),
    (["client", "--no-keepalive", "--keepalive-idle", "5s"], {}, "need keepalive"),
    (["client", "--syn-retries", "0"], {}, "--syn-retries"),
    (["client", "--syn-retries", "256"], {}, "--syn-retries"),
    (["client", "--port", "0"], {}, "--port"),
    (["client", "--port", "65536"], {}, "--port"),
    (["client", "--count", "-1"], {}, "--count"),
    (["client", "--retries", "-2"], {}, "--retries"),
    (["client", "--read-timeout", "0s"], {}, "below the minimum"),
    (["client", "--connect-timeout", "10"], {}, "not a duration"),
    (["client", "--retry-backoff", "5s", "--retry-backoff-max", "1s"], {}, "--retry-backoff-max"),
    (["client", "--loop", "tokio"], {}, "--loop"),
    (["client", "--log-format", "xml"], {}, "--log-format"),
    (["client", "--log-level", "loud"], {}, "--log-level"),
    (["client"], {"TCPECHO_CLIENT_USER_TIMEOUT": "30"}, "not a duration"),
    (["client"], {"TCPECHO_CLIENT_COUNT": "many"}, "--count"),
    (["server", "--port", "70000"], {}, "--port"),
    (["server", "--shutdown-timeout", "-5s"], {}, "negative"),
    (["server", "--keepalive-count", "200"], {}, "--keepalive-count"),
    (["server", "--syn-retries", "3"], {}, "No such option"),
    (["serve"], {}, "No such command"),
]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    BAD_INPUT,
    ids=[" ".join(a) + (f" {next(iter(e))}" if e else "") for a, e, _ in BAD_INPUT],
)
def test_bad_input_is_a_one_line_usage_error(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = subprocess.run(
        [tcpecho_executable(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    assert expected in error_lines[0]
    assert result.stdout == ""  # nothing started, nothing logged


def test_environment_variables_set_options() -> None:
    port = free_port()
    result = subprocess.run(
        [tcpecho_executable(), "client"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "TCPECHO_CLIENT_SERVER": "127.0.0.1",
            "TCPECHO_CLIENT_PORT": str(port),
            "TCPECHO_CLIENT_USER_TIMEOUT": "1500ms",
            "TCPECHO_CLIENT_KEEPALIVE": "true",
        },
        timeout=30,
    )
    assert result.returncode == 1  # nothing listens: a runtime failure, not a usage error
    events = [json.loads(line) for line in result.stdout.splitlines()]
    started = next(e for e in events if e["event"] == "client_started")
    assert (started["server"], started["port"]) == ("127.0.0.1", port)
    failed = next(e for e in events if e["event"] == "connection_failed")
    assert failed["errno"] == "ECONNREFUSED"


def test_python_dash_m_runs_the_same_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tcpecho", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("tcpecho, version ")


def test_console_format_is_for_people_json_is_the_default_off_a_terminal() -> None:
    port = free_port()
    base = [tcpecho_executable(), "client", "--server", "127.0.0.1", "--port", str(port)]
    piped = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert all(json.loads(line)["timestamp"].endswith("Z") for line in piped.stdout.splitlines())
    console = subprocess.run(
        [*base, "--log-format", "console"], capture_output=True, text=True, timeout=30
    )
    first = console.stdout.splitlines()[0]
    assert "client_started" in first
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
