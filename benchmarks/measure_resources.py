"""The measurement behind the pods' resource requests and limits.

    python -m benchmarks.measure_resources [--duration 30s] [--connections 100]

Runs a real ``tcpecho server`` under load and a real ``tcpecho client`` on loopback and
reports their CPU (millicores) and peak memory (VmHWM): the figures the manifests'
``resources`` come from (docs/image-and-cluster.md). Both serve ``/metrics``, scraped every
second, as the pods do (``--no-metrics`` leaves them out).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from tcpecho.cli import Duration, settings_errors
from tcpecho.durations import format_duration
from tcpecho.process import free_port, wait_until_listening
from tcpecho.settings import check_duration


@dataclass(frozen=True)
class ProcessUsage:
    """What one process used over a measured window."""

    cpu_millicores: float
    peak_rss_mib: float


def cpu_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/PID/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def peak_rss_kib(status: str) -> int:
    """VmHWM (the peak resident set) in KiB, from the text of /proc/PID/status."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise ValueError("no VmHWM in /proc/PID/status")


class UsageMeter:
    """CPU and peak memory of a running process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")
        self._start = (time.monotonic(), self._ticks())

    def _ticks(self) -> int:
        return cpu_ticks(Path(f"/proc/{self.pid}/stat").read_text())

    def read(self) -> ProcessUsage:
        started_at, started_ticks = self._start
        elapsed = time.monotonic() - started_at
        cpu_s = (self._ticks() - started_ticks) / self.ticks_per_s
        peak = peak_rss_kib(Path(f"/proc/{self.pid}/status").read_text())
        return ProcessUsage(cpu_millicores=1000 * cpu_s / elapsed, peak_rss_mib=peak / 1024)


async def echo_load(port: int, connections: int, interval_s: float, duration_s: float) -> int:
    """Connections that each send a line every interval and read its echo; echoes completed."""
    stop_at = asyncio.get_running_loop().time() + duration_s
    completed = 0

    async def one(index: int) -> None:
        nonlocal completed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            seq = 0
            while asyncio.get_running_loop().time() < stop_at:
                line = f"{index}.{seq} ping\n".encode()
                writer.write(line)
                await reader.readexactly(len(line))
                completed += 1
                seq += 1
                await asyncio.sleep(interval_s)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(one(i) for i in range(connections)))
    return completed


async def scrape_every_second(ports: list[int], duration_s: float) -> int:
    """GET /metrics from each port once a second for ``duration_s``; the scrapes answered."""
    answered = 0
    stop_at = asyncio.get_running_loop().time() + duration_s
    while asyncio.get_running_loop().time() < stop_at:
        for port in ports:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: measure\r\n\r\n")
            answered += (await reader.read()).startswith(b"HTTP/1.1 200 ")
            writer.close()
        await asyncio.sleep(1.0)
    return answered


async def load_and_scrape(
    port: int, connections: int, interval_s: float, duration_s: float, metrics_ports: list[int]
) -> int:
    """The echo load, with the scrapes beside it; the echoes completed."""
    echoes, _ = await asyncio.gather(
        echo_load(port, connections, interval_s, duration_s),
        scrape_every_second(metrics_ports, duration_s),
    )
    return echoes


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--duration", type=Duration(), default="30s", help="Measured window (at least 1s).")
@click.option(
    "--connections",
    type=click.IntRange(1, 10_000),
    default=100,
    help="Load on the server: concurrent connections.",
)
@click.option(
    "--load-interval",
    type=Duration(),
    default="10ms",
    help="Pause between one connection's requests (100 x 10ms: ~10k echoes/s at most).",
)
@click.option(
    "--client-interval",
    type=Duration(),
    default="10ms",
    help="The measured tcpecho client's --interval (the pods use 5s: this is 500x busier).",
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    help="Run both with --metrics-port and scrape them every second, as the pods do.",
)
def measure_resources(
    duration: float, connections: int, load_interval: float, client_interval: float, metrics: bool
) -> None:
    """Measure a real tcpecho server under load and a real tcpecho client, on loopback."""
    with settings_errors():
        check_duration("duration", duration, minimum=1.0)
        check_duration("load_interval", load_interval, minimum=0.001)
        check_duration("client_interval", client_interval, minimum=0.001)
    port = free_port()
    command = [sys.executable, "-m", "tcpecho"]
    quiet = ["--log-level", "warning", "--log-format", "json"]
    metrics_ports = [free_port(), free_port()] if metrics else []
    server_metrics, client_metrics = (
        (["--metrics-port", str(number)] for number in metrics_ports) if metrics else ([], [])
    )
    server = subprocess.Popen(
        [*command, "server", "--host", "127.0.0.1", "--port", str(port), *quiet, *server_metrics]
    )
    client: subprocess.Popen[bytes] | None = None
    try:
        wait_until_listening("127.0.0.1", port)
        interval = ["--interval", format_duration(client_interval)]
        client = subprocess.Popen(
            [*command, "client", "--server", "127.0.0.1", "--port", str(port), *interval, *quiet,
             *client_metrics]
        )  # fmt: skip
        for metrics_port in metrics_ports:
            wait_until_listening("127.0.0.1", metrics_port)
        server_meter, client_meter = UsageMeter(server.pid), UsageMeter(client.pid)
        try:
            echoes = asyncio.run(
                load_and_scrape(port, connections, load_interval, duration, metrics_ports)
            )
        except OSError as error:
            raise click.ClickException(f"the load lost its server: {error}") from None
        for name, measured in (("server", server), ("client", client)):
            if measured.poll() is not None:  # its /proc entry would be gone or wrong
                raise click.ClickException(f"the {name} exited early ({measured.returncode})")
        server_usage, client_usage = server_meter.read(), client_meter.read()
    finally:
        for started in (client, server):
            if started is not None and started.poll() is None:
                started.terminate()
                started.wait(15)
    click.echo(f"load: {connections} connections, {echoes / duration:.0f} echoes/s")
    click.echo("process  cpu (millicores)  peak RSS (MiB)")
    for name, usage in (("server", server_usage), ("client", client_usage)):
        click.echo(f"{name:<8} {usage.cpu_millicores:>16.0f}  {usage.peak_rss_mib:>14.1f}")


if __name__ == "__main__":
    measure_resources(prog_name="python -m benchmarks.measure_resources")
