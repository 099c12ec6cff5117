"""The command line: bad input ends in one clear usage error (exit 2), never a traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tcpecho.tcp.names import format_address
from tcpecho.tcp.options import OPTIONS as TCP_OPTIONS
from tests.support import free_port, tcpecho_executable
from tests.tcp.test_options import ALL_SET

ROOT = Path(__file__).resolve().parent.parent.parent

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
    (["client", "--syn-retries", "128"], {}, "--syn-retries"),  # MAX_TCP_SYNCNT is 127
    (["client", "--port", "0"], {}, "--port"),
    (["client", "--port", "65536"], {}, "--port"),
    (["client", "--count", "-1"], {}, "--count"),
    (["client", "--retries", "-2"], {}, "--retries"),
    (["client", "--read-timeout", "0s"], {}, "below the minimum"),
    (["client", "--connect-timeout", "10"], {}, "not a duration"),
    (["client", "--retry-backoff", "5s", "--retry-backoff-max", "1s"], {}, "--retry-backoff-max"),
    (["client", "--request-size", "4"], {}, "below the minimum of 26 bytes"),
    (["client", "--request-size", "25"], {}, "below the minimum of 26 bytes"),
    (["client", "--message", "a longer message", "--request-size", "26"], {}, "minimum of 38"),
    (["client", "--request-size", "1025MiB"], {}, "above the maximum of 1024MiB"),
    (["client", "--request-size", "lots"], {}, "not a size"),
    (["client", "--request-size", "-1"], {}, "not a size"),
    (["client"], {"TCPECHO_CLIENT_REQUEST_SIZE": "10"}, "TCPECHO_CLIENT_REQUEST_SIZE (the environ"),
    (["client", "--loop", "tokio"], {}, "--loop"),
    (["client", "--log-format", "xml"], {}, "--log-format"),
    (["client", "--log-level", "loud"], {}, "--log-level"),
    (["client"], {"TCPECHO_CLIENT_USER_TIMEOUT": "30"}, "not a duration"),
    (["client"], {"TCPECHO_CLIENT_COUNT": "many"}, "TCPECHO_CLIENT_COUNT"),
    (["client"], {"TCPECHO_CLIENT_PORT": "abc"}, "TCPECHO_CLIENT_PORT"),
    (["client"], {"TCPECHO_CLIENT_KEEPALIVE": "maybe"}, "'maybe' is not true or false"),
    (["client", "--server", "[::1"], {}, "closing ']'"),
    (["client", "--server", "server:http"], {}, "the port must be a number"),
    (["client", "--server", "127.0.0.1:8000", "--port", "9000"], {}, "disagrees"),
    (["server", "--port", "70000"], {}, "--port"),
    (["server", "--shutdown-timeout", "-5s"], {}, "negative"),
    (["server", "--keepalive-count", "200"], {}, "--keepalive-count"),
    (["server", "--syn-retries", "3"], {}, "No such option"),
    (["server", "--metrics-port", "70000"], {}, "--metrics-port"),
    (["server", "--metrics-port", "http"], {}, "not a valid integer"),
    (["server", "--port", "9000", "--metrics-port", "9000"], {}, "must differ from --port"),
    (["server", "--workers", "2", "--metrics-port", "9100"], {}, "--workers above 1"),
    (["client", "--metrics-port", "-1"], {}, "--metrics-port"),
    (["client"], {"TCPECHO_CLIENT_METRICS_PORT": "65536"}, "TCPECHO_CLIENT_METRICS_PORT"),
    (["serve"], {}, "No such command"),
    (["bench", "--server", "127.0.0.1:8000", "--port", "9000"], {}, "disagrees"),
    # Variables are named after the flag: --json is TCPECHO_BENCH_JSON, --fault TCPECHO_LAB_FAULT.
    (["bench"], {"TCPECHO_BENCH_JSON": "maybe"}, "TCPECHO_BENCH_JSON (the environment"),
    (["lab"], {"TCPECHO_LAB_FAULT": "meteor"}, "TCPECHO_LAB_FAULT (the environment"),
    (["lab"], {"TCPECHO_LAB_PROGRAM_TIMEOUT": "0s"}, "TCPECHO_LAB_PROGRAM_TIMEOUT (the environ"),
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


def test_environment_variables_set_options(start_server: Any) -> None:
    """TCPECHO_CLIENT_* alone name the server and set the socket's options: the client
    connects, and the options it logs are read back from its connected socket."""
    server = start_server()
    result = subprocess.run(
        [tcpecho_executable(), "client"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "TCPECHO_CLIENT_SERVER": "127.0.0.1",
            "TCPECHO_CLIENT_PORT": str(server.port),
            "TCPECHO_CLIENT_COUNT": "1",
            "TCPECHO_CLIENT_USER_TIMEOUT": "1500ms",
            "TCPECHO_CLIENT_KEEPALIVE": "true",
            "TCPECHO_CLIENT_KEEPALIVE_IDLE": "7s",
        },
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    started = next(e for e in events if e["event"] == "client_started")
    assert (started["server"], started["port"]) == ("127.0.0.1", server.port)
    connected = next(e for e in events if e["event"] == "connected")
    assert connected["peer"] == f"127.0.0.1:{server.port}"
    options = connected["options"]  # getsockopt on the connected socket
    assert options["user_timeout_ms"] == 1500
    assert options["keepalive"] is True
    assert options["keepalive_idle_s"] == 7
    assert [e["seq"] for e in events if e["event"] == "response_received"] == [1]


def test_the_request_size_comes_from_the_environment_too(start_server: Any) -> None:
    """TCPECHO_CLIENT_REQUEST_SIZE sets --request-size, its smallest value (26 bytes with
    "ping") included, and each request is that long and echoed."""
    server = start_server()
    result = subprocess.run(
        [tcpecho_executable(), "client", "--server", f"127.0.0.1:{server.port}", "--count", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "TCPECHO_CLIENT_REQUEST_SIZE": "26", "TCPECHO_CLIENT_INTERVAL": "0s"},
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["bytes"] for e in events if e["event"] == "request_sent"] == [26, 26]
    assert [e["seq"] for e in events if e["event"] == "response_received"] == [1, 2]


@pytest.mark.parametrize("source", ["flags", "environment"])
def test_every_tcp_option_reaches_the_command_as_given(source: str) -> None:
    """Each option ``TcpOptions`` describes is a flag and a variable of the commands, made
    from its description: what the user gives is what the command holds."""
    flags = ALL_SET.as_flags()
    env = dict(os.environ)
    if source == "environment":
        for option in TCP_OPTIONS:
            value = getattr(ALL_SET, option.field)
            if option.command_line and value is not None:
                env[f"TCPECHO_EXPLAIN_{option.setting.upper()}"] = option.text(value)
        flags = ()
    result = subprocess.run(
        [tcpecho_executable(), "explain", "--json", *flags],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=30,
    )
    held = json.loads(result.stdout)["settings"]["tcp"]
    assert held == dataclasses.asdict(ALL_SET)
    assert {option.field for option in TCP_OPTIONS if option.command_line} <= {
        name for name, value in held.items() if value is not None
    }


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


def test_an_environment_variable_with_a_bad_value_is_named() -> None:
    result = subprocess.run(
        [tcpecho_executable(), "client"],
        capture_output=True,
        text=True,
        env={**os.environ, "TCPECHO_CLIENT_PORT": "abc", "TCPECHO_CLIENT_KEEPALIVE": "yes"},
        timeout=30,
    )
    assert result.returncode == 2
    assert (
        "Error: Invalid value for TCPECHO_CLIENT_PORT (the environment variable for '--port'): "
        "'abc' is not a valid integer." in result.stderr
    )
    refused = subprocess.run(
        [tcpecho_executable(), "client"],
        capture_output=True,
        text=True,
        env={**os.environ, "TCPECHO_CLIENT_KEEPALIVE": "maybe"},
        timeout=30,
    )
    assert "Recognized values" not in refused.stderr
    assert "TCPECHO_CLIENT_KEEPALIVE (the environment variable for" in refused.stderr


@pytest.mark.parametrize("form", ["{host}:{port}", "[{host}]:{port}"])
def test_the_server_may_carry_its_port_in_the_forms_the_logs_print(
    form: str, start_server: Any
) -> None:
    host = "::1" if form.startswith("[") else "127.0.0.1"
    server = start_server(host=host)
    endpoint = form.format(host=host, port=server.port)
    for extra in ([], ["--port", str(server.port)]):  # an agreeing --port is fine
        result = subprocess.run(
            [tcpecho_executable(), "client", "--server", endpoint, "--count", "1", *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        connected = next(e for e in events if e["event"] == "connected")
        assert connected["peer"] == format_address((host, server.port))


def test_a_name_that_does_not_resolve_is_no_detection_time() -> None:
    result = subprocess.run(
        [tcpecho_executable(), "client", "--server", "no-such-host.invalid", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    events = {e["event"]: e for e in map(json.loads, result.stdout.splitlines())}
    failed = events["connection_failed"]
    assert failed["phase"] == "resolve"
    assert failed["errno"].startswith("EAI_")
    assert failed["detection_s"] is None  # nothing was waiting for an answer
    assert events["summary"]["longest_detection_s"] is None


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """What ``argv`` writes to a pseudo-terminal as its stdout."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(argv, stdout=terminal, env={**os.environ, **env})
    finally:
        os.close(terminal)
    output = b""
    with contextlib.suppress(OSError):  # EIO once the program has closed its side
        while chunk := os.read(controller, 65536):
            output += chunk
    os.close(controller)
    assert process.wait(30) == 0
    return output.decode()


