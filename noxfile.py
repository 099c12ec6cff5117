"""nox sessions: ``nox`` alone runs lint, typecheck and tests; ``nox -s demo`` is the main job."""

from __future__ import annotations

import os
import shutil
import signal
import socket
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
    session.install("-e", ".[test,plot]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test,plot]", *TYPECHECK_TOOLS)
    session.run("mypy")


def lab_unavailable() -> str | None:
    """Why ``tcpecho lab`` cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} missing" if missing else None


@nox.session
def lab(session: nox.Session) -> None:
    """The lab's quick matrix, with its table, JSON and chart in out/ (root, ip, nft)."""
    run_lab(session)


def run_lab(session: nox.Session) -> None:
    session.install(".[plot]")
    os.makedirs("out", exist_ok=True)
    args = session.posargs or ["--quick", "--json", "out/lab.json", "--plot", "out/lab.png"]
    session.run("tcpecho", "lab", *args)


@nox.session
def demo(session: nox.Session) -> None:
    """The lab's quick matrix when root; otherwise a server and a client on loopback."""
    reason = lab_unavailable()
    if reason is None:
        session.log("root with ip and nft: running tcpecho lab --quick (about a minute)")
        run_lab(session)
        return
    session.log("%s, so no lab (it needs network namespaces): a loopback demo instead", reason)
    loopback_demo(session)


def loopback_demo(session: nox.Session) -> None:
    """A server and a client on loopback for a few echoes, with their logs."""
    session.install(".")
    tcpecho = os.path.join(session.bin, "tcpecho")
    port = "18862"
    session.log("starting: tcpecho server --host 127.0.0.1 --port %s", port)
    server = subprocess.Popen(
        [tcpecho, "server", "--host", "127.0.0.1", "--port", port, "--log-format", "console"]
    )
    try:
        deadline = time.monotonic() + 15
        while not _listening("127.0.0.1", int(port)):
            if server.poll() is not None or time.monotonic() > deadline:
                session.error(f"the server did not start on port {port}")
            time.sleep(0.1)
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


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True
