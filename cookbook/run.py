"""``python -m cookbook.run``: every recipe under ``force-delete`` and ``idle-expiry`` (the
lab's path idle timeout) in the lab, busy and idle, with the quick kernel budget;
``out/cookbook.json``; exit 1 when a case fails its checks.

It builds the Go clients (the library ones against Debian's packaged Go modules, offline)
and installs the Node client (``npm ci`` from its lockfile) in a temporary directory, sets
up the servers as ``tcpecho lab --server-preset`` does (``tcpecho.lab.servers``:
PostgreSQL, Redis, MariaDB, the gRPC, HTTP/1.1 and HTTP/2 servers), gives the lab one
program case per recipe, fault and mode (each with its own server program), all in one run,
reads the lab's JSON back and checks it (``results``). Needs root, like the lab, and the
Debian packages in ``scripts/system-packages``; the Python libraries come from the nox
session.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cookbook import results
from cookbook.recipes import FAULTS, RECIPES, Fault, Mode, Recipe
from tcpecho.experiment import Fault as LabFault
from tcpecho.experiment import FaultTiming, Profile
from tcpecho.lab import KernelBudget, LabConfig, check_requirements, servers
from tcpecho.lab import run as run_lab
from tcpecho.model import Activity

ROOT = Path(__file__).resolve().parent.parent
GO_SOURCE = ROOT / "cookbook" / "go" / "client.go"
# The Go clients on Debian's packaged modules (golang-*-dev, in /usr/share/gocode), built in
# GOPATH mode: no module proxy, no go.mod, nothing fetched.
DEBIAN_GOPATH = Path("/usr/share/gocode")
GO_MYSQL_SOURCE = ROOT / "cookbook" / "go" / "mysql" / "main.go"
GO_HTTP2_SOURCE = ROOT / "cookbook" / "go" / "http2" / "main.go"
NODE_SOURCE = ROOT / "cookbook" / "node"
NODE_FILES = ("client.js", "package.json", "package-lock.json")
JAVA_SOURCE = ROOT / "cookbook" / "java" / "Client.java"
# Debian's PgJDBC and HikariCP, and the SLF4J HikariCP logs through (slf4j-simple: its
# warnings, a failed validation say, on stderr).
JAVA_JARS = tuple(
    Path("/usr/share/java") / jar
    for jar in ("postgresql.jar", "HikariCP.jar", "slf4j-api.jar", "slf4j-simple.jar")
)
# An idle client's setup (a handshake, its one request) must be over before the fault.
IDLE_QUIET_S = 1.5
# A busy client's too, for a stack whose setup takes longer than the lab's first look at a
# connection with data both ways: a JVM's pool (PgJDBC's handshake, HikariCP's checks) takes
# seconds when the run starts its JVMs at once, and a fault then would find the handshake in
# flight, not the loop's requests. A quiet moment comes in each pause between requests (1 s).
BUSY_QUIET_S = {"pgjdbc": 0.5}
# Go's default keepalive ends an idle connection after 15 + 9 x 15 = 150 s: watched to there;
# longer predictions (the kernel's 2 h keepalive) are reported as not reached.
WATCH_S = 170.0
TOOLS = {
    "go": "golang-go",
    "node": "nodejs",
    "npm": "npm",
    "java": "openjdk-17-jdk-headless",
    "javac": "openjdk-17-jdk-headless",
}
# The Debian packages of Go modules the Go clients import, by a file each one installs.
GO_MODULES = {
    DEBIAN_GOPATH / "src/github.com/go-sql-driver/mysql/driver.go": (
        "golang-github-go-sql-driver-mysql-dev"
    ),
    DEBIAN_GOPATH / "src/golang.org/x/net/http2/transport.go": "golang-golang-x-net-dev",
}
# The jars the Java client runs with, by the package that installs each.
JAR_PACKAGES = {
    "postgresql.jar": "libpostgresql-jdbc-java",
    "HikariCP.jar": "libhikaricp-java",
    "slf4j-api.jar": "libslf4j-java",
    "slf4j-simple.jar": "libslf4j-java",
}
# The servers the recipes talk to, by the lab's presets (``tcpecho lab --server-preset NAME``).
SERVER_PRESETS = ("postgres", "redis", "grpc", "http", "mariadb", "http2")


def missing() -> str | None:
    """What this machine lacks for the cookbook, or None."""
    absent = [f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)]
    absent += [f"{path} ({package})" for path, package in GO_MODULES.items() if not path.exists()]
    absent += [f"{jar} ({JAR_PACKAGES[jar.name]})" for jar in JAVA_JARS if not jar.exists()]
    for preset in SERVER_PRESETS:
        lacking = servers.missing(preset)
        if lacking is not None:
            absent.append(f"the {preset} server {lacking}")
    return ", ".join(absent) or None


def build_go_client(workdir: Path) -> Path:
    """Debian's go, with its caches in ``workdir``: nothing outside it is written."""
    binary = workdir / "go-client"
    env = {
        **os.environ,
        "GOCACHE": str(workdir / "go-cache"),
        "GOPATH": str(workdir / "go-path"),
        "GOFLAGS": "-buildvcs=false",
    }
    subprocess.run(["go", "build", "-o", str(binary), str(GO_SOURCE)], check=True, env=env)
    return binary


