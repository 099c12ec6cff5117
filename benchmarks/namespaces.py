"""The namespace benchmark: one look at every network namespace of the host, as
``tcpecho watch --all-namespaces`` takes it, against ``ss -tinp`` run in each namespace.

    python -m benchmarks.namespaces [--namespaces 50] [--connections 200] [--rounds 5]

Root only. Creates the namespaces (``tnsA-bench-PID-N``), each with one process holding
its connections over its own loopback (both ends in the namespace: two sockets listed per
connection), then times, in the same run and in alternating order each round:

- tcpecho: the walk of /proc/*/ns/net, every namespace's connections through sock_diag
  (``connections_by_namespace``, ss's connected states) and every socket's owner (one walk
  of /proc/PID/fd for all namespaces); that is what ``ss -tinp`` shows, for every
  namespace of the host (the caller's and any other's too, where ss reads only those made);
- the same and every socket's options read (``pidfd_getfd``): what the first snapshot of
  an agent costs; after it, only new sockets' options need reading;
- ``ip netns exec NAME ss -tinp`` for each namespace in turn, and ``nsenter --net=...``;
  and ``ss -tin`` without the processes, to show what ``-p`` costs (each ``ss -p`` reads
  every process's descriptors on the host, once per namespace).

Prints the medians, the sockets each listed, the CPU time of tcpecho's look (its share
of one core at a 5 s interval) and of its sock_diag listing alone, user and system. Every
namespace and process is removed at the end, whether the run passed, failed or was
interrupted; the holders also exit when this process dies (their stdin closes).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tcpecho.tcp.diag import CONNECTED_STATES, connections_by_namespace, owners, socket_options
from tcpecho.tcp.namespaces import host_namespaces

PREFIX = "tnsA-bench-"
MAX_NAMESPACES = 200
MAX_CONNECTIONS = 5000  # per namespace: 10,000 sockets, within a 20,000 descriptor limit

# Holds N loopback connections in its namespace, says "ready", and exits when stdin closes.
HOLDER = r"""
import resource, socket, sys
count = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < 2 * count + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * count + 64), hard))
listener = socket.create_server(("127.0.0.1", 0), backlog=128)
held = []
for _ in range(count):
    client = socket.create_connection(listener.getsockname())
    held += [client, listener.accept()[0]]
listener.close()
print("ready", flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True)
class Look:
    seconds: float
    cpu_seconds: float
    sockets: int
    owned: int
    namespaces: int
    # The sock_diag listing alone (connections_by_namespace): user and system CPU seconds.
    listing_user: float = 0.0
    listing_system: float = 0.0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.namespaces")
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--connections", type=int, default=200, help="per namespace")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    if not 1 <= arguments.namespaces <= MAX_NAMESPACES:
        parser.error(f"--namespaces must be 1 to {MAX_NAMESPACES}")
    if not 1 <= arguments.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be 1 to {MAX_CONNECTIONS}")
    if not 1 <= arguments.rounds <= 50:
        parser.error("--rounds must be 1 to 50")
    if os.geteuid() != 0:
        parser.error("needs root: it creates network namespaces and enters them")
    return arguments


@contextmanager
def _held_namespaces(count: int, connections: int, prefix: str = PREFIX) -> Iterator[list[str]]:
    """``count`` namespaces (``PREFIX<pid>-N``), each with a holder of ``connections``
    connections."""
    names = [f"{prefix}{os.getpid()}-{index}" for index in range(count)]
    made: list[str] = []
    holders: list[subprocess.Popen[str]] = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
            holders.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", name, sys.executable, "-c", HOLDER, str(connections)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for holder in holders:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "ready":
                raise SystemExit(f"a holder failed to start (exit status {holder.wait()})")
        yield names
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def _tcpecho(read_options: bool) -> Look:
    started, cpu = time.perf_counter(), time.process_time()
    walk = host_namespaces()
    before = resource.getrusage(resource.RUSAGE_SELF)
    listing = connections_by_namespace(walk.namespaces, states=CONNECTED_STATES)
    after = resource.getrusage(resource.RUSAGE_SELF)
    inodes = {c.inode for listed in listing.by_namespace.values() for c in listed}
    found = owners(inodes)
    if read_options:
        for owner in found.values():
            socket_options(owner)
    return Look(
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu,
        sockets=len(inodes),
        owned=len(found),
        namespaces=len(listing.by_namespace),
        listing_user=after.ru_utime - before.ru_utime,
        listing_system=after.ru_stime - before.ru_stime,
    )