def test_the_console_view_is_readable_and_no_color_is_respected(start_server: Any) -> None:
    server = start_server()
    argv = [tcpecho_executable(), "client", "--server", f"127.0.0.1:{server.port}", "--count", "1"]
    coloured = _on_a_terminal(argv, {})
    assert "\x1b[" in coloured  # a terminal gets colour by default...
    plain = _on_a_terminal(argv, {"NO_COLOR": "1"})
    assert "\x1b[" not in plain  # ...and none with NO_COLOR
    connected = next(line for line in plain.splitlines() if "connected " in line)
    assert "options={nodelay=true user_timeout_ms=0 keepalive=false " in connected
    for python_repr in ("{'", "None", "True"):
        assert python_repr not in plain


def test_the_labs_examples_are_not_broken_across_lines() -> None:
    result = subprocess.run(
        [tcpecho_executable(), "lab", "--help"], capture_output=True, text=True, check=True
    )
    assert '--client-args "--user-timeout 10s --keepalive"' in result.stdout


def test_a_program_or_custom_profile_runs_alone_unless_profiles_are_named() -> None:
    """--client-cmd, like --client-args, replaces the built-in profiles; --profile adds them
    back. The help of both options, and the lab's page, say so."""
    from tcpecho.cli.lab import chosen_profiles
    from tcpecho.lab.profiles import PROFILES

    def names(*args: tuple[str, ...]) -> list[str]:
        return [profile.name for profile in chosen_profiles(*args)]

    assert names((), (), ()) == list(PROFILES)
    assert names((), (), ("pinger=socat - TCP:{host}:{port}",)) == ["pinger"]
    assert names((), ("--user-timeout 5s",), ()) == ["custom"]
    assert names(("default",), (), ("pinger=nc {host} {port}",)) == ["default", "pinger"]
    from tcpecho.cli import main

    helps = {param.name: getattr(param, "help", "") for param in main.commands["lab"].params}
    assert "default: all, or none with --client-args or --client-cmd" in helps["profiles"]
    assert "Without --profile, no built-in profile runs beside it." in helps["client_commands"]
    page = " ".join((ROOT / "docs" / "lab.md").read_text().split())
    assert "none with `--client-args` or `--client-cmd`" in page
    assert "alone, it runs no built-in profile" in page
