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
    """The meter against the kernel's own CPU clock of this process (CLOCK_PROCESS_CPUTIME_ID,
    nanoseconds) over the same window, however little of a loaded machine the test gets."""
    cpu_before, wall_before = time.process_time(), time.monotonic()
    meter = measure.UsageMeter(os.getpid())
    wall_created = time.monotonic()
    while time.process_time() - cpu_before < 0.3:  # burn 0.3 s of CPU, however long it takes
        sum(range(10_000))
    wall_reading = time.monotonic()
    usage = meter.read()
    cpu_s, wall_after = time.process_time() - cpu_before, time.monotonic()
    # /proc/PID/stat counts the same CPU time in whole clock ticks, each read truncated: the
    # meter's CPU seconds lie within two ticks of the kernel's clock; its window lies
    # between the test's brackets around the meter's creation and its read (the CPU of its
    # creation, one /proc read, well under the 10 ms allowed, counts before the meter's).
    tick = 1 / os.sysconf("SC_CLK_TCK")
    low = 1000 * (0.3 - 0.01 - 2 * tick) / (wall_after - wall_before)
    high = 1000 * (cpu_s + 2 * tick) / (wall_reading - wall_created)
    assert low <= usage.cpu_millicores <= high
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
        # No more than every core of the machine, and one tick at each end of the window
        # (a unit slip, ticks not divided by CLK_TCK, would be 100 times that).
        assert 0 <= float(cpu) <= 1000 * (os.cpu_count() or 1) + 10
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
