"""nox sessions: ``nox`` alone runs lint, typecheck and tests; ``nox -s demo`` is the main job.

``nox -s bench`` is the benchmark suite (minutes, not part of the default sessions).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True

LINT_TOOLS = ["ruff==0.17.5"]
TYPECHECK_TOOLS = ["mypy==2.4.1", "nox==2026.10.20"]


@nox.session
def tests(session: nox.Session) -> None:
    """pytest over real sockets; the namespace tests run when root with nft and ip."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", *TYPECHECK_TOOLS)
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """A server and a client on loopback for a few echoes, with their logs."""
    session.install(".")
    tcpecho = os.path.join(session.bin, "tcpecho")
    port = "18862"
    session.log("starting: tcpecho server --host 127.0.0.1 --port %s", port)
    server = subprocess.Popen(
        [tcpecho, "server", "--host", "127.0.0.1", "--port", port, "--log-format", "console"]
    )
    try:
        time.sleep(1.0)
        session.run(
            "tcpecho",
            "client",
            "--server",
            "127.0.0.1",
            "--port",
            port,
            "--count",
            "5",
            "--interval",
            "200ms",
            "--user-timeout",
            "30s",
            "--log-format",
            "console",
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)


@nox.session
def bench(session: nox.Session) -> None:
    """Every server under test in interleaved rounds; results in benchmarks/results (~8 min)."""
    session.run("benchmarks/system-packages", external=True)
    session.install(".[plot]")
    session.run("python", "-m", "benchmarks.run", *session.posargs)
