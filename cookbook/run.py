"""``python -m cookbook.run``: every recipe under ``force-delete`` and ``idle-expiry`` (the
lab's path idle timeout) in the lab, busy and idle, with the quick kernel budget;
``out/cookbook.json``; exit 1 when a case fails its checks.

It builds the Go client and a PostgreSQL cluster in a temporary directory, gives the lab one
program case per recipe, fault and mode (each with its own server program), all in one run,
reads the lab's JSON back and checks it (``results``). Needs root, like the lab, and the
Debian packages in ``scripts/system-packages``; the Python libraries come from the nox
session.
"""

from __future__ import annotations

import argparse
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
from cookbook.servers import postgres
from tcpecho.experiment import Fault as LabFault
from tcpecho.experiment import FaultTiming, Profile
from tcpecho.lab import KernelBudget, LabConfig, check_requirements
from tcpecho.lab import run as run_lab
from tcpecho.model import Activity

ROOT = Path(__file__).resolve().parent.parent
GO_SOURCE = ROOT / "cookbook" / "go" / "client.go"
# An idle client's setup (a handshake, its one request) must be over before the fault.
IDLE_QUIET_S = 1.5
# Go's default keepalive ends an idle connection after 15 + 9 x 15 = 150 s: watched to there;
# longer predictions (the kernel's 2 h keepalive) are reported as not reached.
WATCH_S = 170.0
TOOLS = {"redis-server": "redis-server", "go": "golang-go", "setpriv": "util-linux"}


def missing() -> str | None:
    """What this machine lacks for the cookbook, or None."""
    absent = [f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)]
    try:
        postgres.bindir()
    except postgres.PostgresMissingError as error:
        absent.append(str(error))
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


def server_commands(workdir: Path) -> dict[str, str | None]:
    python = shlex.quote(sys.executable)
    pg_base = workdir / "postgres"
    pg_base.mkdir()
    template = postgres.make_template(pg_base)
    return {
        "echo": None,  # the lab's own: tcpecho server
        "postgres": postgres.server_command(template, pg_base),
        "redis": "exec redis-server --bind {host} --port {port} --save '' --appendonly no "
        f"--protected-mode no --dir {shlex.quote(str(workdir))}",
        "grpc": f"exec {python} -m cookbook.servers.grpc_server --host {{host}} --port {{port}}",
    }


def profile(recipe: Recipe, mode: Mode, go_client: Path, servers: dict[str, str | None]) -> Profile:
    client = [part.format(python=sys.executable, go_client=go_client) for part in recipe.client]
    return Profile(
        recipe.name(mode),
        deadlines=recipe.deadlines,
        activities=(Activity.ACTIVE if mode == "busy" else Activity.IDLE,),
        command="exec " + shlex.join([*client, mode, recipe.settings]),
        server_command=servers[recipe.server],
        quiet_s=IDLE_QUIET_S if mode == "idle" else 0.0,
        watch_s=WATCH_S,
    )


def run(recipes: Sequence[Recipe], output: Path, faults: Sequence[Fault] = FAULTS) -> int:
    check_requirements()
    # The programs import cookbook.* wherever the lab starts them.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    with tempfile.TemporaryDirectory(prefix="tcpecho-cookbook-") as temporary:
        workdir = Path(temporary)
        workdir.chmod(0o755)  # PostgreSQL's user reaches its directories below it
        go_client = build_go_client(workdir)
        servers = server_commands(workdir)
        # The lab runs every profile under every fault; a mode a recipe has under one fault
        # only would be run under the others too, and left out of cookbook.json.
        profiles = [
            profile(recipe, mode, go_client, servers)
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
    return run(chosen, args.json, faults)


if __name__ == "__main__":
    raise SystemExit(main())
