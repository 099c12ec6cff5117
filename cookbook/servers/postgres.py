"""PostgreSQL for the cookbook, as a non-root user: one cluster made with initdb (trust
authentication, for the lab only), copied for each case so cases never share a data
directory, and started listening on the server pod's address, leaving no shared memory
behind when the fault kills it."""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import subprocess
from pathlib import Path

USER = "postgres"  # Debian's postgresql package creates it


class PostgresMissingError(RuntimeError):
    """No PostgreSQL server binaries, or no user to run them as."""


def bindir() -> Path:
    """Debian's newest PostgreSQL: ``/usr/lib/postgresql/<version>/bin`` (not on PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if not found:
        raise PostgresMissingError(
            "no /usr/lib/postgresql/*/bin/postgres: apt-get install postgresql"
        )
    try:
        pwd.getpwnam(USER)
    except KeyError:
        raise PostgresMissingError(f"no user {USER!r}: apt-get install postgresql") from None
    return Path(found[-1]).parent


def as_postgres(argv: list[str]) -> list[str]:
    """``argv`` run as the postgres user (PostgreSQL refuses to run as root)."""
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *argv]


def make_template(base: Path) -> Path:
    """An initialized cluster under ``base`` (which the postgres user must reach)."""
    entry = pwd.getpwnam(USER)
    base.chmod(0o755)
    template = base / "template"
    template.mkdir(mode=0o700)
    os.chown(template, entry.pw_uid, entry.pw_gid)
    initdb = [str(bindir() / "initdb"), "-D", str(template), "-U", USER, "-A", "trust"]
    initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
    subprocess.run(as_postgres(initdb), check=True, stdout=subprocess.DEVNULL)
    # initdb's trust covers loopback only; the client pod connects from its own address.
    with (template / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 0.0.0.0/0 trust  # the cookbook's lab: no password\n")
    return template


def server_command(template: Path, base: Path) -> str:
    """The lab's server command: a copy of ``template`` of its own, served on {host}:{port}.

    The copy lives under ``base``, which the cookbook removes when the run is over."""
    postgres = shlex.quote(str(bindir() / "postgres"))
    # Dynamic shared memory in the data directory, which goes with the run's directory.
    settings = "-c fsync=off -c shared_buffers=16MB -c max_connections=20"
    settings += " -c dynamic_shared_memory_type=mmap"
    # The fault SIGKILLs the server, as a force-deleted pod's is: its System V segment would
    # outlive it, so it gets an IPC namespace of its own, gone with its last process.
    return (
        f'd=$(mktemp -d -p {shlex.quote(str(base))}) && chmod 755 "$d" && '
        f'cp -a {shlex.quote(str(template))} "$d/data" && '
        f"exec unshare --ipc {shlex.join(as_postgres([]))} {postgres} "
        f'-D "$d/data" -k "$d/data" -c listen_addresses={{host}} -p {{port}} {settings}'
    )