def _ss(names: list[str], enter: Callable[[str], list[str]], flags: str = "-tinp") -> Look:
    started = time.perf_counter()
    sockets = owned = 0
    for name in names:
        shown = subprocess.run(
            [*enter(name), "ss", flags], capture_output=True, text=True, check=True
        ).stdout.splitlines()[1:]
        # A socket's line starts with its state; its tcp_info follows, indented.
        firsts = [line for line in shown if line and not line[0].isspace()]
        sockets += len(firsts)
        owned += sum("users:((" in line for line in firsts)
    return Look(time.perf_counter() - started, 0.0, sockets, owned, len(names))


def _ip_netns_exec(name: str) -> list[str]:
    return ["ip", "netns", "exec", name]


def _nsenter(name: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{name}"]


def _rounds(names: list[str], rounds: int) -> dict[str, list[Look]]:
    ways: dict[str, Callable[[], Look]] = {
        "tcpecho: walk, sock_diag, owners": lambda: _tcpecho(read_options=False),
        "tcpecho, and every socket's options": lambda: _tcpecho(read_options=True),
        "ip netns exec NAME ss -tinp, each": lambda: _ss(names, _ip_netns_exec),
        "nsenter --net=NAME ss -tinp, each": lambda: _ss(names, _nsenter),
        "nsenter --net=NAME ss -tin (no -p), each": lambda: _ss(names, _nsenter, "-tin"),
    }
    looks: dict[str, list[Look]] = {way: [] for way in ways}
    for index in range(rounds):
        order = list(ways) if index % 2 == 0 else list(reversed(ways))
        for way in order:
            looks[way].append(ways[way]())
    return looks


def _report(looks: dict[str, list[Look]], arguments: argparse.Namespace) -> None:
    total = arguments.namespaces * arguments.connections
    print(
        f"{arguments.namespaces} namespaces x {arguments.connections} connections "
        f"({total:,} connections, {2 * total:,} sockets), {arguments.rounds} rounds, medians:"
    )
    for way, measured in looks.items():
        seconds = statistics.median(look.seconds for look in measured)
        last = measured[-1]
        print(
            f"  {way:40} {seconds:7.3f} s   {last.sockets:,} sockets in {last.namespaces} "
            f"namespaces, {last.owned:,} with their process"
        )
    plain = looks["tcpecho: walk, sock_diag, owners"]
    cpu = statistics.median(look.cpu_seconds for look in plain)
    user = statistics.median(look.listing_user for look in plain)
    system = statistics.median(look.listing_system for look in plain)
    print(
        f"its sock_diag listing: {user + system:.3f} s of CPU "
        f"({user:.3f} s user, {system:.3f} s system, in the kernel's dumps)"
    )
    print(
        f"tcpecho's look: {cpu:.3f} s of CPU, {cpu / 5 * 100:.1f} % of one core at a 5 s "
        f"interval; this process's peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


def _remove_abandoned(prefix: str = PREFIX) -> None:
    """Namespaces of a run that was killed (``PREFIX<pid>-N`` of a process that is gone);
    their holders exited when that run's end closed their stdin."""
    folder = Path("/run/netns")
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        owner = name.removeprefix(prefix).split("-")[0]
        if name.startswith(prefix) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> None:
    arguments = _arguments()
    # A TERM ends the run through the cleanup in finally, as an interrupt does.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    _remove_abandoned()
    with _held_namespaces(arguments.namespaces, arguments.connections) as names:
        looks = _rounds(names, arguments.rounds)
    _report(looks, arguments)


if __name__ == "__main__":
    main()
