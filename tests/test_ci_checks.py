"""tests/ci_checks.py in a pytest run of its own: where checks are required, a skip fails
with its reason, an unpromised skip and an expected failure stay what they are."""

from __future__ import annotations

import pytest

from tests.ci_checks import checks_required

SKIPPING = """
import pytest
from tests.ci_checks import skip_unpromised

@pytest.mark.skipif(True, reason="needs nft")
def test_marked():
    pass

def test_skipped_inside():
    pytest.skip("buildah missing")

@pytest.fixture
def needs_root():
    pytest.skip("needs root")

def test_fixture_skips(needs_root):
    pass

def test_unpromised():
    skip_unpromised("no dual-stack IPv6 here")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


@pytest.mark.parametrize(
    ("environ", "required"),
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "1"}, True),
        ({"CI": "false"}, False),
        ({"CI": ""}, False),
        ({"TCPECHO_REQUIRE_CHECKS": "1"}, True),
        ({"TCPECHO_REQUIRE_CHECKS": "0"}, False),
        ({"CI": "true", "TCPECHO_REQUIRE_CHECKS": "0"}, True),  # CI cannot be talked out of it
    ],
)
def test_checks_are_required_on_ci_or_when_asked(environ: dict[str, str], required: bool) -> None:
    assert checks_required(environ) is required


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, **env: str
) -> pytest.RunResult:
    for name in ("CI", "TCPECHO_REQUIRE_CHECKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_skipping=SKIPPING)
    return pytester.runpytest_inprocess("-p", "tests.ci_checks", "-rA")


def test_where_checks_are_required_every_skip_fails_naming_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, CI="true")
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
    for reason in ("needs nft", "buildah missing", "needs root"):
        result.stdout.fnmatch_lines([f"*skipped where every check must run*{reason}*"])
    result.stdout.fnmatch_lines(
        ["SKIPPED*test_skipping.py:*not promised: no dual-stack IPv6 here*"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_developer_without_the_promise_still_skips_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    result.stdout.fnmatch_lines(["SKIPPED*needs nft*"])
    assert result.ret == pytest.ExitCode.OK


def test_tcpecho_require_checks_asks_for_them_off_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, TCPECHO_REQUIRE_CHECKS="1")
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
