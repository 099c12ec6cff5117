"""Where every check is promised (CI, or ``TCPECHO_REQUIRE_CHECKS``: ``scripts/nox`` sets it
as root), a test that skips fails instead, saying what it lacked: a green run must mean that
every check ran. A skip no check promises (a host without dual-stack IPv6, a cgroup hierarchy
the kernel does not mount) says so with ``skip_unpromised`` and stays a skip.

Loaded by ``tests/conftest.py``; ``noxfile.py`` holds the same rule for its sessions."""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from typing import NoReturn

import pytest
from _pytest.outcomes import Skipped  # what pytest.skip raises (pytest.skip.Exception)

REQUIRE_CHECKS = "TCPECHO_REQUIRE_CHECKS"
OFF = ("", "0", "false", "no")


def checks_required(environ: Mapping[str, str] = os.environ) -> bool:
    """True on CI (``CI`` set, as CI services set it: ``true``) or with
    ``TCPECHO_REQUIRE_CHECKS`` (either one empty, ``0``, ``false`` or ``no`` is unset)."""
    return any(environ.get(name, "").strip().lower() not in OFF for name in ("CI", REQUIRE_CHECKS))


class Unpromised(Skipped):
    """A skip that no check promises: it stays a skip where checks are required."""


def skip_unpromised(reason: str) -> NoReturn:
    """Skip, also where checks are required: ``reason`` says why no check promises this one."""
    __tracebackhide__ = True  # the skip is reported at the test's line, not here
    raise Unpromised(f"not promised: {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A skip, from a mark, a fixture or the test, becomes a failure naming its reason (an
    error where the skip came in setup, as for any failing fixture)."""
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")  # an expected failure is not a missing check
        and call.excinfo is not None
        and not call.excinfo.errisinstance(Unpromised)
        and checks_required()
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped where every check must run (CI or {REQUIRE_CHECKS}): {call.excinfo.value}"
        )
    return report