def build_debian_go_client(source: Path, workdir: Path) -> Path:
    """``source`` built against Debian's packaged Go modules (GOPATH mode, read only), with
    the build cache in ``workdir``: no module proxy is asked, nothing outside is written."""
    binary = workdir / f"go-{source.parent.name}-client"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(DEBIAN_GOPATH),
        "GOCACHE": str(workdir / "go-cache"),
        "GOFLAGS": "-buildvcs=false",
        "GOPROXY": "off",
    }
    subprocess.run(["go", "build", "-o", str(binary), str(source)], check=True, env=env)
    return binary


def build_go_mysql_client(workdir: Path) -> Path:
    return build_debian_go_client(GO_MYSQL_SOURCE, workdir)


def build_go_http2_client(workdir: Path) -> Path:
    return build_debian_go_client(GO_HTTP2_SOURCE, workdir)


class NodeInstallError(RuntimeError):
    """``npm ci`` failed (the registry out of reach, say); the message has npm's words."""


def install_node_client(workdir: Path) -> Path:
    """The Node client and its locked packages (``npm ci``), with npm's cache and logs in
    ``workdir``: the checkout is only read. Its ``client.js``."""
    target = workdir / "node-client"
    target.mkdir()
    for name in NODE_FILES:
        shutil.copyfile(NODE_SOURCE / name, target / name)
    npm = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    env = {
        **os.environ,
        "npm_config_cache": str(workdir / "npm-cache"),
        "npm_config_update_notifier": "false",
    }
    done = subprocess.run(npm, cwd=target, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()][:3]
        raise NodeInstallError(f"npm ci failed ({done.returncode}): {' / '.join(said)}")
    return target / "client.js"


def build_java_client(workdir: Path) -> Path:
    """The Java client compiled into ``workdir`` (PgJDBC loads its socketFactory by name, which
    the source launcher's in-memory classes would not answer to); its classpath, the
    classes' directory and Debian's jars, as ``java -cp`` takes it."""
    classes = workdir / "java-client"
    classpath = os.pathsep.join(map(str, JAVA_JARS))
    javac = ["javac", "-cp", classpath, "-d", str(classes), str(JAVA_SOURCE)]
    subprocess.run(javac, check=True)
    return Path(os.pathsep.join([str(classes), classpath]))


def server_commands(held: contextlib.ExitStack) -> dict[str, str | None]:
    """Each server's command line, by the name recipes give it; ``held`` removes what the
    presets set up when the run is over."""
    commands: dict[str, str | None] = {"echo": None}  # the lab's own: tcpecho server
    for preset in SERVER_PRESETS:
        commands[preset] = held.enter_context(servers.prepared(preset))
    return commands


