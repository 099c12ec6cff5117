"""``tcpecho bench``: counts that add up, every error counted, JSON shape, usage errors, bounds.

Correctness only, on real loopback sockets: no assertion here depends on how fast the
machine is (the performance targets live in ``nox -s bench``). In-process runs use the
test's loop, so they cover uvloop and asyncio; the command line runs as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tcpecho.bench.histogram import (
    BUCKET_COUNT,
    LatencyHistogram,
    bucket_bounds,
    bucket_index,
)
from tcpecho.bench.load import (
    BulkConnection,
    LoadShare,
    PingPongConnection,
    ProcessResult,
    RunState,
    bulk_chunk,
    drive,
    payloads_for,
)
from tcpecho.bench.report import BenchReport
from tcpecho.bench.runner import BenchConfig, LocalControl
from tcpecho.sizes import parse_size
from tests.conftest import RunningServer
from tests.support import free_port, tcpecho_executable

StartServer = Callable[..., RunningServer]

# -- the histogram ---------------------------------------------------------------------------


def test_buckets_tile_every_value_without_gaps() -> None:
    previous_high = -1
    for index in range(BUCKET_COUNT):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        assert bucket_index(low) == index
        assert bucket_index(high) == index
        previous_high = high
    assert previous_high == 2**64 - 1


def test_bucket_width_keeps_values_within_one_percent() -> None:
    for index in range(256, BUCKET_COUNT, 97):
        low, high = bucket_bounds(index)
        assert (high - low + 1) / low <= 1 / 128


def test_percentiles_match_sorted_values_within_the_bucket_precision() -> None:
    rng = random.Random(5)
    values = [int(rng.lognormvariate(11, 1.2)) for _ in range(20_000)]
    histogram = LatencyHistogram.empty()
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for quantile in (0.5, 0.9, 0.99, 0.999, 1.0):
        exact = ordered[max(1, math.ceil(quantile * len(values))) - 1]
        reported = histogram.value_at(quantile)
        assert exact <= reported <= exact * (1 + 1 / 128)
    assert histogram.minimum == ordered[0]
    assert histogram.maximum == ordered[-1]
    assert histogram.mean == pytest.approx(sum(values) / len(values))


def test_merging_histograms_is_recording_into_one() -> None:
    rng = random.Random(7)
    one, two, both = (LatencyHistogram.empty() for _ in range(3))
    for target in (one, two):
        for _ in range(1000):
            value = rng.randrange(10**3, 10**8)
            target.record(value)
            both.record(value)
    one.merge(two)
    assert one == both


def test_bare_counts_give_the_same_percentiles_and_bounded_extremes() -> None:
    rng = random.Random(9)
    exact = LatencyHistogram.empty()
    for _ in range(5000):
        exact.record(rng.randrange(10**4, 10**7))
    approximate = LatencyHistogram.from_counts(list(exact.counts))
    assert approximate.total == exact.total
    for quantile in (0.5, 0.99, 0.999):
        assert approximate.value_at(quantile) >= exact.value_at(quantile)
        assert approximate.value_at(quantile) <= exact.value_at(quantile) * (1 + 1 / 128)
    assert approximate.minimum <= exact.minimum < approximate.minimum * (1 + 1 / 128)
    assert approximate.maximum >= exact.maximum > approximate.maximum / (1 + 1 / 128)
    assert approximate.mean == pytest.approx(exact.mean, rel=1 / 128)


def test_an_empty_histogram_has_no_percentiles() -> None:
    with pytest.raises(ValueError, match="no values"):
        LatencyHistogram.empty().value_at(0.5)


# -- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"), [("1024", 1024), ("1KiB", 1024), ("64k", 65536), ("1MiB", 1048576)]
)
def test_sizes_are_bytes_or_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5KiB", "1KB", "-1", "KiB", "1 GiB"])
def test_other_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


# -- in-process runs on both loops -----------------------------------------------------------


def _share(port: int, **changes: Any) -> LoadShare:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "mode": "pingpong",
        "connections": 4,
        "size": 1024,
        "warmup_s": 0.05,
        "duration_s": 0.5,
        "requests": None,
        "timeout_s": 2.0,
    }
    settings.update(changes)
    return LoadShare(**settings)


async def test_requests_quota_is_met_exactly_and_every_latency_recorded(
    echo_server_port: int,
) -> None:
    result = await drive(_share(echo_server_port, requests=700, duration_s=30), LocalControl())
    assert result.stopped_by == "requests"
    assert (result.completed, result.failed, result.errors) == (700, 0, {})
    assert sum(result.histogram.counts) == result.histogram.total == 700
    assert 0 < result.histogram.minimum <= result.histogram.value_at(0.5)
    assert result.histogram.value_at(0.5) <= result.histogram.maximum
    assert result.window_s < 30


async def test_duration_bounds_a_run_and_its_requests_are_counted(echo_server_port: int) -> None:
    started = time.monotonic()
    result = await drive(_share(echo_server_port, duration_s=0.3), LocalControl())
    assert time.monotonic() - started < 5
    assert result.stopped_by == "duration"
    assert result.window_s == pytest.approx(0.3, abs=0.1)
    assert result.completed > 0
    assert result.histogram.total == result.completed
    assert result.errors == {}


async def test_bulk_streams_both_ways_and_counts_the_echoed_bytes(echo_server_port: int) -> None:
    result = await drive(
        _share(echo_server_port, mode="bulk", connections=2, size=64 * 1024, duration_s=0.3),
        LocalControl(),
    )
    assert result.errors == {}
    assert result.bytes_received > 64 * 1024
    # The window's sent and received bytes differ by what was in flight at its edges: at
    # most the kernel's socket buffers on both sides, and a few chunks in user space.
    in_flight_max = 2 * (2 * (_kernel_max("tcp_wmem") + _kernel_max("tcp_rmem")) + 8 * 65536)
    assert abs(result.bytes_sent - result.bytes_received) <= in_flight_max


def _kernel_max(sysctl: str) -> int:
    with open(f"/proc/sys/net/ipv4/{sysctl}") as handle:
        return int(handle.read().split()[2])


def test_payloads_differ_between_turns_and_bulk_chunks_have_the_size() -> None:
    first, second = payloads_for(3, 1000)
    assert len(first) == len(second) == 1000
    assert all(a != b for a, b in zip(first, second, strict=True))
    assert len(bulk_chunk(65536)) == 65536


class _RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


@pytest.mark.parametrize("latency_ns", [0, 255, 256, 1000, 65_432, 10**6 + 7, 3 * 10**9])
async def test_the_hot_path_files_a_latency_where_bucket_index_says(
    monkeypatch: pytest.MonkeyPatch, latency_ns: int
) -> None:
    clock = iter([1_000_000_000, 1_000_000_000 + latency_ns])
    monkeypatch.setattr("tcpecho.bench.load.perf_counter_ns", lambda: next(clock))
    state = RunState(requests=None)
    state.running = True
    state.measure()
    first, second = payloads_for(1, 64)
    connection = PingPongConnection(state, (first, second))
    transport = _RecordingTransport()
    connection.transport = transport  # type: ignore[assignment]
    connection.start()
    connection.data_received(transport.written[-1])
    assert state.measured_counts[bucket_index(latency_ns)] == 1
    assert state.completed == 1
    assert transport.written == [first, second]  # the next request went out, the other payload


class _AbortableTransport(_RecordingTransport):
    aborted = False

    def abort(self) -> None:
        self.aborted = True

    def set_write_buffer_limits(self, high: int) -> None:
        pass


async def test_bulk_checks_reads_of_any_length_against_the_stream() -> None:
    chunk = bulk_chunk(1000)
    stream = chunk * 1200  # 1.2 MB: longer than any read the loops make, and its pattern
    for corrupt_at in (None, 0, 999, 700_123):
        state = RunState(requests=None)
        state.running = True
        state.measure()
        connection = BulkConnection(state, chunk)
        transport = _AbortableTransport()
        connection.transport = transport  # type: ignore[assignment]
        data = bytearray(stream)
        if corrupt_at is not None:
            data[corrupt_at] ^= 0xFF
        # Pieces of awkward sizes: one byte, part of a chunk, and far more than a read.
        for start, end in ((0, 1), (1, 1500), (1500, 601_500), (601_500, len(data))):
            connection.data_received(bytes(data[start:end]))
        assert transport.aborted == (corrupt_at is not None)
        assert state.errors == ({} if corrupt_at is None else {"MISMATCH": 1})
        if corrupt_at is None:
            assert state.bytes_received == len(stream)


class _Misbehaving(asyncio.Protocol):
    """A server side that answers wrongly in one of several ways."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.transport: asyncio.Transport | None = None
        self.seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "write")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.seen += len(data)
        if self.behaviour == "close-after-one":
            self.transport.write(data)
            self.transport.close()
        elif self.behaviour == "corrupt":
            self.transport.write(bytes([data[0] ^ 1]) + data[1:])
        elif self.behaviour == "split":
            # The echo in two pieces, the second a moment later.
            transport = self.transport
            transport.write(data[:100])
            asyncio.get_running_loop().call_later(0.005, transport.write, data[100:])
        elif self.behaviour == "repeat":
            self.transport.write(data + data)
        elif self.behaviour == "reset" and self.seen > 10 * 1024:
            # Linger 0: closing sends RST instead of FIN.
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        elif self.behaviour in ("echo", "reset"):
            self.transport.write(data)
        # "silent": read and never answer


