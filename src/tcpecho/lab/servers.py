"""The servers the lab runs in its server pod for a user (``tcpecho lab --server-preset
NAME``): PostgreSQL, Redis, MariaDB, a gRPC echo server, an HTTP/1.1 keep-alive server and
an HTTP/2 server, each set up as a user would otherwise set it up by hand, and what each needs.

A preset is prepared once per lab run, in a directory of the run's own (``prepared``), and
gives the shell command line each case's server pod runs (``{host}`` and ``{port}``: the
pod's address and the service's port, as for ``--server-cmd``). The databases get a
throwaway cluster made there once (initdb, mariadb-install-db), copied for each case so
that no two cases share a data directory, authentication that trusts the lab's addresses
(never anything else: the pods are the lab's own namespaces), and their own unprivileged
user (both refuse root). The fault SIGKILLs the server as a force-deleted pod's is, so
PostgreSQL's System V memory goes with an IPC namespace of its own. The directory is
removed when the run ends, and what a killed run left is removed by the next
(``remove_stale``).

Each preset names what it needs by the package that gives it (``missing``): the command
line refuses a preset whose server is not installed, with that name, before anything
starts.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tcpecho.process import alive

# The run's directory: tcpecho-lab-server-<pid>-<random>, under the temporary directory.
DIRECTORY_PREFIX = "tcpecho-lab-server-"


class ServerSetupError(RuntimeError):
    """A preset that could not be set up (initdb failed, ...): the message says what."""


@dataclass(frozen=True)
class Needed:
    """One thing a preset needs: a program (on PATH, or a path pattern), a user, or a Python
    module, and what installs it."""

    kind: str  # "program", "user" or "module"
    name: str
    installed_by: str  # "apt-get install postgresql", "pip install grpcio"

    def present(self) -> bool:
        if self.kind == "user":
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(self.name) is not None
            return False
        if self.kind == "module":
            return importlib.util.find_spec(self.name) is not None
        if "/" in self.name:
            return bool(glob.glob(self.name))
        return shutil.which(self.name) is not None


@dataclass(frozen=True)
class ServerPreset:
    name: str
    summary: str  # one line: what runs, and how it is set up
    needs: tuple[Needed, ...]
    prepare: Callable[[Path], str]  # in the run's directory: the command line for each case

    def missing(self) -> str | None:
        """What this machine lacks for the preset, with what installs it; None: nothing."""
        absent = [need for need in self.needs if not need.present()]
        if not absent:
            return None
        wanted = ", ".join(f"{need.kind} {need.name}" for need in absent)
        installs = "; ".join(dict.fromkeys(need.installed_by for need in absent))
        return f"needs {wanted} ({installs})"


def _apt(package: str) -> str:
    return f"apt-get install {package}"


_UTIL_LINUX = (
    Needed("program", "setpriv", _apt("util-linux")),
    Needed("program", "unshare", _apt("util-linux")),
)
_POSTGRES_BINARIES = "/usr/lib/postgresql/*/bin/postgres"  # Debian's: not on PATH
_MARIADB_SERVER = "mariadbd"


def _as_user(user: str, argv: list[str]) -> list[str]:
    """``argv`` run as ``user``, with its own group (nobody's is nogroup on Debian)."""
    group = pwd.getpwnam(user).pw_gid
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", *argv]


def _postgres_bindir() -> Path:
    """Debian's newest PostgreSQL's binaries: ``/usr/lib/postgresql/<version>/bin``."""

    def version(path: str) -> int:
        number = Path(path).parts[-3]
        return int(number) if number.isdigit() else 0

    return Path(max(glob.glob(_POSTGRES_BINARIES), key=version)).parent


def _owned_directory(path: Path, user: str) -> Path:
    entry = pwd.getpwnam(user)
    path.mkdir(mode=0o700)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _each_case_copy(directory: Path, template: Path) -> str:
    """The start of a case's command line: a copy of ``template`` of its own, in ``$d/data``,
    under ``directory`` (which goes with the run)."""
    return (
        f'd=$(mktemp -d -p {shlex.quote(str(directory))}) && chmod 755 "$d" && '
        f'cp -a {shlex.quote(str(template))} "$d/data" && '
    )


def _postgres(directory: Path) -> str:
    """initdb once (trust for every address: the lab's pods only), a copy for each case, the
    server as the postgres user on {host}:{port}."""
    bindir = _postgres_bindir()
    template = _owned_directory(directory / "template", "postgres")
    initdb = [str(bindir / "initdb"), "-D", str(template), "-U", "postgres", "-A", "trust"]
    initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
    subprocess.run(_as_user("postgres", initdb), check=True, stdout=subprocess.DEVNULL)
    # initdb's trust covers loopback only; the client pod connects from its own address.
    with (template / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 0.0.0.0/0 trust  # tcpecho lab: the lab's pods, no password\n")
    # Dynamic shared memory in the data directory, which goes with the run's directory; the
    # System V segment with an IPC namespace of the server's own, gone with its last process.
    settings = "-c fsync=off -c shared_buffers=16MB -c max_connections=20"
    settings += " -c dynamic_shared_memory_type=mmap"
    server = _as_user("postgres", [str(bindir / "postgres")])
    return (
        _each_case_copy(directory, template) + f"exec unshare --ipc {shlex.join(server)} "
        f'-D "$d/data" -k "$d/data" -c listen_addresses={{host}} -p {{port}} {settings}'
    )


def _redis(directory: Path) -> str:
    """Redis without persistence, as nobody, on {host}:{port}."""
    server = _as_user("nobody", ["redis-server"])
    return (
        f"cd {shlex.quote(str(directory))} && exec {shlex.join(server)} --bind {{host}} "
        "--port {port} --save '' --appendonly no --protected-mode no"
    )


# InnoDB's redo log small (96 MB by default, copied for every case) and no binary log.
_MARIADB_SETTINGS = "--innodb-log-file-size=4M --innodb-buffer-pool-size=16M --skip-log-bin"


def _mariadb(directory: Path) -> str:
    """mariadb-install-db once, a copy for each case, the server as the mysql user on
    {host}:{port}, with no grant tables (any user, no password: the lab's pods only)."""
    template = _owned_directory(directory / "template", "mysql")
    install = ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={template}"]
    install += ["--skip-test-db", "--auth-root-authentication-method=normal"]
    install += _MARIADB_SETTINGS.split()
    subprocess.run(install, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = _as_user("mysql", [_MARIADB_SERVER, "--no-defaults"])
    return (
        _each_case_copy(directory, template)
        + f'exec {shlex.join(server)} --datadir="$d/data" --socket="$d/data/socket" '
        f'--pid-file="$d/data/pid" --bind-address={{host}} --port={{port}} '
        f"--skip-grant-tables --skip-name-resolve {_MARIADB_SETTINGS}"
    )


def _grpc(directory: Path) -> str:
    """tcpecho's gRPC echo server (``tcpecho.lab.grpc_server``), with this Python; it keeps
    nothing on disk, so ``directory`` stays empty."""
    del directory
    python = shlex.quote(sys.executable)
    return f"exec {python} -m tcpecho.lab.grpc_server --host {{host}} --port {{port}}"


def _http(directory: Path) -> str:
    """tcpecho's HTTP/1.1 keep-alive server (``tcpecho.lab.http_server``), with this Python;
    it keeps nothing on disk, so ``directory`` stays empty."""
    del directory
    python = shlex.quote(sys.executable)
    return f"exec {python} -m tcpecho.lab.http_server --host {{host}} --port {{port}}"


def _http2(directory: Path) -> str:
    """tcpecho's HTTP/2 server (``tcpecho.lab.http2_server``, on the ``h2`` library), with
    this Python; it keeps nothing on disk, so ``directory`` stays empty."""
    del directory
    python = shlex.quote(sys.executable)
    return f"exec {python} -m tcpecho.lab.http2_server --host {{host}} --port {{port}}"


PRESETS = {
    preset.name: preset
    for preset in (
        ServerPreset(
            "postgres",
            "PostgreSQL: a throwaway cluster (initdb), trust for the lab's pods, as postgres",
            (
                Needed("program", _POSTGRES_BINARIES, _apt("postgresql")),
                Needed("user", "postgres", _apt("postgresql")),
                *_UTIL_LINUX,
            ),
            _postgres,
        ),
        ServerPreset(
            "redis",
            "Redis: no persistence, no protected mode, as nobody",
            (Needed("program", "redis-server", _apt("redis-server")), *_UTIL_LINUX),
            _redis,
        ),
        ServerPreset(
            "mariadb",
            "MariaDB: a throwaway data directory (mariadb-install-db), no grant tables, as mysql",
            (
                Needed("program", _MARIADB_SERVER, _apt("mariadb-server")),
                Needed("program", "mariadb-install-db", _apt("mariadb-server")),
                Needed("user", "mysql", _apt("mariadb-server")),
                *_UTIL_LINUX,
            ),
            _mariadb,
        ),
        ServerPreset(
            "grpc",
            "gRPC: Echo answers at once, Wait after an hour; accepts pings every second",
            (Needed("module", "grpc", "pip install grpcio"),),
            _grpc,
        ),
        ServerPreset(
            "http",
            "HTTP/1.1 keep-alive: / answers at once, /wait after an hour (a watch that sees "
            "no event)",
            (),
            _http,
        ),
        ServerPreset(
            "http2",
            "HTTP/2 cleartext (h2c, prior knowledge): / answers at once, /wait after an hour; "
            "answers pings",
            (Needed("module", "h2", "pip install h2"),),
            _http2,
        ),
    )
}


def missing(name: str) -> str | None:
    """What preset ``name`` lacks on this machine (``ServerPreset.missing``)."""
    return PRESETS[name].missing()


@contextlib.contextmanager
def prepared(name: str) -> Iterator[str]:
    """Preset ``name`` set up in a directory of this run's own: the command line each case's
    server pod runs. The directory is removed when the run ends, however it ends."""
    directory = Path(tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-"))
    try:
        directory.chmod(0o755)  # the servers' users reach their directories below it
        try:
            command = PRESETS[name].prepare(directory)
        except subprocess.CalledProcessError as error:
            raise ServerSetupError(
                f"setting up the {name} server failed: {shlex.join(map(str, error.cmd))} "
                f"exited with status {error.returncode}"
            ) from None
        except (OSError, KeyError) as error:
            raise ServerSetupError(f"setting up the {name} server failed: {error}") from None
        yield command
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def remove_stale() -> list[Path]:
    """Remove the directories of runs that were killed (their process is gone)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{DIRECTORY_PREFIX}*"):
        pid = path.name.removeprefix(DIRECTORY_PREFIX).split("-")[0]
        if not pid.isdigit() or alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
