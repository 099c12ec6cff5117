"""``tcpecho lab``: check the machine, run the matrix, report, and clean up whatever happens."""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from tcpecho import loops
from tcpecho.experiment import Fault, FaultTiming, Profile, Result
from tcpecho.lab import report, servers
from tcpecho.lab.pods import PodMaker
from tcpecho.lab.programs import StartupTimeouts
from tcpecho.lab.runner import (
    QUICK_RETRIES2,
    QUICK_RTO_MAX_MS,
    QUICK_SYN_RETRIES,
    KernelBudget,
    plan,
    remove_stale,
    rto_max_supported,
    run_cases,
)
from tcpecho.model import Activity
from tcpecho.process import on_stop_signals
from tcpecho.settings import SettingError
from tcpecho.streams import write_stdout


class MissingRequirement(click.ClickException):
    """What the lab needs and does not have: one line, exit status 2."""

    exit_code = 2


@dataclass(frozen=True)
class LabConfig:
    faults: tuple[Fault, ...]
    profiles: tuple[Profile, ...]
    budget: KernelBudget
    json_path: Path | None = None
    plot_path: Path | None = None
    server_command: str | None = None  # a program in the server pod instead of tcpecho's
    server_preset: str | None = None  # or one set up for each run (lab.servers.PRESETS)
    pods: PodMaker | None = None  # an engine's pods for each case (cluster/pods.py)
    program_startup: StartupTimeouts = field(default_factory=StartupTimeouts)
    timing: FaultTiming = field(default_factory=FaultTiming)
    # The built-in profiles run only with the faults they can change (no --profile named).
    paired: bool = False

    def __post_init__(self) -> None:
        # Checked before the run: a report that cannot be written is found out now, not after
        # minutes of cases.
        for setting, path in (("json_path", self.json_path), ("plot_path", self.plot_path)):
            if path is not None and not path.absolute().parent.is_dir():
                raise SettingError(setting, f"{path}: the directory {path.parent} does not exist")


def check_requirements(*, plot: bool = False, rto_max: bool = False) -> None:
    """Refuse, with what to do about it, before touching anything."""
    if not sys.platform.startswith("linux"):
        raise MissingRequirement("tcpecho lab needs Linux network namespaces")
    missing_capabilities = [name for name, bit in _CAPABILITIES.items() if not _has_capability(bit)]
    if missing_capabilities:
        raise MissingRequirement(
            f"tcpecho lab needs root ({' and '.join(missing_capabilities)} for network "
            "namespaces): run it with sudo"
        )
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            raise MissingRequirement(
                f"tcpecho lab needs {tool!r} on PATH: apt-get install -y {package}"
            )
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        raise MissingRequirement("tcpecho lab needs pyroute2: pip install pyroute2") from None
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise MissingRequirement(
                "--plot needs matplotlib: pip install 'tcpecho[plot]'"
            ) from None
    if rto_max and not rto_max_supported():
        raise MissingRequirement(
            f"--rto-max needs net.ipv4.tcp_rto_max_ms (Linux 6.15 or later; this is "
            f"{platform.release()}): use --tcp-retries2 instead"
        )


# What network namespaces take: root without them (a container's root, say) cannot either.
_CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}