@pytest.fixture
async def misbehaving() -> AsyncIterator[Callable[[str], Any]]:
    servers: list[asyncio.Server] = []

    async def start(behaviour: str) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Misbehaving(behaviour), "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [("close-after-one", "EOF"), ("corrupt", "MISMATCH"), ("repeat", "MISMATCH")],
)
async def test_wrong_answers_are_counted_by_kind_and_the_load_goes_on(
    misbehaving: Callable[[str], Any], behaviour: str, kind: str
) -> None:
    port = await misbehaving(behaviour)
    result = await drive(_share(port, connections=2, duration_s=0.5), LocalControl())
    # Each failure closes the connection and its slot connects again after a pause, so a
    # half-second run sees several failures, not one per connection.
    assert result.errors.get(kind, 0) > 2, result.errors
    assert set(result.errors) == {kind}
    # Every request sent in the window either completed or failed.
    assert result.failed <= sum(result.errors.values())


async def test_an_echo_in_pieces_is_one_request(misbehaving: Callable[[str], Any]) -> None:
    port = await misbehaving("split")
    result = await drive(_share(port, requests=200, duration_s=30), LocalControl())
    assert (result.completed, result.errors) == (200, {})
    # The second piece came 5 ms later (uvloop's timers may fire up to a millisecond early).
    assert result.histogram.minimum >= 3_000_000


