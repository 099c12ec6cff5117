"""Properties over generated input (hypothesis): the duration parser, the address parser,
the settings' validation and the echo's framing, and every command given bad arguments
exits 2 with one ``Error:`` line, never a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tcpecho.cli import main
from tcpecho.client.client import encode_request
from tcpecho.durations import format_duration, parse_duration
from tcpecho.server.server import MAX_WORKERS, ServerConfig
from tcpecho.settings import Deadlines, SettingError, check_duration, check_range
from tcpecho.tcp.names import format_address, parse_endpoint
from tests.support import free_port, tcpecho_executable

# -- durations -----------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**12))
def test_a_duration_in_microseconds_reads_back_from_its_own_text(micros: int) -> None:
    seconds = micros / 1_000_000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


@given(st.text(max_size=30))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        message = str(error)
    else:
        assert seconds >= 0
        return
    assert "\n" not in message  # one line, whatever the input (it is shown as a repr)


@given(st.integers(min_value=1, max_value=10**9))
def test_a_negative_duration_is_refused(micros: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(f"-{micros}us")


# -- addresses -----------------------------------------------------------------------------

PORTS = st.integers(min_value=1, max_value=65535)
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)


@given(st.one_of(IPV4, IPV6, NAMES), PORTS)
def test_an_address_reads_back_from_the_way_logs_print_it(host: str, port: int) -> None:
    assert parse_endpoint(format_address((host, port))) == (host, port)


@given(st.one_of(IPV4, NAMES))
def test_a_host_without_a_port_has_none(host: str) -> None:
    assert parse_endpoint(host) == (host, None)


@given(IPV6)
def test_a_bare_ipv6_address_is_a_host(host: str) -> None:
    assert parse_endpoint(host) == (host, None)
    assert parse_endpoint(f"[{host}]") == (host, None)


@given(st.one_of(IPV4, NAMES), st.integers().filter(lambda port: not 1 <= port <= 65535))
def test_a_port_out_of_range_is_refused(host: str, port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_endpoint(f"{host}:{port}")


@given(st.text(max_size=40))
def test_any_text_is_an_endpoint_or_a_value_error(text: str) -> None:
    try:
        host, port = parse_endpoint(text)
    except ValueError:
        return
    assert host
    assert port is None or 1 <= port <= 65535


# -- validation ----------------------------------------------------------------------------


@given(st.integers(), st.integers(), st.one_of(st.none(), st.integers()))
def test_check_range_refuses_exactly_what_is_outside(
    value: int, low: int, high: int | None
) -> None:
    inside = value >= low and (high is None or value <= high)
    if inside:
        check_range("setting", value, low, high)
    else:
        with pytest.raises(SettingError) as refused:
            check_range("setting", value, low, high)
        assert refused.value.setting == "setting"


@given(st.integers(min_value=-(10**9), max_value=10**9), st.sampled_from([1, 1000, 1_000_000]))
def test_check_duration_refuses_negatives_and_parts_of_its_step(micros: int, step: int) -> None:
    """``step`` in microseconds: 1 (any duration), 1000 (whole ms), 1000000 (whole s)."""
    seconds = micros / 1_000_000
    if micros >= 0 and micros % step == 0:
        check_duration("setting", seconds, step=step / 1_000_000)
    else:
        with pytest.raises(SettingError):
            check_duration("setting", seconds, step=step / 1_000_000)


@given(
    port=st.integers(-10, 70000),
    workers=st.integers(-2, MAX_WORKERS + 2),
    backlog=st.integers(-2, 10),
    max_connections=st.one_of(st.none(), st.integers(-2, 3)),
)
def test_a_server_config_is_refused_exactly_when_a_value_is_out_of_range(
    port: int, workers: int, backlog: int, max_connections: int | None
) -> None:
    valid = (
        0 <= port <= 65535
        and 1 <= workers <= MAX_WORKERS
        and backlog >= 1
        and (max_connections is None or max_connections >= 1)
    )
    values = {
        "port": port,
        "workers": workers,
        "backlog": backlog,
        "max_connections": max_connections,
    }
    if valid:
        ServerConfig(**values)  # type: ignore[arg-type]
    else:
        with pytest.raises(SettingError):
            ServerConfig(**values)  # type: ignore[arg-type]


@given(st.integers(min_value=-(10**7), max_value=10**7))
def test_deadlines_below_a_millisecond_are_refused(micros: int) -> None:
    if micros >= 1000:
        Deadlines(read_timeout_s=micros / 1_000_000)
    else:
        with pytest.raises(SettingError):
            Deadlines(read_timeout_s=micros / 1_000_000)


# -- the echo's framing --------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=2**63), st.text(max_size=50))
def test_a_request_is_its_number_a_space_the_message_and_a_newline(seq: int, message: str) -> None:
    request = encode_request(seq, message)
    assert request.endswith(b"\n")
    number, _, rest = request.partition(b" ")
    assert int(number) == seq
    assert rest[:-1].decode() == message


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    from tests.support import LoggedProcess

    port = free_port("127.0.0.1")
    server = LoggedProcess(
        [tcpecho_executable(), "server", "--host", "127.0.0.1", "--port", str(port)]
    )
    try:
        server.wait_for("server_started")
        yield port
    finally:
        server.stop()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.binary(min_size=1, max_size=70000), min_size=1, max_size=8))
def test_the_server_echoes_any_chunks_byte_for_byte(echo_port: int, chunks: list[bytes]) -> None:
    """No framing: however the bytes are cut, the same bytes come back, in order."""
    sent = b"".join(chunks)
    with socket.create_connection(("127.0.0.1", echo_port), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(1 << 20):
            received += data
    assert received == sent


# -- bad arguments -------------------------------------------------------------------------


def _valued_options() -> list[tuple[str, click.Option]]:
    """(command, option) for every option of every command that takes a value its type can
    refuse (not free text, such as --host or --message)."""
    found = []
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if (
                isinstance(param, click.Option)
                and not param.is_flag
                and param.opts
                and param.type is not click.STRING
                and not isinstance(param.type, click.Path)
            ):
                found.append((name, param))
    return found


VALUED = _valued_options()


def _refused_by_type(option: click.Option, value: str) -> bool:
    try:
        option.type.convert(value, option, None)
    except click.BadParameter:
        return True
    return False


@pytest.mark.parametrize(("command", "option"), VALUED, ids=[f"{c}{o.opts[0]}" for c, o in VALUED])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(value=st.text(max_size=20))
def test_a_value_an_option_cannot_take_exits_2_with_one_error_line(
    command: str, option: click.Option, value: str
) -> None:
    assume(_refused_by_type(option, value))  # a value it takes would run the command
    result = CliRunner().invoke(main, [command, option.opts[0], value])
    _assert_usage_error(result)


@pytest.mark.parametrize("command", sorted(main.commands))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(flag=st.from_regex(r"--[a-z][a-z-]{2,20}", fullmatch=True))
def test_an_unknown_option_exits_2_with_one_error_line(command: str, flag: str) -> None:
    known = {opt for param in main.commands[command].params for opt in param.opts}
    assume(flag not in known and not any(opt.startswith(flag) for opt in known))
    _assert_usage_error(CliRunner().invoke(main, [command, flag]))


@pytest.mark.parametrize(
    "args",
    [
        ["server", "--port", "70000"],
        ["server", "--workers", "0"],
        ["server", "--backlog", "0"],
        ["server", "--max-connections", "0"],
        ["server", "--idle-timeout", "0s"],
        ["client", "--read-timeout", "0s"],
        ["client", "--port", "0"],
    ],
)
def test_a_value_the_settings_refuse_exits_2_with_one_error_line(args: list[str]) -> None:
    _assert_usage_error(CliRunner().invoke(main, args))


def _assert_usage_error(result: click.testing.Result) -> None:
    output = result.output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert output.rstrip("\n").endswith(errors[0]), output  # the error line is the last