def _has_capability(bit: int) -> bool:
    """Whether this process holds capability ``bit`` in its effective set."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def cleanup() -> int:
    removed = remove_stale()
    directories = servers.remove_stale()
    if removed:
        click.echo(
            f"removed {report.counted(len(removed), 'namespace')} left by earlier runs: "
            f"{' '.join(removed)}"
        )
    if directories:
        click.echo(
            f"removed {report.counted(len(directories), 'server directory')} left by earlier "
            f"runs: {' '.join(map(str, directories))}"
        )
    if not removed and not directories:
        click.echo("nothing to clean up: no namespaces left by earlier lab runs")
    return 0


def _forget_signal_handling() -> None:
    """In a forked child: drop the event loop's signal wake-up descriptor and handlers.

    pyroute2 forks helpers to create namespaces and sockets in them, then stops them with
    SIGTERM. A forked child shares the parent's signal wake-up socket, so without this the
    helper's SIGTERM would reach the lab's loop as if the lab itself had been told to stop.
    """
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except ValueError:  # pragma: no cover - only the main thread may; a fork's thread is it
        pass


class StoppedError(Exception):
    """The run was stopped by a signal, after every case was cleaned up: ``status`` to exit
    with, and the results (the cases that had not finished marked interrupted) with the
    run's facts, for the report."""

    def __init__(
        self,
        status: int,
        results: Sequence[Result] = (),
        info: report.RunInfo | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.results = list(results)
        self.info = info


def run(config: LabConfig) -> int:
    """Run the lab; the exit status (0 when every case ran, 1 when one could not; 130 or 143
    when a signal stopped it, after the report of what had finished). A server preset is
    set up first, and what it set up removed at the end, however the run ends."""
    servers.remove_stale()
    if config.server_preset is None:
        return _run(config)
    try:
        with servers.prepared(config.server_preset) as command:
            return _run(replace(config, server_command=command, server_preset=None))
    except servers.ServerSetupError as error:
        _note(f"tcpecho lab: {error}")
        return 1


def _run(config: LabConfig) -> int:
    stopped: StoppedError | None = None
    try:
        results, info = run_matrix(config)
    except StoppedError as error:
        _note("stopped; every namespace, rule and process of this run has been removed")
        if error.info is None:
            return error.status
        stopped, results, info = error, error.results, error.info
    write_stdout(report.render(results, info))
    written = _write_files(results, info, config)
    if stopped is not None:
        return stopped.status
    return 1 if not written or any(result.error for result in results) else 0


def run_matrix(config: LabConfig) -> tuple[list[Result], report.RunInfo]:
    """Every case of ``config``, run in parallel and cleaned up; ``StoppedError`` on a signal,
    which carries the results, those that had not finished marked interrupted. The lab's
    command and ``cluster/pods.py`` share it."""
    os.register_at_fork(after_in_child=_forget_signal_handling)
    removed = remove_stale()
    if removed:
        _note(
            f"removed {report.counted(len(removed), 'namespace')} left by an earlier run "
            "that was killed"
        )
    cases = plan(config.faults, config.profiles, config.paired)
    _note(
        f"tcpecho lab: {report.counted(len(cases), 'case')} in parallel "
        f"({_budget_note(config.budget)})"
    )
    started = time.monotonic()
    stopped_by: list[str] = []

    async def main() -> list[Result]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stopped_by:
                _note("still cleaning up the namespaces, please wait")
                return
            stopped_by.append(signal.Signals(signum).name)
            _note(
                f"{stopped_by[0]}: stopping the cases still running and removing every "
                "namespace; the report follows with what had finished"
            )
            stop.set()

        on_stop_signals(loop, on_signal)
        every = 1.0 if sys.stderr.isatty() else 5.0
        return await run_cases(
            cases,
            config.budget,
            _show_progress,
            every,
            server_command=config.server_command,
            program_startup=config.program_startup,
            stop=stop,
            timing=config.timing,
            pods=config.pods,
        )

    results = loops.run(main(), "auto")
    info = report.RunInfo(
        wall_s=time.monotonic() - started,
        quick_note=_quick_note(config.budget, results),
        sysctl_note=_explicit_note(config.budget),
        kernel_release=platform.release(),
        stopped_by=stopped_by[0] if stopped_by else None,
    )
    if info.stopped_by is not None:
        raise StoppedError(128 + signal.Signals[info.stopped_by], results, info)
    return results, info


def _write_files(results: Sequence[Result], info: report.RunInfo, config: LabConfig) -> bool:
    """The JSON and the chart, where asked for; False when one could not be written."""
    written = True
    for path, write in (
        (config.json_path, report.write_json),
        (config.plot_path, report.plot),
    ):
        if path is None:
            continue
        try:
            write(results, info, path)
        except OSError as error:
            _note(f"could not write {path}: {error.strerror or error}")
            written = False
        else:
            _note(f"wrote {path}")
    return written


def _note(text: str) -> None:
    click.echo(text, err=True)


def _show_progress(lines: Sequence[str]) -> None:
    _note(f"-- {report.counted(len(lines), 'case')} running")
    for line in lines:
        _note(f"   {line}")


def _budget_note(budget: KernelBudget) -> str:
    if budget.quick:
        return "--quick: the baseline's kernel budget is shortened"
    if budget.tcp_retries2 is not None or budget.rto_max_ms is not None:
        return _explicit_note(budget) or ""
    return "kernel defaults: the baseline takes ~15.5 minutes"


def _quick_note(budget: KernelBudget, results: Sequence[Result]) -> str | None:
    """What --quick did, when it did anything: the cases it shortened (marked ``*``), and the
    program cases, which all get its sysctl, since a program's options are known only once
    it runs."""
    if rto_max_supported():
        change, took = f"tcp_rto_max_ms={QUICK_RTO_MAX_MS}", "~15 s"
    else:
        change, took = f"tcp_retries2={QUICK_RETRIES2}", "~13 s"
    parts = []
    connecting = [r for r in results if r.quick and r.activity is Activity.CONNECTING]
    if any(result.quick and result not in connecting for result in results):
        parts.append(
            "only the kernel's retransmission budget ends the cases marked * (~15.5 min with "
            f"its defaults: tcp_retries2=15, RTO capped at 120 s); their client namespace had "
            f"{change}, so it took {took} here"
        )
    if connecting:
        parts.append(
            "a connect left to the kernel's SYN budget (marked *) takes ~131 s with "
            f"tcp_syn_retries=6; its client namespace had tcp_syn_retries={QUICK_SYN_RETRIES} "
            "(~7 s)"
        )
    if any(
        result.case.profile.command
        and result.sysctls
        and result.activity is not Activity.CONNECTING
        for result in results
    ):
        parts.append(
            f"every program case ran with {change}, since a program's options are known only "
            "once it runs: the model predicts it with that, and * marks it only when the "
            "budget ends it"
        )
    if not budget.shortens or not parts:
        return None
    return "--quick: " + ". ".join(
        part[0].upper() + part[1:] if n else part for n, part in enumerate(parts)
    )


def _explicit_note(budget: KernelBudget) -> str | None:
    parts = []
    if budget.tcp_retries2 is not None:
        parts.append(f"tcp_retries2={budget.tcp_retries2}")
    if budget.rto_max_ms is not None:
        parts.append(f"tcp_rto_max_ms={budget.rto_max_ms}")
    return f"every client namespace: {', '.join(parts)}" if parts else None