async def test_a_peer_that_resets_is_counted_as_a_reset(
    misbehaving: Callable[[str], Any],
) -> None:
    port = await misbehaving("reset")
    result = await drive(_share(port, connections=1, duration_s=0.4), LocalControl())
    assert result.errors.get("ECONNRESET", 0) >= 1, result.errors


async def test_an_echo_that_never_comes_is_a_timeout(misbehaving: Callable[[str], Any]) -> None:
    port = await misbehaving("silent")
    result = await drive(
        _share(port, connections=3, duration_s=0.6, warmup_s=0, timeout_s=0.2), LocalControl()
    )
    assert result.completed == 0
    assert result.errors.get("TIMEOUT", 0) >= 3
    assert result.failed >= 3


async def test_a_refused_connection_is_counted_and_retried() -> None:
    result = await drive(
        _share(free_port(), connections=2, duration_s=0.35, warmup_s=0), LocalControl()
    )
    assert result.completed == 0
    assert result.errors.get("ECONNREFUSED", 0) > 2


def test_report_adds_up_processes_and_keeps_every_error() -> None:
    config = BenchConfig(connections=4, processes=2)
    results = []
    for completed, latency in ((100, 50_000), (300, 150_000)):
        histogram = LatencyHistogram.empty()
        for _ in range(completed):
            histogram.record(latency)
        results.append(
            ProcessResult(
                window_s=2.0,
                completed=completed,
                failed=1,
                bytes_sent=0,
                bytes_received=0,
                errors={"EOF": 1},
                histogram=histogram,
                stopped_by="duration",
            )
        )
    report = BenchReport.merge(config.describe(), results, {"WORKER_FAILED": 1})
    assert report.completed == 400
    assert report.per_second == pytest.approx(200.0)
    assert report.errors == {"EOF": 2, "WORKER_FAILED": 1}
    assert report.error_count == 3
    assert report.latency_us is not None
    assert report.latency_us["p50"] == pytest.approx(150.0, rel=0.01)
    assert report.latency_us["min"] == pytest.approx(50.0, rel=0.01)


def test_shares_split_connections_and_requests_exactly() -> None:
    config = BenchConfig(connections=10, processes=3, requests=1001)
    shares = config.shares()
    assert [share.connections for share in shares] == [4, 3, 3]
    assert sum(share.requests or 0 for share in shares) == 1001


# -- the command line ------------------------------------------------------------------------


