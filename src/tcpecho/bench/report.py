"""BenchReport: the merged result of a ``tcpecho bench`` run, as text for people and as JSON.

Every process's counts are added up here; rates are summed per process (each over its own
measured window, which the shared start time keeps aligned). Errors are reported by kind
and in total, never dropped: a run with any error exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tcpecho.bench.histogram import LatencyHistogram
from tcpecho.bench.load import Mode, ProcessResult, StoppedBy

# Reported latency percentiles: JSON key and quantile.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
)


@dataclass(frozen=True)
class RunDescription:
    """What was asked for, echoed in the report so a JSON file stands on its own."""

    target: str
    mode: Mode
    connections: int
    size: int
    processes: int
    warmup_s: float
    duration_s: float
    requests: int | None
    timeout_s: float
    loop: str


@dataclass(frozen=True)
class BenchReport:
    run: RunDescription
    window_s: float
    completed: int
    failed: int
    per_second: float  # requests (ping-pong) or echoed bytes (bulk) per second
    bytes_sent: int
    bytes_received: int
    latency_us: dict[str, float] | None
    errors: dict[str, int]
    stopped_by: StoppedBy

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @classmethod
    def merge(
        cls, run: RunDescription, results: list[ProcessResult], errors: dict[str, int]
    ) -> BenchReport:
        """Add up the processes' results; ``errors`` are failures outside them (a worker)."""
        histogram = LatencyHistogram.empty()
        all_errors = dict(errors)
        per_second = 0.0
        for result in results:
            histogram.merge(result.histogram)
            for kind, count in result.errors.items():
                all_errors[kind] = all_errors.get(kind, 0) + count
            if result.window_s > 0:
                counted = result.completed if run.mode == "pingpong" else result.bytes_received
                per_second += counted / result.window_s
        stops = {result.stopped_by for result in results}
        stopped_by: StoppedBy = "duration"
        if "interrupted" in stops:
            stopped_by = "interrupted"
        elif stops == {"requests"}:
            stopped_by = "requests"
        return cls(
            run=run,
            window_s=max((result.window_s for result in results), default=0.0),
            completed=sum(result.completed for result in results),
            failed=sum(result.failed for result in results),
            per_second=per_second,
            bytes_sent=sum(result.bytes_sent for result in results),
            bytes_received=sum(result.bytes_received for result in results),
            latency_us=_latency_summary(histogram) if run.mode == "pingpong" else None,
            errors=dict(sorted(all_errors.items())),
            stopped_by=stopped_by,
        )

    def as_json(self) -> dict[str, Any]:
        run = self.run
        data: dict[str, Any] = {
            "target": run.target,
            "mode": run.mode,
            "connections": run.connections,
            "size": run.size,
            "processes": run.processes,
            "loop": run.loop,
            "warmup_s": run.warmup_s,
            "duration_s": run.duration_s,
            "requests_limit": run.requests,
            "timeout_s": run.timeout_s,
            "window_s": round(self.window_s, 6),
            "stopped_by": self.stopped_by,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "errors": {"total": self.error_count, "by_kind": self.errors},
        }
        if run.mode == "pingpong":
            data["requests"] = self.completed
            data["failed_requests"] = self.failed
            data["requests_per_second"] = round(self.per_second, 1)
            data["latency_us"] = self.latency_us
        else:
            data["bytes_per_second"] = round(self.per_second, 1)
            data["megabytes_per_second"] = round(self.per_second / 1e6, 3)
        return data

    def as_text(self) -> str:
        run = self.run
        lines = [
            f"tcpecho bench: {run.mode} against {run.target}, {run.connections} connection(s), "
            f"{run.size}-byte {'requests' if run.mode == 'pingpong' else 'chunks'}, "
            f"{run.processes} process(es), {run.loop}",
            f"  window      {self.window_s:.2f} s after {run.warmup_s:g} s warm-up, "
            f"stopped by {self.stopped_by}",
        ]
        if run.mode == "pingpong":
            lines.append(
                f"  requests    {self.completed:,} ({self.per_second:,.0f} req/s), "
                f"{self.failed:,} failed"
            )
            if self.latency_us:
                lines.append(
                    "  latency     "
                    + "  ".join(f"{key} {value:,.1f}" for key, value in self.latency_us.items())
                    + " us"
                )
        else:
            lines.append(
                f"  throughput  {self.per_second / 1e6:,.1f} MB/s echoed "
                f"({self.bytes_received:,} bytes received, {self.bytes_sent:,} sent)"
            )
        if self.errors:
            kinds = ", ".join(f"{kind} {count}" for kind, count in self.errors.items())
            lines.append(f"  errors      {self.error_count} ({kinds})")
        else:
            lines.append("  errors      0")
        return "\n".join(lines)


def _latency_summary(histogram: LatencyHistogram) -> dict[str, float] | None:
    if histogram.total == 0:
        return None
    summary = {key: histogram.value_at(quantile) / 1000 for key, quantile in PERCENTILES}
    summary["max"] = histogram.maximum / 1000
    summary["min"] = histogram.minimum / 1000
    summary["mean"] = histogram.mean / 1000
    return {key: round(value, 3) for key, value in summary.items()}
