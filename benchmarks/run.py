"""The benchmark harness: every server under test, interleaved rounds, medians, ratios, targets.

    python -m benchmarks.run [--rounds 5] [--duration 1.2] [--out benchmarks/results]

Servers are pinned to one core and load clients to another (when there are two), and each
case runs in rounds A B C D E A B C D E ..., so a slow spell of the machine hits every
peer alike; medians and min-max are reported, and ratios only between numbers of this run.
Cases: 1 KiB ping-pong at 1, 10 and 100 connections; bulk 64 KiB at 1 and 4 connections
from two client shapes (one epoll thread, and a writer and a reader thread per connection); 10,000
idle connections held (server RSS per connection, while the server keeps echoing on
others); ``tcpecho bench`` against the C load client; ``--workers 2`` against 1; tcpecho
with ``--metrics-port`` (scraped every second) against without; ``tcpecho --help``'s
start-up. Writes ``bench.json``, ``bench.md`` and ``bench.png``; ``--only CASE`` runs one
case and prints its figures, leaving the results alone (``--only bulk``: both bulk shapes
against Go and the C splice floor alone, with a table of their ratios).

The issue's targets are checked and reported; an unmet target does not fail the run (the
machine's noise is 20-40 %) unless ``--strict``. A failed measurement (a server that does
not start, a load client with errors) does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import peers as p

KIB = 1024
PINGPONG_CONNECTIONS = (1, 10, 100)
BULK_CONNECTIONS = (1, 4)
# The load client's two bulk shapes (benchmarks/echoload.c), each its mode there: one epoll
# thread writing and reading every connection, and a writer and a reader thread per
# connection, blocking (the shape of issue 27, which the epoll client did not show).
BULK_SHAPES = {"bulk": "epoll client", "bulk-threads": "writer + reader threads"}
BULK_SIZE = 64 * KIB
# ``--only bulk``: tcpecho, the peer it is held to and the floor any splicing server has.
BULK_PEERS = ("tcpecho-uvloop", "go", "c-splice")
# tcpecho / Go in bulk, every shape and connection count: level with Go within the noise
# (issue 27; a 1.1x lead is out of reach even for the C splice floor, docs/performance.md).
BULK_GOAL = 0.95
# The accept rate: this many connections at a time, each connecting, echoing this many
# bytes once and closing; against these peers (socat forks a process per connection, and
# the asyncio peers only repeat tcpecho's loop on a slower one).
ACCEPT_CONNECTIONS = 10
ACCEPT_SIZE = 64
ACCEPT_PEERS = ("tcpecho-uvloop", "uvloop-plain", "go", "c-epoll")
IDLE_CONNECTIONS = 10_000
SAMPLE_CONNECTIONS = 100  # opened first, to learn the descriptors a connection costs
HELP_RUNS = 21
# Once a second: 15-30 times as often as a Prometheus usually scrapes, so a cost would show.
SCRAPE_INTERVAL_S = 1.0
METRICS_CONNECTIONS = (10, 100)


UNIT_NAMES = {"pingpong": "request", "bulk": "64KiB", "bulk-threads": "64KiB",
              "connect": "connection"}  # fmt: skip


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": values,
    }


class Harness:
    def __init__(self, args: argparse.Namespace, tools: p.Tools, notes: list[str]) -> None:
        self.args = args
        self.tools = tools
        self.notes = notes
        self.peers = p.peers(tools)
        cores = os.cpu_count() or 1
        # Core 1 for the servers, core 0 for the load: the harness itself mostly sleeps.
        self.server_cpu: int | None = 1 if cores >= 2 else None
        self.client_cpu: int | None = 0 if cores >= 2 else None
        self.log_dir = args.build / "logs"

    # -- throughput ----------------------------------------------------------------------

    def throughput(self) -> dict[str, Any]:
        cases: list[tuple[str, str, int, int]] = [
            (f"pingpong-1KiB-c{c}", "pingpong", c, KIB) for c in PINGPONG_CONNECTIONS
        ]
        cases += bulk_cases()
        with p.servers(self.peers, self.server_cpu, self.log_dir) as running:
            return self._cases(running, cases)

    def bulk(self) -> dict[str, Any]:
        """The bulk cases alone (``--only bulk``), both client shapes, against Go and the C
        splice floor: the throughput step's bulk figures in a fraction of its time."""
        chosen = [peer for peer in self.peers if peer.name in BULK_PEERS]
        with p.servers(chosen, self.server_cpu, self.log_dir / "bulk") as running:
            return self._cases(running, bulk_cases())

    def _cases(
        self, running: dict[str, p.Server], cases: list[tuple[str, str, int, int]]
    ) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for case, mode, connections, size in cases:
            rounds = self._rounds(case, running, mode, connections, size)
            results[case] = self._case(mode, rounds)
        return results

    def _rounds(
        self, case: str, running: dict[str, p.Server], mode: str, connections: int, size: int
    ) -> dict[str, list[p.LoadResult]]:
        """``case`` measured on every running server in interleaved rounds (A B C, A B C,
        ...), so a slow spell of the machine hits every peer alike."""
        rounds: dict[str, list[p.LoadResult]] = {name: [] for name in running}
        for number in range(self.args.rounds):
            for name, server in running.items():
                result = p.echoload(
                    self.tools, self.client_cpu, server.port, mode, connections, size,
                    self.args.warmup, self.args.duration, server,
                )  # fmt: skip
                if result.errors:
                    raise RuntimeError(f"{case} {name}: {result.errors} errors")
                rounds[name].append(result)
            log(f"{case} round {number + 1}/{self.args.rounds}: " + ", ".join(
                f"{name} {r[-1].per_second:,.0f}" for name, r in rounds.items()
            ))  # fmt: skip
        return rounds

    def _case(self, mode: str, rounds: dict[str, list[p.LoadResult]]) -> dict[str, Any]:
        peers: dict[str, Any] = {}
        for name, runs in rounds.items():
            entry = summary([run.per_second for run in runs])
            per_request = [run for run in runs if run.requests]
            if per_request:
                # Per request (ping-pong), per 64 KiB echoed (bulk) or per connection.
                unit = BULK_SIZE if mode in BULK_SHAPES else 1
                entry[f"server_cpu_us_per_{UNIT_NAMES[mode]}"] = {
                    "user": statistics.median(
                        r.cpu_user_s / r.requests * unit * 1e6 for r in per_request
                    ),
                    "system": statistics.median(
                        r.cpu_system_s / r.requests * unit * 1e6 for r in per_request
                    ),
                }
            if mode in BULK_SHAPES:
                entry["busy"] = busy(runs)
            peers[name] = entry
        reference = peers["tcpecho-uvloop"]["median"]
        for entry in peers.values():
            entry["ratio_to_tcpecho"] = entry["median"] / reference if reference else None
        units = {"pingpong": "requests/s", "connect": "connections/s"}
        return {"unit": units.get(mode, "bytes/s"), "peers": peers}

    # -- accepted connections per second ------------------------------------------------------

    def accepts(self) -> dict[str, Any]:
        """Connections per second: connect, one echo, close, ACCEPT_CONNECTIONS at a time;
        tcpecho logs connection_accepted and connection_closed for each (to a file)."""
        chosen = [peer for peer in self.peers if peer.name in ACCEPT_PEERS]
        with p.servers(chosen, self.server_cpu, self.log_dir / "accepts") as running:
            rounds = self._rounds("accepts", running, "connect", ACCEPT_CONNECTIONS, ACCEPT_SIZE)
        return self._case("connect", rounds)

    # -- tcpecho bench against the C client ---------------------------------------------------

    def clients(self) -> dict[str, Any]:
        tcpecho = self.peers[0]
        results: dict[str, Any] = {}
        with p.servers([tcpecho], self.server_cpu, self.log_dir / "clients") as running:
            server = running[tcpecho.name]
            for connections in (10, 100):
                c_client: list[float] = []
                python_client: list[float] = []
                for _ in range(self.args.rounds):
                    c_run = p.echoload(
                        self.tools, self.client_cpu, server.port, "pingpong", connections, KIB,
                        self.args.warmup, self.args.duration,
                    )  # fmt: skip
                    ours = p.tcpecho_bench(
                        self.tools, self.client_cpu, server.port, connections, KIB,
                        self.args.warmup, self.args.duration,
                    )  # fmt: skip
                    if c_run.errors or ours.errors:
                        raise RuntimeError(f"client comparison: errors {c_run} {ours}")
                    c_client.append(c_run.per_second)
                    python_client.append(ours.per_second)
                case: dict[str, Any] = {
                    "c-echoload": summary(c_client),
                    "tcpecho-bench": summary(python_client),
                }
                case["ratio"] = statistics.median(python_client) / statistics.median(c_client)
                results[f"pingpong-1KiB-c{connections}"] = case
                log(f"clients c={connections}: tcpecho bench / C = {case['ratio']:.2f}")
        return results

    # -- 10,000 idle connections ----------------------------------------------------------

    def idle(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for peer in self.peers:
            if peer.skips_idle:
                results[peer.name] = {"skipped": peer.skips_idle}
                continue
            with p.servers([peer], self.server_cpu, self.log_dir / "idle") as running:
                results[peer.name] = self._hold_idle(running[peer.name])
            log(f"idle {peer.name}: {results[peer.name]}")
        return results

    def _hold_idle(self, server: p.Server) -> dict[str, Any]:
        time.sleep(0.3)
        base_rss, base_files = server.rss_kib(), server.open_files()
        held: list[socket.socket] = []
        target = IDLE_CONNECTIONS
        note = None
        try:
            try:
                self._connect(server, held, SAMPLE_CONNECTIONS, base_files)
                # A server that needs more than one descriptor per connection (Go's io.Copy
                # splices through a pipe: three) may not fit 10,000 under its limit, which
                # cannot be raised here: hold as many as fit and say so.
                per_connection = (server.open_files() - base_files) / SAMPLE_CONNECTIONS
                # 5 % spare: descriptors come and go while connections are accepted.
                room = int((server.open_files_limit() * 0.95 - base_files) / per_connection)
                if room < IDLE_CONNECTIONS:
                    target = room
                    note = (
                        f"{per_connection:g} descriptors per connection: "
                        f"{room} fit under its limit of {server.open_files_limit()}"
                    )
                self._connect(server, held, target, base_files, per_connection)
            except (OSError, RuntimeError) as error:
                return {"error": f"after {len(held)} connections: {error}"}
            time.sleep(0.5)
            rss = server.rss_kib()
            files = server.open_files() - base_files
            # The server keeps echoing on other connections while it holds these.
            load = p.echoload(
                self.tools, self.client_cpu, server.port, "pingpong", 10, KIB, 0.2,
                self.args.duration,
            )  # fmt: skip
            sampled = held[:: max(1, len(held) // 100)][:100]
            alive = sum(_echoes(sock) for sock in sampled)
            return {
                "connections": len(held),
                "note": note,
                "rss_before_kib": base_rss,
                "rss_held_kib": rss,
                "rss_per_connection_kib": (rss - base_rss) / len(held),
                "descriptors_per_connection": files / len(held),
                "echo_while_held_per_second": load.per_second,
                "echo_while_held_errors": load.errors,
                "sampled_idle_connections_echoing": f"{alive}/{len(sampled)}",
            }
        finally:
            for sock in held:
                sock.close()

    @staticmethod
    def _connect(
        server: p.Server,
        held: list[socket.socket],
        total: int,
        base: int,
        descriptors: float = 1.0,
    ) -> None:
        """Open connections until ``total`` are held and the server has accepted them all."""
        while len(held) < total:
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        # Accepted means descriptors in the server: wait until their count reaches the
        # connections and stays put (a server may open more than one per connection, late).
        deadline = time.monotonic() + 30
        counts: list[int] = []
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.peer.name} exited with {server.proc.returncode}")
            counts.append(server.open_files() - base)
            if counts[-1] >= int(total * descriptors) and counts[-4:] == [counts[-1]] * 4:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{counts[-1]} descriptors for {total} connections")
            time.sleep(0.1)

    # -- --workers --------------------------------------------------------------------------

    def workers(self) -> dict[str, Any]:
        """--workers 2 against 1 at 100 connections, unpinned: the kernel places them."""
        tcpecho = self.peers[0]
        per_workers: dict[int, list[float]] = {1: [], 2: []}
        try:
            with contextlib.ExitStack() as stack:
                servers = {}
                for count in per_workers:
                    running = stack.enter_context(
                        p.servers(
                            [tcpecho],
                            None,
                            self.log_dir / f"workers-{count}",
                            "--workers",
                            str(count),
                        )
                    )
                    servers[count] = running[tcpecho.name]
                # Three rounds: this case shows whether workers help here, not by how much.
                for _ in range(min(3, self.args.rounds)):
                    for count, server in servers.items():
                        result = p.echoload(
                            self.tools, None, server.port, "pingpong", 100, KIB,
                            self.args.warmup, self.args.duration,
                        )  # fmt: skip
                        per_workers[count].append(result.per_second)
        except RuntimeError as error:
            return {"error": str(error)}
        results: dict[str, Any] = {f"workers-{k}": summary(v) for k, v in per_workers.items()}
        results["ratio"] = statistics.median(per_workers[2]) / statistics.median(per_workers[1])
        log(f"workers 2 / 1 = {results['ratio']:.2f}")
        return results

    # -- --metrics-port ---------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """tcpecho with --metrics-port, scraped every second, against tcpecho without: 1 KiB
        ping-pong at 10 and 100 connections, both servers on the server core, interleaved."""
        tcpecho = self.peers[0]
        metrics_port = p.free_port()
        results: dict[str, Any] = {"scrape_interval_s": SCRAPE_INTERVAL_S}
        with contextlib.ExitStack() as stack:
            servers = {
                "without": stack.enter_context(
                    p.servers([tcpecho], self.server_cpu, self.log_dir / "metrics-without")
                )[tcpecho.name],
                "with": stack.enter_context(
                    p.servers(
                        [tcpecho],
                        self.server_cpu,
                        self.log_dir / "metrics-with",
                        "--metrics-port",
                        str(metrics_port),
                    )
                )[tcpecho.name],
            }
            for connections in METRICS_CONNECTIONS:
                results[f"pingpong-1KiB-c{connections}"] = self._metrics_case(
                    servers, metrics_port, connections
                )
        return results

    def _metrics_case(
        self, servers: dict[str, p.Server], metrics_port: int, connections: int
    ) -> dict[str, Any]:
        rounds: dict[str, list[p.LoadResult]] = {name: [] for name in servers}
        scrapes: list[float] = []
        for number in range(self.args.rounds):
            for name, server in servers.items():
                with scraping(metrics_port if name == "with" else None) as scraped:
                    result = p.echoload(
                        self.tools, self.client_cpu, server.port, "pingpong", connections, KIB,
                        self.args.warmup, self.args.duration, server,
                    )  # fmt: skip
                if result.errors:
                    raise RuntimeError(f"metrics {name} c={connections}: {result.errors} errors")
                rounds[name].append(result)
                scrapes += scraped
            log(f"metrics c={connections} round {number + 1}/{self.args.rounds}: " + ", ".join(
                f"{name} {r[-1].per_second:,.0f}" for name, r in rounds.items()
            ))  # fmt: skip
        case: dict[str, Any] = {}
        for name, runs in rounds.items():
            case[name] = summary([run.per_second for run in runs])
            case[name]["server_cpu_us_per_request"] = statistics.median(
                (run.cpu_user_s + run.cpu_system_s) / run.requests * 1e6 for run in runs
            )
        case["ratio"] = case["with"]["median"] / case["without"]["median"]
        case["scrapes"] = len(scrapes)
        case["scrape_ms"] = summary([seconds * 1000 for seconds in scrapes])
        log(
            f"metrics c={connections}: with / without = {case['ratio']:.3f}, {len(scrapes)} "
            f"scrapes under load, {case['scrape_ms']['median']:.2f} ms each (median)"
        )
        return case

    # -- start-up ---------------------------------------------------------------------------

    def help_time(self) -> dict[str, Any]:
        times = []
        for _ in range(HELP_RUNS):
            started = time.perf_counter()
            subprocess.run([self.tools.tcpecho, "--help"], stdout=subprocess.DEVNULL, check=True)
            times.append((time.perf_counter() - started) * 1000)
        log(f"tcpecho --help: median {statistics.median(times):.0f} ms")
        return summary(times)


@contextlib.contextmanager
def scraping(port: int | None) -> Iterator[list[float]]:
    """GET /metrics on ``port`` every SCRAPE_INTERVAL_S while the block runs (nothing when
    None); the scrapes' durations in seconds. A scrape that is not a 200 fails the run."""
    durations: list[float] = []
    if port is None:
        yield durations
        return
    stop = threading.Event()
    failures: list[str] = []

    def scrape_until_stopped() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                    answer = b"".join(iter(lambda: sock.recv(65536), b""))
            except OSError as error:
                failures.append(str(error))
                return
            if not answer.startswith(b"HTTP/1.1 200 "):
                failures.append(answer[:80].decode(errors="replace"))
                return
            durations.append(time.perf_counter() - started)
            stop.wait(SCRAPE_INTERVAL_S)

    scraper = threading.Thread(target=scrape_until_stopped, name="scraper", daemon=True)
    scraper.start()
    try:
        yield durations
    finally:
        stop.set()
        scraper.join(10)
    if failures:
        raise RuntimeError(f"scraping /metrics failed: {failures[0]}")


def _echoes(sock: socket.socket) -> int:
    try:
        sock.settimeout(5)
        sock.sendall(b"!")
        return 1 if sock.recv(1) == b"!" else 0
    except OSError:
        return 0


RATIO_PEERS = {"go": "Go io.Copy", "socat": "socat", "uvloop-plain": "plain uvloop",
               "c-epoll": "C floor", "c-splice": "C splice floor"}  # fmt: skip


def cpu_per_request(entry: dict[str, Any]) -> float:
    """A peer's server CPU (user and system) per request, in us."""
    cpu = entry["server_cpu_us_per_request"]
    return float(cpu["user"] + cpu["system"])


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """tcpecho against each peer, same run: rates as tcpecho / peer (above 1: tcpecho is
    faster), CPU per request as tcpecho / peer (below 1: tcpecho is cheaper)."""
    throughput = results["throughput"]
    rows: list[dict[str, Any]] = []

    def row(what: str, peers: dict[str, Any], value: Callable[[dict[str, Any]], float]) -> None:
        ours = value(peers["tcpecho-uvloop"])
        versus = {
            name: ours / value(peers[name]) if name in peers and value(peers[name]) else None
            for name in RATIO_PEERS
        }
        rows.append({"what": what, "tcpecho": ours, "versus": versus})

    def rate(entry: dict[str, Any]) -> float:
        return float(entry["median"])

    for connections in (10, 100):
        case = throughput[f"pingpong-1KiB-c{connections}"]["peers"]
        row(f"1 KiB ping-pong, {connections} conns: requests/s", case, rate)
    for case, label in bulk_labels():
        row(f"{label}: bytes/s", throughput[case]["peers"], rate)
    if "accepts" in results:
        row("connections accepted/s (connect, 64 B echo, close)", results["accepts"]["peers"],
            rate)  # fmt: skip
    for connections in (10, 100):
        case = throughput[f"pingpong-1KiB-c{connections}"]["peers"]
        row(f"server CPU per request, {connections} conns (lower: tcpecho cheaper)", case,
            cpu_per_request)  # fmt: skip
    return rows


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issues with its measured figure."""
    found: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, goal: float, higher_is_better: bool) -> None:
        met = measured is not None and (measured >= goal if higher_is_better else measured <= goal)
        found.append({"target": name, "measured": measured, "goal": goal, "met": met})

    throughput = results["throughput"]
    for connections in (10, 100):
        peers = throughput[f"pingpong-1KiB-c{connections}"]["peers"]
        ours = peers["tcpecho-uvloop"]
        if "go" in peers:
            add(f"ping-pong c={connections}: tcpecho / Go", 1 / peers["go"]["ratio_to_tcpecho"],
                1.0, True)  # fmt: skip
        if "socat" in peers:
            add(f"ping-pong c={connections}: tcpecho / socat",
                1 / peers["socat"]["ratio_to_tcpecho"], 2.5, True)  # fmt: skip
        add(f"ping-pong c={connections}: server user CPU us/request",
            ours["server_cpu_us_per_request"]["user"], 1.0, False)  # fmt: skip
        add(f"ping-pong c={connections}: server CPU per request, tcpecho / C floor",
            cpu_per_request(ours) / cpu_per_request(peers["c-epoll"]), 1.15, False)  # fmt: skip
    for case, label in bulk_labels():
        bulk = throughput[case]["peers"]
        if "go" in bulk:
            add(f"{label}: tcpecho / Go", 1 / bulk["go"]["ratio_to_tcpecho"], BULK_GOAL, True)
    idle = results["idle"]["tcpecho-uvloop"]
    add("10,000 idle: server RSS KiB per connection", idle.get("rss_per_connection_kib"), 4.0,
        False)  # fmt: skip
    add("10,000 idle: echo errors on other connections", idle.get("echo_while_held_errors"),
        0, False)  # fmt: skip
    for case, comparison in results["clients"].items():
        add(f"tcpecho bench / C client, {case}", comparison["ratio"], 0.9, True)
    add("tcpecho --help ms (median)", results["help_ms"]["median"], 150.0, False)
    for case, comparison in results.get("metrics", {}).items():
        if isinstance(comparison, dict):
            add(f"--metrics-port / without, {case}", comparison["ratio"], 0.95, True)
    return found


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": version("uvloop"),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def busy(runs: list[p.LoadResult]) -> dict[str, float]:
    """How much of the window the server and the load client ran (each pinned to a core of
    its own: 1.0 is the core used up), medians over the rounds. A client near 1.0 with a
    server well below it means the client core, not the server, set the rate."""
    timed = [run for run in runs if run.seconds > 0]
    if not timed:
        return {}
    return {
        "server": statistics.median((r.cpu_user_s + r.cpu_system_s) / r.seconds for r in timed),
        "client": statistics.median(r.client_cpu_s / r.seconds for r in timed),
    }


def bulk_cases() -> list[tuple[str, str, int, int]]:
    """Every bulk case: its name, the load client's mode, connections and write size."""
    return [
        (f"{shape}-64KiB-c{connections}", shape, connections, BULK_SIZE)
        for shape in BULK_SHAPES
        for connections in BULK_CONNECTIONS
    ]


def bulk_labels() -> list[tuple[str, str]]:
    """Every bulk case with its label in tables: the shape and the connections."""
    return [
        (case, f"bulk 64 KiB, {BULK_SHAPES[shape]}, {connections} conn(s)")
        for case, shape, connections, _ in bulk_cases()
    ]


def bulk_markdown(cases: dict[str, Any], load: list[list[float]]) -> str:
    """``--only bulk``'s table: each case's medians (min-max), tcpecho / Go and / the C
    splice floor, the server CPU per 64 KiB echoed, and how busy the server's and the
    client's cores were, with the load average around it."""
    lines = [
        "| case | tcpecho MB/s | Go MB/s | C splice MB/s | tcpecho / Go | tcpecho / C splice "
        "| server CPU us per 64 KiB: tcpecho, Go, C splice | core busy, server / client: "
        "tcpecho, Go, C splice |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, label in bulk_labels():
        peers = cases[case]["peers"]
        cells = [label.removeprefix("bulk 64 KiB, ")]
        cells += [_rate_only(peers.get(name)) for name in BULK_PEERS]
        ours = peers["tcpecho-uvloop"]["median"]
        for name in ("go", "c-splice"):
            cells.append(f"{ours / peers[name]['median']:.2f}x" if name in peers else "-")
        cpu = [peers[name].get("server_cpu_us_per_64KiB") for name in BULK_PEERS if name in peers]
        cells.append(", ".join(f"{c['user'] + c['system']:.1f}" for c in cpu if c))
        loads = [peers[name].get("busy") for name in BULK_PEERS if name in peers]
        cells.append(", ".join(f"{b['server']:.2f} / {b['client']:.2f}" for b in loads if b))
        lines.append("| " + " | ".join(cells) + " |")
    before, after = load
    lines.append(f"\nload average {before[0]:.2f} before, {after[0]:.2f} after (1 min)")
    return "\n".join(lines) + "\n"


def _rate_only(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['median'] / 1e6:,.0f} ({entry['min'] / 1e6:,.0f}-{entry['max'] / 1e6:,.0f})"


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def raise_file_limits() -> None:
    """10,000 connections in the harness, and three descriptors each in the Go peer.

    Root may raise the hard limit, except in sandboxes that forbid it (as here); then the
    soft limit goes up to the hard one, and the idle case says what fitted.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536
    if os.geteuid() == 0 and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def markdown(results: dict[str, Any]) -> str:
    """The docs' tables: tcpecho against its peers, every server's figures (medians,
    min-max, ratio to tcpecho), and the targets."""
    lines = ["| tcpecho (uvloop) | measured | " + " | ".join(
        f"/ {label}" for label in RATIO_PEERS.values()) + " |",
        "|---|---:|" + "---:|" * len(RATIO_PEERS)]  # fmt: skip
    for row in results["ratios"]:
        cells = [row["what"], _figure(row["what"], row["tcpecho"])]
        cells += ["-" if v is None else f"{v:.2f}x" for v in row["versus"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_servers_table(results), "", "| target | goal | measured | met |",
              "|---|---:|---:|:---:|"]  # fmt: skip
    for target in results["targets"]:
        measured = target["measured"]
        shown = "-" if measured is None else f"{measured:.2f}"
        lines.append(
            f"| {target['target']} | {target['goal']:g} | {shown} | "
            f"{'yes' if target['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _figure(what: str, value: float) -> str:
    if "bytes/s" in what:
        return f"{value / 1e6:,.0f} MB/s"
    if "CPU" in what:
        return f"{value:.2f} us"
    return f"{value / 1000:,.1f}k/s"


def _servers_table(results: dict[str, Any]) -> list[str]:
    """Every server: medians (min-max) and ratios to tcpecho."""
    throughput = results["throughput"]
    names = list(next(iter(throughput.values()))["peers"])
    labels = results["labels"]
    accepts = results.get("accepts", {}).get("peers", {})
    lines = [
        "| server | " + " | ".join(
            ["1 KiB ping-pong, 1 conn", "10 conns", "100 conns",
             "bulk 64 KiB, epoll client, 1 conn", "4 conns", "bulk, threads client, 1 conn",
             "4 conns", "accepts/s",
             "user / sys CPU per request (100 conns)", "RSS per idle conn"]
        ) + " |",
        "|---|" + "---:|" * 10,
    ]  # fmt: skip
    for name in names:
        cells = [labels[name]]
        for case in [f"pingpong-1KiB-c{c}" for c in PINGPONG_CONNECTIONS]:
            cells.append(_rate(throughput[case]["peers"][name], 1000, "k"))
        for case, _ in bulk_labels():
            cells.append(_rate(throughput[case]["peers"][name], 1e6, " MB/s"))
        cells.append(_rate(accepts[name], 1000, "k") if name in accepts else "-")
        cpu = throughput["pingpong-1KiB-c100"]["peers"][name]["server_cpu_us_per_request"]
        cells.append(f"{cpu['user']:.2f} / {cpu['system']:.2f} us")
        idle = results["idle"].get(name, {})
        if "rss_per_connection_kib" in idle:
            cells.append(f"{idle['rss_per_connection_kib']:.2f} KiB")
        else:
            cells.append(idle.get("skipped") or idle.get("error") or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rate(entry: dict[str, Any], scale: float, unit: str) -> str:
    return (
        f"{entry['median'] / scale:,.1f}{unit} ({entry['min'] / scale:,.0f}-"
        f"{entry['max'] / scale:,.0f}) {entry['ratio_to_tcpecho']:.2f}x"
    )


# Each case: its key in the results, and the Harness method that measures it.
STEPS = {
    "help_ms": "help_time",
    "throughput": "throughput",
    "bulk": "bulk",
    "accepts": "accepts",
    "clients": "clients",
    "idle": "idle",
    "workers": "workers",
    "metrics": "metrics",
}


def run_one(harness: Harness, step: str) -> None:
    """``--only STEP``: its figures as JSON with the machine and the load average around
    them, and for ``bulk`` its table; the results files are left as they are."""
    before = load_average()
    figures = getattr(harness, STEPS[step])()
    load = [before, load_average()]
    print(json.dumps({step: figures, "machine": machine(), "load_average": load}, indent=2))
    if step == "bulk":
        print(bulk_markdown(figures, load))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1.2, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each")
    parser.add_argument("--out", type=Path, default=p.ROOT / "benchmarks" / "results")
    parser.add_argument("--build", type=Path, default=p.ROOT / "out" / "bench")
    parser.add_argument("--strict", action="store_true", help="fail when a target is not met")
    parser.add_argument(
        "--only",
        choices=STEPS,
        help="run this case alone and print its figures; the results are left as they are",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    raise_file_limits()
    tools, notes = p.build_tools(args.build, log)
    for note in notes:
        log(note)
    harness = Harness(args, tools, notes)
    if args.only:
        run_one(harness, args.only)
        return 0
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_average(),
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "server_cpu": harness.server_cpu,
            "client_cpu": harness.client_cpu,
            "load_client": "benchmarks/echoload.c (C, epoll), unless said otherwise",
        },
        "labels": {peer.name: peer.label for peer in harness.peers},
        "notes": notes,
    }
    log(f"machine {results['machine']}, load average {results['load_average_before']}")
    # The bulk step's cases are in the throughput step's, against every peer.
    for key, method in ((key, method) for key, method in STEPS.items() if key != "bulk"):
        step: Callable[[], Any] = getattr(harness, method)
        results[key] = step()
    results["load_average_after"] = load_average()
    results["ratios"] = ratios(results)
    results["targets"] = targets(results)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "bench.md").write_text(table)
    print(table)
    from benchmarks.chart import draw

    draw(results, args.out / "bench.png")
    log(f"wrote {args.out}/bench.json, bench.md and bench.png in {results['elapsed_s']} s")
    unmet = [t["target"] for t in results["targets"] if not t["met"]]
    if unmet:
        log("targets not met: " + "; ".join(unmet))
    return 1 if unmet and args.strict else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers and clients were stopped on the way out
        sys.exit(130)