def _bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tcpecho_executable(), "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_json_report_has_every_field_and_counts_add_up(start_server: StartServer) -> None:
    server = start_server()
    result = _bench(
        "--port", str(server.port), "--connections", "3", "--requests", "600",
        "--duration", "30s", "--warmup", "100ms", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {
        "target", "mode", "connections", "size", "processes", "loop", "window_s",
        "stopped_by", "requests", "failed_requests", "requests_per_second", "latency_us",
        "errors",
    }  # fmt: skip
    assert report["requests"] == 600
    assert report["stopped_by"] == "requests"
    assert report["errors"] == {"total": 0, "by_kind": {}}
    assert report["requests_per_second"] == pytest.approx(600 / report["window_s"], rel=0.01)
    latency = report["latency_us"]
    assert list(latency) == ["p50", "p90", "p99", "p99.9", "max", "min", "mean"]
    assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["p99.9"] <= latency["max"]
    # Progress went to stderr, never into the JSON on stdout.
    assert "connected" in result.stderr


def test_several_processes_share_the_load_and_their_counts_add_up(
    start_server: StartServer,
) -> None:
    server = start_server()
    result = _bench(
        "--port", str(server.port), "--connections", "4", "--processes", "2",
        "--requests", "1001", "--duration", "30s", "--warmup", "0s", "--json", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["processes"], report["requests"]) == (2, 1001)
    assert result.stderr == ""


def test_bulk_text_report_names_its_throughput(start_server: StartServer) -> None:
    server = start_server()
    result = _bench(
        "--port", str(server.port), "--mode", "bulk", "--size", "64KiB", "--connections", "1",
        "--duration", "300ms", "--warmup", "0s", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "MB/s echoed" in result.stdout
    assert "errors      0" in result.stdout


def test_errors_make_the_exit_status_1_and_are_reported() -> None:
    result = _bench(
        "--port", str(free_port()), "--connections", "2", "--duration", "300ms",
        "--warmup", "0s", "--json", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["errors"]["by_kind"]["ECONNREFUSED"] == report["errors"]["total"] > 0
    assert "Traceback" not in result.stderr


def test_a_silent_server_cannot_stretch_the_run(start_server: StartServer) -> None:
    """Bounded: a server that stops answering (SIGSTOP) ends in timeouts, not a hang."""
    server = start_server()
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = _bench(
            "--port", str(server.port), "--connections", "2", "--requests", "1000000",
            "--duration", "1s", "--timeout", "300ms", "--warmup", "0s", "--json",
            "--no-progress",
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["errors"]["by_kind"].get("TIMEOUT", 0) >= 2
    assert report["stopped_by"] == "duration"
    assert elapsed < 20  # a hang guard: the run is 1 s plus start-up


def test_sigint_ends_the_run_early_with_a_report(start_server: StartServer) -> None:
    server = start_server()
    bench = subprocess.Popen(
        [tcpecho_executable(), "bench", "--port", str(server.port), "--duration", "60s",
         "--warmup", "0s", "--json", "--connections", "2", "--processes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert bench.stderr is not None
        assert "connected" in bench.stderr.readline()  # running: the first progress line
        bench.send_signal(signal.SIGINT)
        out, err = bench.communicate(timeout=20)
    finally:
        bench.kill()
        bench.wait()
    report = json.loads(out)
    assert report["stopped_by"] == "interrupted"
    assert report["requests"] > 0
    assert "Traceback" not in err


BAD_INPUT = [
    (["--size", "1XB"], "not a size"),
    (["--size", "0"], "below the minimum"),
    (["--size", "17MiB"], "17MiB is above the maximum of 16MiB"),
    (["--connections", "0"], "--connections"),
    (["--connections", "2", "--processes", "3"], "--processes"),
    (["--mode", "bulk", "--requests", "10"], "--requests"),
    (["--mode", "flood"], "--mode"),
    (["--duration", "0s"], "below the minimum"),
    (["--duration", "10"], "not a duration"),
    (["--warmup", "-1s"], "negative"),
    (["--requests", "0"], "--requests"),
    (["--loop", "tokio"], "--loop"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_a_usage_error(args: list[str], expected: str) -> None:
    result = _bench(*args, timeout=30)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    assert expected in error_lines[0]
    assert result.stdout == ""


def test_environment_variables_set_bench_options() -> None:
    result = subprocess.run(
        [tcpecho_executable(), "bench", "--no-progress", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "TCPECHO_BENCH_PORT": str(free_port()),
            "TCPECHO_BENCH_CONNECTIONS": "1",
            "TCPECHO_BENCH_DURATION": "200ms",
            "TCPECHO_BENCH_WARMUP": "0s",
        },
    )
    report = json.loads(result.stdout)
    assert report["connections"] == 1
    assert report["duration_s"] == 0.2
