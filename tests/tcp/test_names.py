"""Names: errno names for failures, addresses in the forms the logs print and users paste,
and the addresses a host stands for."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from tcpecho.tcp.names import (
    EOF,
    error_name,
    format_address,
    host_addresses,
    normalized,
    parse_endpoint,
)


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("server", ("server", None)),
        ("10.96.0.10", ("10.96.0.10", None)),
        ("10.96.0.10:8000", ("10.96.0.10", 8000)),
        ("server.ns.svc:8080", ("server.ns.svc", 8080)),
        ("::1", ("::1", None)),
        ("[::1]", ("::1", None)),
        ("[::1]:8000", ("::1", 8000)),
        ("[fd00::2]:65535", ("fd00::2", 65535)),
    ],
)
def test_an_endpoint_reads_back_what_the_logs_print(
    text: str, endpoint: tuple[str, int | None]
) -> None:
    assert parse_endpoint(text) == endpoint
    host, port = endpoint
    if port is not None:
        assert parse_endpoint(format_address((host, port))) == endpoint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the host is empty"),
        (":8000", "the host is missing"),
        ("server:", "the port must be a number"),
        ("server:http", "the port must be a number"),
        ("server:0", "from 1 to 65535"),
        ("server:65536", "from 1 to 65535"),
        ("[::1", "closing ']'"),
        ("[]:80", "closing ']'"),
        ("[::1]8000", "after ']' comes ':PORT'"),
    ],
)
def test_a_bad_endpoint_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoint(text)


def test_failures_are_named_as_users_look_them_up() -> None:
    assert error_name(TimeoutError(errno.ETIMEDOUT, "timed out")) == "ETIMEDOUT"
    assert error_name(ConnectionResetError(errno.ECONNRESET, "reset")) == "ECONNRESET"
    assert error_name(asyncio.IncompleteReadError(b"", 5)) == EOF
    assert error_name(socket.gaierror(socket.EAI_NONAME, "unknown")) == "EAI_NONAME"
    assert error_name(ValueError("odd")) == "ValueError"


@pytest.mark.parametrize(
    ("host", "spelling"),
    [
        ("10.96.0.10", "10.96.0.10"),
        ("::ffff:10.96.0.10", "10.96.0.10"),  # a dual-stack socket's IPv4 peer
        ("0:0:0:0:0:0:0:1", "::1"),
        ("FD00::2", "fd00::2"),
        ("postgres", "postgres"),  # a name stays a name
    ],
)
def test_an_address_has_one_spelling(host: str, spelling: str) -> None:
    assert normalized(host) == spelling


def test_a_host_stands_for_its_addresses() -> None:
    assert host_addresses("::ffff:127.0.0.1") == {"127.0.0.1"}
    assert "127.0.0.1" in host_addresses("localhost")  # resolved, from /etc/hosts
    with pytest.raises(socket.gaierror) as refused:  # RFC 6761: .invalid never resolves
        host_addresses("no-such-host.invalid")
    assert error_name(refused.value) == "EAI_NONAME"
