"""TcpOptions: each option's description against the kernel, validation, and what the kernel
reports after the options are applied.

``APPLIED`` has one line per option: a value to set and what getsockopt then reports. A new
option without its line here fails ``test_every_option_has_its_line_here``; with it, every
test below that walks the options covers it.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
import sys
import types
from collections.abc import Iterator

import pytest

from tcpecho.settings import SettingError
from tcpecho.tcp.options import OPTIONS, SocketOption, TcpOptions, read_effective

# field: (a value to apply, what the kernel then reports); none of them the kernel's default.
APPLIED: dict[str, tuple[int | bool, int | bool]] = {
    "nodelay": (True, True),
    "user_timeout_ms": (3000, 3000),
    "keepalive": (True, True),
    "keepalive_idle_s": (7, 7),
    "keepalive_interval_s": (3, 3),
    "keepalive_count": (4, 4),
    "syn_retries": (2, 2),
    "recverr": (True, True),
}
ALL_SET = TcpOptions(**{name: value for name, (value, _) in APPLIED.items()})  # type: ignore[arg-type]
BOUNDED = [option for option in OPTIONS if option.kind != "switch"]


def test_every_option_has_its_line_here() -> None:
    assert set(APPLIED) == {option.field for option in OPTIONS}


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if o.is_duration], ids=lambda option: option.field
)
def test_a_duration_is_named_after_its_unit(option: SocketOption) -> None:
    """The setting's name is the field's without the unit: the unit is in the name once."""
    suffix = {0.001: "_ms", 1.0: "_s"}[option.unit_s]
    assert option.field == option.setting + suffix


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> int:
    family: int = request.param
    return family


@pytest.fixture
def tcp_socket(family: int) -> Iterator[socket.socket]:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        yield sock


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.field)
def test_each_option_alone_reads_back_as_applied(
    option: SocketOption, tcp_socket: socket.socket
) -> None:
    value, reported = APPLIED[option.field]
    before = read_effective(tcp_socket)
    alone = {"nodelay": None, option.field: value}  # nodelay is on unless asked otherwise
    TcpOptions(**alone).apply(tcp_socket)  # type: ignore[arg-type]
    after = read_effective(tcp_socket)
    assert getattr(after, option.field) == reported
    changed = {name for name, was in before.as_dict().items() if getattr(after, name) != was} - {
        option.field,
        *(o.tunes for o in OPTIONS if o.field == option.field),
    }
    assert changed == set()  # nothing else moved, but the switch a tuning turns on


@pytest.mark.parametrize("option", BOUNDED, ids=lambda option: option.field)
def test_the_bounds_are_the_kernels(option: SocketOption, tcp_socket: socket.socket) -> None:
    """The highest value is taken, one more is refused by the kernel too: the bounds are not
    ours to choose, only to say earlier and better."""
    assert option.high is not None
    TcpOptions(**{option.field: option.high}).apply(tcp_socket)  # type: ignore[arg-type]
    assert getattr(read_effective(tcp_socket), option.field) == option.high
    number = option.constant.number()
    assert number is not None
    for beyond in (option.low - 1, option.high + 1):
        with pytest.raises(SettingError) as refused:
            TcpOptions(**{option.field: beyond})  # type: ignore[arg-type]
        assert refused.value.setting == option.setting
        as_c_int = (beyond % 2**32).to_bytes(4, sys.byteorder)  # 2^31 is no C int for Python
        with pytest.raises(OSError, match="Invalid argument") as kernel_refused:
            tcp_socket.setsockopt(option.constant.level, number, as_c_int)
        assert kernel_refused.value.errno == errno.EINVAL


def test_refuses_tuning_a_switch_that_is_off() -> None:
    with pytest.raises(SettingError) as refused:
        TcpOptions(keepalive=False, keepalive_idle_s=5)
    assert refused.value.setting == "keepalive"
    assert "--keepalive-idle, --keepalive-interval and --keepalive-count need keepalive" in str(
        refused.value
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"user_timeout": 0.0015}, "whole number of milliseconds"),
        ({"user_timeout": 2147484.0}, "above the maximum"),
        ({"keepalive_idle": 1.5}, "whole number of seconds"),
        ({"keepalive_interval": 0.0}, "below the minimum of 1s"),
        ({"keepalive_count": 0}, "between 1 and 127"),
    ],
)
def test_from_user_refuses_what_the_kernel_cannot_take(
    given: dict[str, float], message: str
) -> None:
    with pytest.raises(SettingError, match=message) as refused:
        TcpOptions.from_user(given)
    assert refused.value.setting == next(iter(given))


def test_from_user_gives_the_kernel_units() -> None:
    options = TcpOptions.from_user(
        {"user_timeout": 1.5, "keepalive_idle": 60.0, "keepalive_interval": 5.0, "recverr": None}
    )
    assert options == TcpOptions(user_timeout_ms=1500, keepalive_idle_s=60, keepalive_interval_s=5)


@pytest.mark.parametrize(
    ("options", "flags"),
    [
        (TcpOptions(), ()),
        (TcpOptions(user_timeout_ms=30_000), ("--user-timeout", "30s")),
        (TcpOptions(user_timeout_ms=1500), ("--user-timeout", "1.5s")),
        (TcpOptions(keepalive=False), ("--no-keepalive",)),
        (TcpOptions(recverr=False), ("--no-recverr",)),
        (
            TcpOptions(
                user_timeout_ms=3000,
                keepalive=True,
                keepalive_idle_s=7,
                keepalive_interval_s=3,
                keepalive_count=4,
                syn_retries=2,
                recverr=True,
            ),
            (
                *("--user-timeout", "3s", "--keepalive", "--keepalive-idle", "7s"),
                *("--keepalive-interval", "3s", "--keepalive-count", "4"),
                *("--syn-retries", "2", "--recverr"),
            ),
        ),
    ],
)
def test_renders_itself_as_client_flags(options: TcpOptions, flags: tuple[str, ...]) -> None:
    assert options.as_flags() == flags


def test_tuning_keepalive_switches_it_on() -> None:
    assert TcpOptions(keepalive_idle_s=5).keepalive_enabled is True
    assert TcpOptions().keepalive_enabled is None
    assert TcpOptions(keepalive=False).keepalive_enabled is False


@pytest.mark.parametrize(
    ("options", "summary"),
    [
        (TcpOptions(), "defaults"),
        (TcpOptions(user_timeout_ms=0, keepalive=False, recverr=False), "defaults"),
        (
            TcpOptions(user_timeout_ms=3000, keepalive_idle_s=7, keepalive_count=4, recverr=True),
            "user_timeout=3s keepalive=7s/4 recverr",
        ),
        (TcpOptions(keepalive=True), "keepalive"),
    ],
)
def test_the_summary_names_what_changes_when_the_kernel_gives_up(
    options: TcpOptions, summary: str
) -> None:
    assert options.summary() == summary


def test_names_options_a_platform_lacks() -> None:
    without_user_timeout = types.SimpleNamespace(
        **{name: getattr(socket, name) for name in dir(socket) if name != "TCP_USER_TIMEOUT"}
    )
    assert TcpOptions(user_timeout_ms=30000).unsupported(without_user_timeout) == [
        "TCP_USER_TIMEOUT"
    ]
    assert TcpOptions().unsupported(without_user_timeout) == []
    assert ALL_SET.unsupported() == []  # Linux has them all


def test_read_back_matches_what_was_applied(tcp_socket: socket.socket) -> None:
    ALL_SET.apply(tcp_socket)
    effective = read_effective(tcp_socket)
    assert effective.as_dict() == {name: reported for name, (_, reported) in APPLIED.items()}


def test_a_reading_is_never_refused() -> None:
    """A namespace may hold sysctls no socket could be given (tcp_keepalive_time 0, say)."""
    reading = read_effective(socket.socket())
    assert dataclasses.replace(reading, keepalive_idle_s=0).keepalive_idle_s == 0


def test_defaults_leave_the_kernel_defaults(tcp_socket: socket.socket) -> None:
    before = read_effective(tcp_socket)
    TcpOptions(nodelay=False).apply(tcp_socket)
    after = read_effective(tcp_socket)
    assert after == before
    assert after.user_timeout_ms == 0
    assert after.keepalive is False


def test_accepted_connections_inherit_the_listening_socket_options(family: int) -> None:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        ALL_SET.without_connect_options().apply(listener)
        listener.bind((host, 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]) as client:
            accepted, _ = listener.accept()
            with accepted:
                effective = read_effective(accepted)
                assert effective.user_timeout_ms == 3000
                assert effective.keepalive is True
                assert (
                    effective.keepalive_idle_s,
                    effective.keepalive_interval_s,
                    effective.keepalive_count,
                ) == (7, 3, 4)
                assert effective.recverr is True
                assert read_effective(client).user_timeout_ms == 0  # the client set nothing
