"""The resource measurement behind the pods' requests and limits (benchmarks/measure_resources)."""

from __future__ import annotations

import os
import time

import pytest
from benchmarks import measure_resources as measure
from click.testing import CliRunner


def test_cpu_ticks_survives_a_command_name_with_spaces_and_parentheses() -> None:
    fields = ["S", *map(str, range(4, 14)), "250", "40", *map(str, range(16, 53))]
    assert measure.cpu_ticks(f"4242 (tcp echo) (x)) {' '.join(fields)}") == 290


def test_usage_meter_reads_this_process() -> None:
    meter = measure.UsageMeter(os.getpid())
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # burn some CPU so the meter has something to see
        sum(range(10_000))
    usage = meter.read()
    assert usage.cpu_millicores > 100
    assert 5 < usage.peak_rss_mib < 4096


def test_peak_rss_needs_vmhwm() -> None:
    with pytest.raises(ValueError, match="VmHWM"):
        measure.peak_rss_kib("Name:\tpython\nVmRSS:\t 100 kB\n")


def test_measure_resources_measures_a_real_server_and_client() -> None:
    result = CliRunner().invoke(
        measure.measure_resources,
        ["--duration", "2s", "--connections", "5", "--load-interval", "20ms"],
    )
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[2:]}
    assert set(rows) == {"server", "client"}
    for cpu, rss in rows.values():
        assert float(cpu) >= 0
        assert 10 < float(rss) < 512
    echoes_per_s = float(result.output.split()[3])
    assert echoes_per_s > 50, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--connections", "0"], "0 is not in the range"),
        (["--duration", "5"], "not a duration"),
        (["--duration", "500ms"], "below the minimum of 1s"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(measure.measure_resources, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
