"""A rendered pod started from the built image by ``cluster/kubelet.py``'s command line, looked at
from outside as one would look at a container: PID 1 of its own PID namespace, the manifest's
user and group with no privileges, exactly the environment and argv decided, a read-only root,
the kubelet's files, its hostname, and the Service's name resolved by the image's own resolver.

``nox -s pods`` builds the image and names it in ``TCPECHO_TEST_IMAGE``; it then runs every
overlay's pods through the lab (``python -m cluster.pods``).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import kubelet, pods
from cluster.kubelet import Launch

from tcpecho.lab import topology as net

IMAGE = os.environ.get("TCPECHO_TEST_IMAGE", "")
USER = ["-S", "10001", "-G", "10001"]  # nsenter as the pod's user


def why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (buildah mount, namespaces, mounts)"
    missing = [tool for tool in (*pods.TOOLS, "nsenter") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (scripts/system-packages and nox -s pods give them)"
    if not IMAGE:
        return "no image given: scripts/nox -s pods builds one and sets TCPECHO_TEST_IMAGE"
    return None


pytestmark = [
    pytest.mark.pods,
    pytest.mark.skipif(why_not_runnable() is not None, reason=str(why_not_runnable())),
]


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    with pods.mounted_image(IMAGE) as root:
        yield root


def first_child(pid: int, timeout_s: float = 10.0) -> int:
    """unshare's forked child: PID 1 of the new PID namespace, the container's process."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = children.read_text().split() if children.exists() else []
        if found:
            return int(found[0])
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def wait_for_line(process: subprocess.Popen[bytes], word: bytes, timeout_s: float = 60.0) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen: list[bytes] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            assert line, f"the pod exited: {process.stderr.read() if process.stderr else ''!r}"
            if word in line:
                return
            seen.append(line)
    # Say what the pod did say, and where its process stands, before the fixture kills it.
    tree = subprocess.run(
        ["ps", "-o", "pid,stat,wchan:20,etime,args", "--forest", "-g", str(process.pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stderr = process.stderr.read() if process.stderr else b""
    raise AssertionError(
        f"no {word!r} within {timeout_s} s; stdout {seen!r}; stderr {stderr[-2000:]!r}; {tree}"
    )


@pytest.fixture
def server_pod(rootfs: Path, tmp_path: Path) -> Iterator[tuple[Launch, int]]:
    """The default overlay's server pod, running in a network namespace of this test's."""
    objects = pods.render("kubectl", pods.OVERLAYS_DIR / "default")
    spec = pods.pod_case("default", "active", objects, pods.image_config(IMAGE)).server
    kubelet.prepare(spec, tmp_path)
    namespace = f"{net.PREFIX}podtest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *kubelet.argv(spec, rootfs, tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # Unbuffered: wait_for_line selects on the pipe, and a buffered readline could
            # take server_started into Python's buffer with the line before it, where select
            # never sees it (the pod then looked silent for the whole wait).
            bufsize=0,
        )
        try:
            wait_for_line(process, b'"server_started"')
            yield spec, first_child(process.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone if the wait above failed
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


def status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, _, value in (line.partition(":") for line in lines)}


def inside(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` from the pod's root, in its mount, UTS and network namespaces, as its user."""
    command = ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-r", *USER, *argv]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_the_pod_is_pid_1_as_its_user_without_privileges(server_pod: tuple[Launch, int]) -> None:
    _, pid = server_pod
    found = status(pid)
    assert found["NSpid"][-1] == "1"
    assert found["Uid"] == ["10001"] * 4
    assert found["Gid"] == ["10001"] * 4
    assert found["Groups"] == ["10001"]
    assert found["NoNewPrivs"] == ["1"]
    assert int(found["CapEff"][0], 16) == 0


def test_the_pod_has_exactly_its_environment_and_argv(server_pod: tuple[Launch, int]) -> None:
    spec, pid = server_pod
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    assert [item for item in environ if item] == [f"{k}={v}" for k, v in spec.env]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    # The ENTRYPOINT `tcpecho` found on the image's PATH, a script run by the venv's python.
    assert cmdline[1:] == ["/opt/venv/bin/tcpecho", "server", "--catch-sigterm"]


def test_the_pods_root_is_read_only_with_the_kubelets_files(
    server_pod: tuple[Launch, int],
) -> None:
    spec, pid = server_pod
    root = next(
        line.split()
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    assert root[5].split(",")[0] == "ro"
    written = inside(pid, "touch", "/probe")
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr
    assert Path(f"/proc/{pid}/root/etc/hosts").read_text() == spec.hosts
    assert inside(pid, "hostname").stdout.strip() == spec.pod


def test_the_services_name_resolves_inside_the_pod(server_pod: tuple[Launch, int]) -> None:
    _, pid = server_pod
    for name in ("server", "server.tcpecho-default.svc.cluster.local"):
        resolved = inside(pid, "getent", "hosts", name)
        assert resolved.stdout.split()[:1] == [net.CLUSTER_IP], resolved
