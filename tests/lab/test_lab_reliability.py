"""``tcpecho lab`` beside another lab, and killed at random points: two runs at once do not
touch each other's namespaces, and whatever a SIGKILL leaves, the next run or ``--cleanup``
clears (namespaces, the processes in them and their rules; the host's ruleset untouched)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tcpecho.lab.runner import RUN_PREFIX
from tcpecho.lab.topology import leftover_namespaces
from tests.conftest import requires_netns
from tests.lab.test_lab import LAB, _host_ruleset, _is_zombie, _processes_of

pytestmark = [requires_netns, pytest.mark.netns]

# The shortest matrix: two cases, each over within a second of its fault.
SHORT = [*LAB, "--fault", "kill", "--profile", "default"]
ALL_WITHIN_THE_MODEL = "model: every measurement within its predicted range"
# Other lab runs may be under way on the machine (other test sessions): every check below
# is about this test's own runs, named after their pids.


@pytest.mark.parametrize("stagger_s", [0.0, 0.4, 0.9])
def test_two_labs_at_once_do_not_interfere(stagger_s: float) -> None:
    """The second starts while the first builds or runs its cases; its start removes stale
    namespaces, and must not take the first one's, which is alive (the first would then
    fail its cases)."""
    rules_before = _host_ruleset()
    first = subprocess.Popen(SHORT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(stagger_s)
    second = subprocess.Popen(SHORT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for lab in (first, second):
        stdout, stderr = lab.communicate(timeout=120)
        assert lab.returncode == 0, (stdout, stderr)
        assert ALL_WITHIN_THE_MODEL in stdout, stdout
        assert leftover_namespaces(f"{RUN_PREFIX}{lab.pid}-") == []
    assert _host_ruleset() == rules_before


@pytest.mark.parametrize("seed", range(6))
def test_a_lab_killed_at_a_random_point_leaves_what_the_next_run_or_cleanup_clears(
    seed: int,
) -> None:
    """SIGKILL while the run is alive and holds namespaces: seeds 0-2 while it builds them and
    starts its programs (after its first namespace exists), 3-5 while its cases run.
    Whatever it left (never nothing: that would test no cleanup) the next run (odd seeds)
    or --cleanup clears."""
    rules_before = _host_ruleset()
    chooser = random.Random(seed)
    lab = subprocess.Popen(SHORT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix = f"{RUN_PREFIX}{lab.pid}-"
    running = seed >= 3
    # A short lab, polled every 5 ms on an idle machine: its first namespace at 0.38 s, all
    # six by 0.43 s, then programs start (one at a time, briefly, while they are probed);
    # a case's server and client both run from 0.70 s, and the first case ends at 1.50 s.
    # Two programs at once mean the cases run, with 0.8 s to go on an idle machine (more
    # on a loaded one, where the lab slows too): a kill 0-0.2 s later lands while they run.
    _wait_for(
        lab,
        lambda: len(_processes_of(lab.pid)) >= 2 if running else bool(leftover_namespaces(prefix)),
    )
    time.sleep(chooser.uniform(0.0, 0.2))
    processes = _processes_of(lab.pid)
    lab.send_signal(signal.SIGKILL)
    lab.wait(30)
    what = f"seed {seed}, {'running' if running else 'building'}"
    left = leftover_namespaces(prefix)
    assert left, f"the kill ({what}) hit no live run: nothing was left to clear"
    if running:
        assert processes, f"the kill ({what}) found no server or client running"
    if seed % 2 == 0:
        result = subprocess.run([*LAB, "--cleanup"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result
    else:  # the next run clears them before it starts
        following = subprocess.Popen(
            SHORT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        stdout, stderr = following.communicate(timeout=120)
        assert following.returncode == 0, (stdout, stderr)
        assert ALL_WITHIN_THE_MODEL in stdout
        assert leftover_namespaces(f"{RUN_PREFIX}{following.pid}-") == []
    assert leftover_namespaces(prefix) == [], what
    assert _host_ruleset() == rules_before
    time.sleep(0.2)  # killed processes may take a moment to be reaped by init
    for pid in processes:
        assert not _alive(pid) or _is_zombie(pid), f"process {pid} survived ({what})"


def _wait_for(lab: subprocess.Popen[bytes], condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds while ``lab`` still runs (it must not end first)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert lab.poll() is None, f"the lab ended (exit {lab.returncode}) before the kill"
        assert time.monotonic() < deadline, "the lab never reached the point to kill it at"
        time.sleep(0.01)
    assert lab.poll() is None, "the lab ended before the kill"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat"):
            return True
    except OSError:
        return False
