"""The recipes as data, and the settings of the clients that run them, read back from real
sockets on loopback: what the page says a library's options do is what its socket shows.
(The lab run, ``scripts/nox -s cookbook``, checks the same for every stack in its pods.)"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from cookbook import results, run
from cookbook.clients import plain_socket, psycopg_client, redis_client
from cookbook.recipes import FAULTS, RECIPES, RECOMMENDED, Recipe
from tcpecho.tcp.options import read_effective


def _recipe(stack: str, settings: str) -> Recipe:
    return next(r for r in RECIPES if r.stack == stack and r.settings == settings)


def test_every_stack_has_its_defaults_and_the_recommended_settings() -> None:
    stacks = {recipe.stack for recipe in RECIPES}
    assert len(stacks) >= 5
    for stack in stacks:
        assert {"defaults", "recommended"} <= {r.settings for r in RECIPES if r.stack == stack}
    names = [(recipe.stack, recipe.settings) for recipe in RECIPES]
    assert len(names) == len(set(names))  # so each profile name, recipe.name(mode), is unique
    for recipe in RECIPES:
        assert set(recipe.verdicts) == set(FAULTS), recipe.name("busy")  # every fault
        for fault in FAULTS:
            assert recipe.modes(fault) == ("busy", "idle"), (fault, recipe.name("busy"))
        if recipe.settings == "recommended":
            # Bounded when the peer vanishes; keeps its flow through the path's idle timeout.
            assert set(recipe.verdicts["force-delete"].values()) == {"detected"}
            assert set(recipe.verdicts["idle-expiry"].values()) == {"survived"}
        # A request a second keeps any flow: a busy connection outlives the idle timeout.
        assert recipe.verdicts["idle-expiry"]["busy"] == "survived"
        # survived is idle-expiry's: under force-delete there is nothing to survive to.
        assert "survived" not in recipe.verdicts["force-delete"].values()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that accepts and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


def _options(sock: socket.socket) -> dict[str, object]:
    return dict(read_effective(sock).as_dict())


def _redis_socket(host: str, port: int, **settings: Any) -> socket.socket:
    """redis-py's own socket setup (its handshake would need a redis server: not called)."""
    connection = redis.Connection(host=host, port=port, **settings)  # type: ignore[no-untyped-call]
    sock: socket.socket = connection._connect()  # type: ignore[no-untyped-call]
    return sock


def test_the_plain_socket_recipe_sets_what_the_page_says(listener: socket.socket) -> None:
    with socket.create_connection(listener.getsockname()) as sock:
        plain_socket.configure(sock)
        assert results.socket_problems(RECOMMENDED, _options(sock)) == []


def test_redis_py_sets_tcp_user_timeout_through_socket_keepalive_options(
    listener: socket.socket,
) -> None:
    host, port = listener.getsockname()
    with _redis_socket(host, port, **redis_client.recommended()) as sock:
        assert results.socket_problems(RECOMMENDED, _options(sock)) == []
    with _redis_socket(host, port) as defaults:
        declared = _recipe("redis-py", "defaults").socket
        assert results.socket_problems(declared, _options(defaults)) == []


def test_libpq_sets_its_keepalive_and_user_timeout_before_it_connects(
    listener: socket.socket,
) -> None:
    host, port = listener.getsockname()
    conninfo = psycopg.conninfo.make_conninfo(
        host=host, port=port, user="postgres", **psycopg_client.recommended()
    )
    pgconn = psycopg.pq.PGconn.connect_start(conninfo.encode())
    try:
        assert pgconn.status != psycopg.pq.ConnStatus.BAD, pgconn.error_message
        with socket.socket(fileno=os.dup(pgconn.socket)) as sock:
            assert results.socket_problems(RECOMMENDED, _options(sock)) == []
    finally:
        pgconn.finish()


@pytest.mark.skipif(shutil.which("go") is None, reason="go missing: apt-get install golang-go")
def test_the_go_client_builds_and_refuses_bad_arguments(tmp_path: Path) -> None:
    binary = run.build_go_client(tmp_path)
    refused = subprocess.run([binary, "sideways"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert "usage: client busy|idle defaults|recommended" in refused.stderr
