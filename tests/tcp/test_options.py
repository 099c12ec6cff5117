"""TcpOptions: validation, and what the kernel reports after the options are applied."""

from __future__ import annotations

import socket
import types
from collections.abc import Iterator

import pytest

from tcpecho.settings import SettingError
from tcpecho.tcp.options import (
    KEEPALIVE_COUNT_MAX,
    KEEPALIVE_TIME_MAX_S,
    SYN_RETRIES_MAX,
    USER_TIMEOUT_MAX_MS,
    TcpOptions,
    read_effective,
)

ALL_SET = TcpOptions(
    user_timeout_ms=3000,
    keepalive=True,
    keepalive_idle_s=7,
    keepalive_interval_s=3,
    keepalive_count=4,
    syn_retries=2,
    recverr=True,
)


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"user_timeout_ms": -1}, "user_timeout"),
        ({"user_timeout_ms": USER_TIMEOUT_MAX_MS + 1}, "user_timeout"),
        ({"keepalive_idle_s": 0}, "keepalive_idle"),
        ({"keepalive_idle_s": KEEPALIVE_TIME_MAX_S + 1}, "keepalive_idle"),
        ({"keepalive_interval_s": 0}, "keepalive_interval"),
        ({"keepalive_count": 0}, "keepalive_count"),
        ({"keepalive_count": KEEPALIVE_COUNT_MAX + 1}, "keepalive_count"),
        ({"syn_retries": 0}, "syn_retries"),
        ({"syn_retries": SYN_RETRIES_MAX + 1}, "syn_retries"),
        ({"keepalive": False, "keepalive_idle_s": 5}, "keepalive"),
    ],
)
def test_refuses_values_the_kernel_would_refuse_or_ignore(
    options: dict[str, object], setting: str
) -> None:
    with pytest.raises(SettingError) as refused:
        TcpOptions(**options)  # type: ignore[arg-type]
    assert refused.value.setting == setting


@pytest.mark.parametrize(
    ("durations", "message"),
    [
        ({"user_timeout_s": 0.0015}, "whole number of milliseconds"),
        ({"user_timeout_s": 2147484.0}, "above the maximum"),
        ({"keepalive_idle_s": 1.5}, "whole number of seconds"),
        ({"keepalive_interval_s": 0.0}, "below the minimum of 1s"),
    ],
)
def test_from_durations_refuses_what_the_kernel_cannot_take(
    durations: dict[str, float], message: str
) -> None:
    with pytest.raises(SettingError, match=message):
        TcpOptions.from_durations(**durations)  # type: ignore[arg-type]


def test_from_durations_gives_the_kernel_units() -> None:
    options = TcpOptions.from_durations(
        user_timeout_s=1.5, keepalive_idle_s=60.0, keepalive_interval_s=5.0
    )
    assert (options.user_timeout_ms, options.keepalive_idle_s) == (1500, 60)
    assert options.keepalive_interval_s == 5
    assert options.user_timeout_s == 1.5


@pytest.mark.parametrize(
    ("options", "flags"),
    [
        (TcpOptions(), ()),
        (TcpOptions(user_timeout_ms=30_000), ("--user-timeout", "30s")),
        (TcpOptions(user_timeout_ms=1500), ("--user-timeout", "1.5s")),
        (TcpOptions(keepalive=False), ("--no-keepalive",)),
        (
            ALL_SET,
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


def test_names_options_a_platform_lacks() -> None:
    without_user_timeout = types.SimpleNamespace(
        **{name: getattr(socket, name) for name in dir(socket) if name != "TCP_USER_TIMEOUT"}
    )
    assert TcpOptions(user_timeout_ms=30000).unsupported(without_user_timeout) == [
        "TCP_USER_TIMEOUT"
    ]
    assert TcpOptions().unsupported(without_user_timeout) == []
    assert ALL_SET.unsupported() == []  # Linux has them all


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> int:
    family: int = request.param
    return family


@pytest.fixture
def tcp_socket(family: int) -> Iterator[socket.socket]:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        yield sock


def test_read_back_matches_what_was_applied(tcp_socket: socket.socket) -> None:
    ALL_SET.apply(tcp_socket)
    effective = read_effective(tcp_socket)
    assert effective.as_dict() == {
        "nodelay": True,
        "user_timeout_ms": 3000,
        "keepalive": True,
        "keepalive_idle_s": 7,
        "keepalive_interval_s": 3,
        "keepalive_count": 4,
        "syn_retries": 2,
        "recverr": True,
    }


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
