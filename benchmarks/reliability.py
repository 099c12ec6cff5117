"""The reliability benchmark (docs/reliability.md): connection storms, non-reading peers,
descriptor exhaustion and a log reader that stops, against ``tcpecho server`` on loopback.

    python -m benchmarks.reliability [--out benchmarks/results] [--only storm|nonreaders|fds|stdout]

- storm: sequential connect/close cycles as fast as one client goes, against --backlog 100
  (what the issue measured), 1024 (the default before) and 4096 (now); then mixed cycles
  (a third close at once, a third after one echo, a third with a reset) at 4096. The rate,
  the connects that took 1 s or more (a dropped SYN: stalls), the kernel's
  TcpExtListenOverflows over the run, and the server's descriptors and RSS after against
  before. Then a paced storm at 1,000 connects per second.
- nonreaders: 50 and 100 peers that send without reading (each up to 32 MiB, for 8 s)
  while a well-behaved client pings; the server's RSS growth and the client's p50/p99,
  against the same client with no non-readers.
- fds: the server under ``prlimit --nofile=256``; 300 connections held: how many lines it
  logs, the CPU it uses at the limit, whether a held connection still echoes, and how soon
  a new one echoes once connections close.
- stdout: connect/echo/close cycles with the server's stdout a pipe nobody reads, against
  stdout on /dev/null.

Every loop is bounded in count and time; everything runs on 127.0.0.1. Writes
``reliability.json`` and ``reliability.md`` to ``--out`` (``--only`` prints and writes
nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tcpecho.process import free_port

SYN_RTO_S = 1.0
STORM_CYCLES = 10_000
STORM_LIMIT_S = 60.0
PACED_RATE = 1000
PACED_SECONDS = 5
NONREADER_COUNTS = (50, 100)
NONREADER_BYTES = 32 * 1024 * 1024
NONREADER_SECONDS = 8.0
FD_LIMIT = 256
FD_CONNECTIONS = 300
STDOUT_CYCLES = 5000


def _tcpecho() -> list[str]:
    found = shutil.which("tcpecho")
    return [found] if found else [sys.executable, "-m", "tcpecho"]


class Server:
    """``tcpecho server`` on a free loopback port, its JSON lines kept (unless stdout is
    given), stopped with SIGTERM."""

    def __init__(self, *args: str, prefix: tuple[str, ...] = (), stdout: int | None = None):
        self.port = free_port()
        argv = [*prefix, *_tcpecho(), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [*argv, *args],
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if stdout is None:
            threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 10
        while not _connects(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the server did not start: {argv}")
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.append(json.loads(line))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == name]

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def serving(*args: str, **kwargs: Any) -> Iterator[Server]:
    server = Server(*args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _listen_overflows() -> int:
    """TcpExtListenOverflows: SYNs dropped because an accept queue was full (this netns)."""
    with open("/proc/net/netstat") as netstat:
        lines = netstat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=False))["ListenOverflows"])
    return 0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _cycle(port: int, mode: int) -> float:
    """One connect/close; mode 0: close, 1: one echo first, 2: reset. The connect's time."""
    with socket.socket() as sock:
        sock.settimeout(5)
        started = time.monotonic()
        sock.connect(("127.0.0.1", port))
        took = time.monotonic() - started
        if mode == 1:
            sock.sendall(b"storm")
            sock.recv(16)
        elif mode == 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return took


# -- storm -------------------------------------------------------------------------------


