"""The built container image: its configuration, its contents, and its entrypoint run the way
a container runtime runs it.

``nox -s image`` builds the image and names it in ``TCPECHO_TEST_IMAGE``. No runtime can start
a container on this kind of machine, so each test does what one would: mount the image's
filesystem (``buildah mount``), make it read-only (as ``readOnlyRootFilesystem`` does), and
exec the image's ENTRYPOINT with the pod's arguments, only the image's environment, as the
image's USER, as PID 1 of a new PID namespace (``unshare --pid --fork --mount-proc``, chroot).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import LoggedProcess, echo_once, free_port

IMAGE = os.environ.get("TCPECHO_TEST_IMAGE", "")


def why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (buildah mount, PID namespaces, chroot)"
    for tool in ("buildah", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/system-packages installs it)"
    if not IMAGE:
        return "no image given: scripts/nox -s image builds one and sets TCPECHO_TEST_IMAGE"
    return None


pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(why_not_runnable() is not None, reason=str(why_not_runnable())),
]

# Runs in unshare's new mount namespace before the container's process replaces it: the
# root becomes read-only there only, then env -i and chroot exec the entrypoint, so the
# entrypoint keeps the PID 1 that unshare's fork got.
LAUNCH = """set -eu
root=$1; shift
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
exec "$@"
"""


@contextlib.contextmanager
def mounted_image(image: str) -> Iterator[Path]:
    """The image's filesystem, through a working container removed afterwards."""
    container = f"tcpecho-image-test-{os.getpid()}"
    subprocess.run(
        ["buildah", "from", "--quiet", "--pull=never", "--name", container, image],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        mounted = subprocess.run(
            ["buildah", "mount", container], check=True, capture_output=True, text=True
        )
        try:
            yield Path(mounted.stdout.strip())
        finally:
            subprocess.run(["buildah", "umount", container], check=False, stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(["buildah", "rm", container], check=False, stdout=subprocess.DEVNULL)


def oci_config(image: str) -> dict[str, Any]:
    """The image's OCI configuration (``config``: Entrypoint, Cmd, Env, User, ...)."""
    inspected = subprocess.run(
        ["buildah", "inspect", "--type", "image", image], check=True, capture_output=True
    )
    config: dict[str, Any] = json.loads(inspected.stdout)["OCIv1"]["config"]
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return oci_config(IMAGE)


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    """The image's filesystem, mounted through a working container removed afterwards."""
    with mounted_image(IMAGE) as root:
        yield root


class Container:
    """The entrypoint running as PID 1; ``pid`` is its PID in this (the parent) namespace."""

    def __init__(self, process: LoggedProcess) -> None:
        self.process = process
        self.pid = self._pid1()

    def _pid1(self, timeout: float = 5.0) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = children.read_text().split() if children.exists() else []
            if found:
                return int(found[0])
            time.sleep(0.02)
        raise AssertionError(f"unshare started no child: {self.process.stderr_lines}")

    def status(self) -> dict[str, list[str]]:
        lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        return {key: value.split() for key, _, value in (line.partition(":") for line in lines)}

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        # Killing the namespace's PID 1 ends the namespace; unshare's own --kill-child would
        # not reach it, since the switch to uid 10001 clears the parent-death signal.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.process.stop()


def container_argv(
    config: dict[str, Any], rootfs: Path, command: list[str], env: dict[str, str] | None = None
) -> list[str]:
    """The argv that runs ``command`` in the image as a runtime would (see LAUNCH)."""
    chroot = shutil.which("chroot")
    assert chroot is not None
    environment = [*config["Env"], *(f"{key}={value}" for key, value in (env or {}).items())]
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", LAUNCH, "sh", str(rootfs)]
    argv += ["env", "-i", *environment, chroot, "--userspec", config["User"], str(rootfs)]
    return [*argv, *command]


Run = Callable[..., Container]


@pytest.fixture
def run(config: dict[str, Any], rootfs: Path) -> Iterator[Run]:
    """Start the image's entrypoint with Kubernetes-style ``args`` (replacing CMD) and extra
    environment variables; every container is killed at teardown."""
    started: list[Container] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Container:
        argv = container_argv(config, rootfs, [*config["Entrypoint"], *args], env)
        container = Container(LoggedProcess(argv))
        started.append(container)
        return container

    yield start
    for container in started:
        container.kill()


def test_image_config_runs_tcpecho_itself_as_a_numeric_non_root_user(
    config: dict[str, Any],
) -> None:
    assert config["Entrypoint"] == ["tcpecho"], "exec form: tcpecho is PID 1, no shell or init"
    assert config["Cmd"] == ["server"]
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert "8000/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"


def test_runtime_stage_has_the_environment_and_nothing_to_build_with(rootfs: Path) -> None:
    venv = rootfs / "opt" / "venv"
    assert (venv / "bin" / "tcpecho").is_file()
    assert sorted(venv.glob("lib/python3*/site-packages/tcpecho-*.dist-info"))
    assert not sorted(venv.glob("bin/pip*")), "pip stays in the build stage"
    assert not sorted(venv.glob("lib/python3*/site-packages/hatchling*"))
    for leftover in ("opt/build", "src", "tmp/dist"):
        assert not (rootfs / leftover).exists(), leftover
    for compiler in ("gcc", "cc", "make", "g++"):
        assert not (rootfs / "usr" / "bin" / compiler).exists(), compiler


def test_the_launcher_gives_a_read_only_root(config: dict[str, Any], rootfs: Path) -> None:
    """What the PID-1 tests run under: a root filesystem that refuses writes even where uid
    10001 may write (/tmp), as readOnlyRootFilesystem does in the pods."""
    write = ["python3", "-c", "open('/tmp/probe', 'w')"]
    probe = subprocess.run(
        container_argv(config, rootfs, write), capture_output=True, text=True, check=False
    )
    assert probe.returncode != 0
    assert "Read-only file system" in probe.stderr, probe.stderr
    assert not (rootfs / "tmp" / "probe").exists()


def test_serves_as_pid1_of_uid_10001_and_exits_0_on_sigterm(run: Run) -> None:
    port = free_port()
    container = run("server", "--host", "127.0.0.1", "--port", str(port))
    container.process.wait_for("server_started", timeout=20)
    status = container.status()
    assert status["NSpid"][-1] == "1", f"not PID 1 in its namespace: {status['NSpid']}"
    assert status["Uid"] == ["10001"] * 4
    assert status["Gid"] == ["10001"] * 4
    assert echo_once(port, b"hello from the host\n") == b"hello from the host\n"
    container.signal(signal.SIGTERM)
    assert container.process.wait(15) == 0
    container.process.wait_for("server_stopped")
    container.process.assert_no_traceback()


def test_catch_sigterm_from_the_environment_ignores_sigterm_as_pid1(run: Run) -> None:
    port = free_port()
    container = run(
        "server", "--host", "127.0.0.1", "--port", str(port),
        env={"TCPECHO_SERVER_CATCH_SIGTERM": "true"},
    )  # fmt: skip
    container.process.wait_for("server_started", timeout=20)
    container.signal(signal.SIGTERM)
    container.process.wait_for("signal_ignored")
    time.sleep(0.5)
    assert container.process.proc.poll() is None, "SIGTERM stopped a --catch-sigterm server"
    assert echo_once(port, b"still here\n") == b"still here\n"
    container.signal(signal.SIGINT)
    assert container.process.wait(15) == 0
    container.process.assert_no_traceback()


def test_client_from_the_image_echoes_with_the_server_from_the_image(run: Run) -> None:
    port = free_port()
    server = run("server", "--host", "127.0.0.1", "--port", str(port))
    server.process.wait_for("server_started", timeout=20)
    client = run(
        "client",
        env={
            "TCPECHO_CLIENT_SERVER": "127.0.0.1",
            "TCPECHO_CLIENT_PORT": str(port),
            "TCPECHO_CLIENT_COUNT": "3",
            "TCPECHO_CLIENT_INTERVAL": "100ms",
            "TCPECHO_CLIENT_USER_TIMEOUT": "30s",
        },
    )
    assert client.process.wait(20) == 0, client.process.stderr_lines
    assert len(client.process.named("response_received")) == 3
    assert client.process.named("connected")[0]["options"]["user_timeout_ms"] == 30000
    client.process.assert_no_traceback()
