"""The lab's server presets (``tcpecho lab --server-preset NAME``): each one set up for real,
started in a network namespace of its own as a case's server pod starts it, asked by its own
client (psql, redis-cli, mariadb, a gRPC channel), then killed as a force-deleted pod's
server is; nothing is left behind. And the command line's refusals, and one lab run whose
server is a preset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpecho.lab import servers
from tcpecho.lab.topology import leftover_namespaces
from tests.conftest import requires_netns
from tests.lab.test_programs import _lab
from tests.support import abandoned_namespaces, tcpecho_executable

PREFIX = "tprfS-"
PORT = 8000
HOST = "127.0.0.1"  # the namespace's own loopback: the pod's address in a lab case
# Each preset's own client, asking one thing and printing the answer.
ASKED = {
    "postgres": (
        ["psql", "-h", HOST, "-p", str(PORT), "-U", "postgres", "-Atc", "SELECT 1+1"],
        "2",
    ),
    "redis": (["redis-cli", "-h", HOST, "-p", str(PORT), "PING"], "PONG"),
    "mariadb": (
        ["mariadb", "-h", HOST, "-P", str(PORT), "-u", "lab", "-N", "-e", "SELECT 1+1"],
        "2",
    ),
    "grpc": (
        [
            sys.executable,
            "-c",
            "import grpc; from tcpecho.lab.grpc_server import ECHO; "
            f"c = grpc.insecure_channel('{HOST}:{PORT}'); "
            "print(c.unary_unary(ECHO)(b'echoed', timeout=5).decode())",
        ],
        "echoed",
    ),
    "http": (
        [
            sys.executable,
            "-c",
            f"import urllib.request; print(urllib.request.urlopen('http://{HOST}:{PORT}/').read())",
        ],
        "b'ok\\n'",
    ),
    # curl's HTTP/2 (nghttp2), cleartext with prior knowledge; it prints the version it spoke.
    "http2": (
        [
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            "-w",
            "HTTP/%{http_version}",
            f"http://{HOST}:{PORT}/",
        ],
        "ok\nHTTP/2",
    ),
}


@pytest.fixture
def pod() -> Iterator[str]:
    """A network namespace with its loopback up, as a server pod; removed afterwards."""
    for name in abandoned_namespaces(PREFIX):
        subprocess.run(["ip", "netns", "del", name], check=False)
    name = f"{PREFIX}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        assert leftover_namespaces(f"{PREFIX}{os.getpid()}") == []


def _answer(pod: str, preset: str, deadline_s: float = 60.0) -> str:
    """The preset's client's answer, asked again until the server is up."""
    argv, _ = ASKED[preset]
    deadline = time.monotonic() + deadline_s
    while True:
        asked = subprocess.run(
            ["ip", "netns", "exec", pod, *argv], capture_output=True, text=True, timeout=30
        )
        if asked.returncode == 0 or time.monotonic() > deadline:
            return asked.stdout.strip() or asked.stderr.strip()
        time.sleep(0.3)


def _shared_memory_segments() -> set[str]:
    """The host's System V shared memory segments (their ids), as ``ipcs`` lists them."""
    listed = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    return {line.split()[1] for line in listed.splitlines() if line.startswith("0x")}


@requires_netns
@pytest.mark.netns
@pytest.mark.parametrize("preset", sorted(servers.PRESETS))
def test_each_preset_serves_its_own_client_and_leaves_nothing(pod: str, preset: str) -> None:
    lacking = servers.missing(preset)
    assert lacking is None, f"{preset} {lacking}: scripts/system-packages installs it"
    assert set(ASKED) == set(servers.PRESETS)  # every preset is asked here
    segments = _shared_memory_segments()
    ours = f"{servers.DIRECTORY_PREFIX}{os.getpid()}-*"
    with servers.prepared(preset) as command:
        prepared_at = list(Path(tempfile.gettempdir()).glob(ours))
        assert len(prepared_at) == 1, "the preset's directory is the run's own"
        started = subprocess.Popen(
            ["ip", "netns", "exec", pod, "sh", "-c", command.format(host=HOST, port=PORT)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert _answer(pod, preset) == ASKED[preset][1]
        finally:
            os.killpg(started.pid, signal.SIGKILL)  # as the force-delete kills a pod's
            started.wait()
    assert not any(path.exists() for path in prepared_at)  # removed with the run
    # PostgreSQL's System V segment went with the IPC namespace of its own.
    assert _shared_memory_segments() <= segments


def test_a_preset_names_what_installs_what_it_lacks() -> None:
    preset = servers.ServerPreset(
        "example",
        "a server this machine lacks",
        (
            servers.Needed("program", "tprfS-no-such-server", "apt-get install tprfs-server"),
            servers.Needed("user", "tprfS-no-such-user", "apt-get install tprfs-server"),
            servers.Needed("module", "tprfs_no_such_module", "pip install tprfs"),
            servers.Needed("program", "sh", "apt-get install dash"),
        ),
        lambda directory: "true",
    )
    assert preset.missing() == (
        "needs program tprfS-no-such-server, user tprfS-no-such-user, module "
        "tprfs_no_such_module (apt-get install tprfs-server; pip install tprfs)"
    )


def test_a_killed_runs_directory_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    temporary = Path(tempfile.gettempdir())
    dead = temporary / f"{servers.DIRECTORY_PREFIX}{gone.pid}-tprfS"
    live = temporary / f"{servers.DIRECTORY_PREFIX}{os.getpid()}-tprfS"
    for path in (dead, live):
        (path / "template").mkdir(parents=True)
    try:
        assert dead in servers.remove_stale()
        assert not dead.exists()
        assert live.exists()
    finally:
        for path in (dead, live):
            subprocess.run(["rm", "-rf", str(path)], check=True)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--server-preset", "postgres", "--server-cmd", "true"],
            "--server-preset and --server-cmd",
        ),
        (["--server-preset", "oracle"], "'oracle' is not one of"),
    ],
)
def test_the_command_line_refuses_a_server_it_cannot_run(args: list[str], said: str) -> None:
    refused = subprocess.run(
        [tcpecho_executable(), "lab", "--fault", "kill", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert said in refused.stderr
    assert "Traceback" not in refused.stderr


@requires_netns
@pytest.mark.netns
def test_a_lab_run_with_the_postgres_preset_measures_psql(tmp_path: Path) -> None:
    """psql, one query a second on one connection, against the preset's PostgreSQL: the
    force-delete leaves its next query unanswered, and the kernel's budget ends it."""
    # The pace is the client's: a query answered at once, then a second with nothing in
    # flight (a server-side pg_sleep would leave the fault to find a wait for an answer).
    psql = "while :; do echo 'SELECT 1;'; sleep 1; done | psql -h {host} -p {port} -U postgres -q"
    result, cases = _lab(
        tmp_path,
        "--fault",
        "force-delete",
        "--server-preset",
        "postgres",
        "--client-cmd",
        f"psql={psql}",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    case = cases["force-delete/psql"]
    assert case["error"] is None
    assert case["matches_model"], (case["prediction"], case["measured_s"])
    assert case["mode"] == "active"
    assert case["options"]["keepalive"] is True  # libpq's own default, read off its socket