def storm_case(backlog: int, mixed: bool) -> dict[str, Any]:
    """``mixed``: the three kinds of cycle in turn; otherwise connect and close only, the
    fastest a client goes, as in the issue's loop."""
    with serving("--backlog", str(backlog)) as server:
        for mode in range(300):  # warm up
            _cycle(server.port, mode % 3)
        time.sleep(0.5)
        descriptors, rss = server.descriptors(), server.rss_kib()
        overflows = _listen_overflows()
        took: list[float] = []
        started = time.monotonic()
        while len(took) < STORM_CYCLES and time.monotonic() - started < STORM_LIMIT_S:
            took.append(_cycle(server.port, len(took) % 3 if mixed else 0))
        elapsed = time.monotonic() - started
        overflowed = _listen_overflows() - overflows
        deadline = time.monotonic() + 10
        while server.descriptors() > descriptors and time.monotonic() < deadline:
            time.sleep(0.1)
        return {
            "backlog": backlog,
            "cycles": "mixed: close, echo, reset" if mixed else "connect, close",
            "count": len(took),
            "seconds": round(elapsed, 3),
            "connects_per_s": round(len(took) / elapsed),
            "stalls": sum(1 for t in took if t >= SYN_RTO_S),
            "connect_p99_ms": round(_percentile(took, 0.99) * 1000, 3),
            "connect_max_ms": round(max(took) * 1000, 1),
            "listen_overflows": overflowed,
            "descriptors_after_minus_before": server.descriptors() - descriptors,
            "rss_growth_kib": server.rss_kib() - rss,
        }


def paced_storm() -> dict[str, Any]:
    """PACED_RATE connects per second for PACED_SECONDS, each on schedule."""
    with serving() as server:
        took: list[float] = []
        late = 0
        started = time.monotonic()
        for number in range(PACED_RATE * PACED_SECONDS):
            due = started + number / PACED_RATE
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            elif now - due > 0.1:
                late += 1
            took.append(_cycle(server.port, number % 3))
        elapsed = time.monotonic() - started
        return {
            "rate_asked": PACED_RATE,
            "connects": len(took),
            "connects_per_s": round(len(took) / elapsed),
            "stalls": sum(1 for t in took if t >= SYN_RTO_S),
            "connect_p99_ms": round(_percentile(took, 0.99) * 1000, 3),
            "behind_schedule_over_100ms": late,
        }


def storm() -> dict[str, Any]:
    return {
        "backlog_100_as_in_the_issue": storm_case(100, mixed=False),
        "backlog_1024_before": storm_case(1024, mixed=False),
        "backlog_4096_now": storm_case(4096, mixed=False),
        "backlog_4096_mixed": storm_case(4096, mixed=True),
        "paced": paced_storm(),
    }


# -- non-readers -------------------------------------------------------------------------


def _pings(port: int, seconds: float) -> list[float]:
    latencies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            sock.sendall(b"ping")
            sock.recv(16)
            latencies.append(time.monotonic() - started)
            time.sleep(0.005)
    return latencies


def _push(sockets: list[socket.socket], seconds: float) -> int:
    chunk = b"n" * 65536
    pushed = [0] * len(sockets)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        moved = False
        for index, sock in enumerate(sockets):
            if pushed[index] >= NONREADER_BYTES:
                continue
            try:
                pushed[index] += sock.send(chunk)
                moved = True
            except BlockingIOError:
                pass
        if not moved:
            time.sleep(0.01)
    return sum(pushed)


def nonreaders_case(count: int) -> dict[str, Any]:
    with serving("--log-level", "warning") as server:
        baseline = _pings(server.port, 2.0)
        rss_before = server.rss_kib()
        peers = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.setblocking(False)
            peers.append(sock)
        pushed: list[int] = []
        pusher = threading.Thread(target=lambda: pushed.append(_push(peers, NONREADER_SECONDS)))
        peak = [rss_before]

        def watch() -> None:
            while pusher.is_alive():
                peak[0] = max(peak[0], server.rss_kib())
                time.sleep(0.1)

        pusher.start()
        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(1.0)  # the non-readers fill their buffers first
        during = _pings(server.port, NONREADER_SECONDS - 2.0)
        pusher.join()
        watcher.join()
        for sock in peers:
            sock.close()
        return {
            "nonreaders": count,
            "bytes_each_at_most": NONREADER_BYTES,
            "bytes_the_kernel_took_mib": round(pushed[0] / 2**20, 1),
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_growth_peak_mib": round((peak[0] - rss_before) / 1024, 1),
            "rss_growth_per_nonreader_kib": round((peak[0] - rss_before) / count),
            "polite_p50_ms_alone": round(_percentile(baseline, 0.5) * 1000, 3),
            "polite_p99_ms_alone": round(_percentile(baseline, 0.99) * 1000, 3),
            "polite_p50_ms_during": round(_percentile(during, 0.5) * 1000, 3),
            "polite_p99_ms_during": round(_percentile(during, 0.99) * 1000, 3),
            "polite_echoes_during": len(during),
        }