def profile(
    recipe: Recipe, mode: Mode, clients: dict[str, Path], commands: dict[str, str | None]
) -> Profile:
    """``clients``: the built clients by their name in a recipe's argv (``go_client``);
    ``commands``: the servers' command lines by the name a recipe gives its server."""
    client = [part.format(python=sys.executable, **clients) for part in recipe.client]
    return Profile(
        recipe.name(mode),
        deadlines=recipe.deadlines,
        activities=(Activity.ACTIVE if mode == "busy" else Activity.IDLE,),
        command="exec " + shlex.join([*client, mode, recipe.settings]),
        server_command=commands[recipe.server],
        quiet_s=IDLE_QUIET_S if mode == "idle" else BUSY_QUIET_S.get(recipe.stack, 0.0),
        watch_s=WATCH_S,
    )


def built_clients(recipes: Sequence[Recipe], workdir: Path) -> dict[str, Path]:
    """The compiled or installed clients the chosen recipes name (``{go_client}``, ...)."""
    builders = {
        "go_client": build_go_client,
        "go_mysql_client": build_go_mysql_client,
        "go_http2_client": build_go_http2_client,
        "node_client": install_node_client,
        "java_classpath": build_java_client,
    }
    named = {part[1:-1] for recipe in recipes for part in recipe.client}
    return {name: build(workdir) for name, build in builders.items() if name in named}


def run(recipes: Sequence[Recipe], output: Path, faults: Sequence[Fault] = FAULTS) -> int:
    check_requirements()
    # The programs import cookbook.* wherever the lab starts them.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    with contextlib.ExitStack() as held:
        workdir = Path(held.enter_context(tempfile.TemporaryDirectory(prefix="tcpecho-cookbook-")))
        clients = built_clients(recipes, workdir)
        commands = server_commands(held)
        # The lab runs every profile under every fault; a mode a recipe has under one fault
        # only would be run under the others too, and left out of cookbook.json.
        profiles = [
            profile(recipe, mode, clients, commands)
            for recipe in recipes
            for mode in dict.fromkeys(m for fault in faults for m in recipe.modes(fault))
        ]
        lab_json = workdir / "lab.json"
        timing = FaultTiming()  # the lab's: --path-idle-timeout 15s
        config = LabConfig(
            faults=tuple(LabFault(fault) for fault in faults),
            profiles=tuple(profiles),
            budget=KernelBudget(quick=True),
            json_path=lab_json,
            timing=timing,
        )
        status = run_lab(config)
        if status >= 128:  # a signal stopped the lab, which reported what had finished
            return status
        if not lab_json.exists():
            print(f"cookbook: the lab wrote no JSON (status {status})", file=sys.stderr)
            return 1
        lab = json.loads(lab_json.read_text())
        cookbook = results.build(recipes, lab, faults, timing.path_idle_timeout_s)
    output.write_text(json.dumps(cookbook, indent=2) + "\n")
    print(f"cookbook: wrote {output}", file=sys.stderr)
    found = results.problems(cookbook)
    for problem in found:
        print(f"cookbook: FAIL {problem}", file=sys.stderr)
    if not found:
        print("cookbook: every case measured within its prediction, with its promised verdict")
    return 1 if found else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cookbook.run", description=__doc__)
    parser.add_argument("--json", type=Path, default=Path("out/cookbook.json"))
    parser.add_argument(
        "--stack",
        action="append",
        choices=sorted({recipe.stack for recipe in RECIPES}),
        help="only this stack's recipes (repeatable); all by default",
    )
    parser.add_argument(
        "--fault",
        action="append",
        choices=FAULTS,
        help="only under this fault (repeatable); all by default",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: the lab builds network namespaces")
    absent = missing()
    if absent:
        parser.error(f"missing: {absent} (scripts/system-packages installs them)")
    if not args.json.absolute().parent.is_dir():
        parser.error(f"--json {args.json}: the directory {args.json.parent} does not exist")
    chosen = [recipe for recipe in RECIPES if not args.stack or recipe.stack in args.stack]
    faults = tuple(fault for fault in FAULTS if not args.fault or fault in args.fault)
    try:
        return run(chosen, args.json, faults)
    except NodeInstallError as error:
        print(f"cookbook: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