def nonreaders() -> list[dict[str, Any]]:
    return [nonreaders_case(count) for count in NONREADER_COUNTS]


# -- descriptor exhaustion ---------------------------------------------------------------


def fds() -> dict[str, Any]:
    with serving(prefix=("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}")) as server:
        held = []
        started = time.monotonic()
        for _ in range(FD_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        deadline = time.monotonic() + 5
        while not server.named("descriptors_exhausted") and time.monotonic() < deadline:
            time.sleep(0.01)
        logged_after = time.monotonic() - started
        cpu = server.cpu_s()
        time.sleep(3.0)
        cpu_at_limit = server.cpu_s() - cpu
        held[0].settimeout(5)
        held[0].sendall(b"held")
        held_echoes = held[0].recv(16) == b"held"
        accepted = len(server.named("connection_accepted"))
        for sock in held[1:]:
            sock.close()
        freed = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as fresh:
            fresh.settimeout(5)
            fresh.sendall(b"new")
            fresh_echoes = fresh.recv(16) == b"new"
        echoed_again_after = time.monotonic() - freed
        held[0].close()
        time.sleep(0.5)
        return {
            "max_open_files": FD_LIMIT,
            "connections_opened": FD_CONNECTIONS,
            "accepted_before_the_limit": accepted,
            "descriptors_exhausted_lines": len(server.named("descriptors_exhausted")),
            "descriptors_available_lines": len(server.named("descriptors_available")),
            "logged_within_s": round(logged_after, 3),
            "cpu_s_in_3_s_at_the_limit": round(cpu_at_limit, 3),
            "a_held_connection_echoes": held_echoes,
            "a_new_connection_echoes_after_freeing": fresh_echoes,
            "new_echo_s_after_freeing": round(echoed_again_after, 3),
        }


# -- a stdout nobody reads ---------------------------------------------------------------


def _echo_cycles(port: int) -> dict[str, Any]:
    took = []
    started = time.monotonic()
    for cycle in range(STDOUT_CYCLES):
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"%d" % cycle)
            sock.recv(16)
        took.append(time.monotonic() - began)
    elapsed = time.monotonic() - started
    return {
        "cycles_per_s": round(len(took) / elapsed),
        "cycle_p99_ms": round(_percentile(took, 0.99) * 1000, 3),
        "cycle_max_ms": round(max(took) * 1000, 1),
    }


def stdout() -> dict[str, Any]:
    with open(os.devnull, "w") as null, serving(stdout=null.fileno()) as server:
        to_null = _echo_cycles(server.port)
    read_end, write_end = os.pipe()
    try:
        with serving(stdout=write_end) as server:
            os.close(write_end)
            write_end = -1
            unread = _echo_cycles(server.port)
    finally:
        if write_end != -1:
            os.close(write_end)
        os.close(read_end)
    return {"stdout_dev_null": to_null, "stdout_unread_pipe": unread}


# -- report ------------------------------------------------------------------------------

CASES = {"storm": storm, "nonreaders": nonreaders, "fds": fds, "stdout": stdout}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Reliability benchmark",
        "",
        f"{results['machine']}; `python -m benchmarks.reliability`.",
        "",
    ]
    for name, figures in results["cases"].items():
        lines += [f"## {name}", "", "```json", json.dumps(figures, indent=2), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", choices=sorted(CASES))
    args = parser.parse_args(argv)
    chosen = [args.only] if args.only else list(CASES)
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, Linux {os.uname().release}, Python "
        f"{sys.version.split()[0]}",
        "cases": {},
    }
    for name in chosen:
        print(f"reliability: {name} ...", file=sys.stderr, flush=True)
        results["cases"][name] = CASES[name]()
        print(json.dumps({name: results["cases"][name]}, indent=2), flush=True)
    if not args.only:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "reliability.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "reliability.md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
