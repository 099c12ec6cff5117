"""From the lab's JSON to cookbook.json: every check a case must pass, each shown to fail."""

from __future__ import annotations

from typing import Any

import pytest

from cookbook import results
from cookbook.recipes import RECIPES, RECOMMENDED, Recipe
from tcpecho.tcp.options import TcpOptions

SOCKET_RECOMMENDED = {
    "nodelay": False,
    "user_timeout_ms": 5000,
    "keepalive": True,
    "keepalive_idle_s": 10,
    "keepalive_interval_s": 1,
    "keepalive_count": 3,
    "syn_retries": 6,
    "recverr": False,
}
PYTHON_RECOMMENDED = next(
    r for r in RECIPES if r.stack == "python-socket" and r.settings == "recommended"
)


def _lab_case(recipe: Recipe, mode: str, **changes: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "profile": recipe.name(mode),  # type: ignore[arg-type]
        "fault": "force-delete",
        "mode": "active" if mode == "busy" else "idle",
        "options": dict(SOCKET_RECOMMENDED),
        "quick": True,
        "prediction": {
            "low_s": 5.39,
            "high_s": 6.04,
            "never": False,
            "clock": "request",
            "mechanism": "user_timeout",
        },
        "measured_s": 5.5,
        "observed_s": 5.9,
        "retransmissions": 7,
        "verdict": "detected",
        "error": None,
    }
    case.update(changes)
    return case


def _lab(*cases: dict[str, Any]) -> dict[str, Any]:
    return {"kernel_release": "6.18", "quick": "note", "wall_s": 42.0, "cases": list(cases)}


def test_a_case_in_its_range_with_its_verdict_and_socket_passes() -> None:
    lab = _lab(_lab_case(PYTHON_RECOMMENDED, "busy"), _lab_case(PYTHON_RECOMMENDED, "idle"))
    cookbook = results.build([PYTHON_RECOMMENDED], lab)
    (recipe,) = cookbook["recipes"]
    assert (recipe["library"], recipe["settings"]) == ("Python socket (stdlib)", "recommended")
    busy = recipe["cases"][0]
    assert (busy["name"], busy["fault"], busy["measured_s"], busy["verdict"]) == (
        "busy",
        "force-delete",
        5.5,
        "detected",
    )
    assert (busy["prediction"]["low_s"], busy["prediction"]["high_s"]) == (5.39, 6.04)
    assert results.problems(cookbook) == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"measured_s": 5.39 - 0.01}, "outside its prediction"),
        ({"measured_s": 6.04 + 0.01}, "outside its prediction"),
        ({"verdict": "hang"}, "verdict hang, the recipe promises detected"),
        ({"error": "warming up: timed out"}, "could not run it: warming up"),
        ({"options": {**SOCKET_RECOMMENDED, "user_timeout_ms": 0}}, "user_timeout_ms is 0"),
        ({"options": {**SOCKET_RECOMMENDED, "keepalive_count": 9}}, "keepalive_count is 9"),
        ({"options": None}, "could not be read"),
    ],
)
def test_each_check_fails_a_case(changes: dict[str, Any], problem: str) -> None:
    lab = _lab(
        _lab_case(PYTHON_RECOMMENDED, "busy", **changes), _lab_case(PYTHON_RECOMMENDED, "idle")
    )
    found = results.problems(results.build([PYTHON_RECOMMENDED], lab))
    assert len(found) == 1
    assert found[0].startswith("python-socket recommended busy: ")
    assert problem in found[0]


def test_nothing_measured_fits_never_or_a_range_not_yet_reached() -> None:
    never = {"low_s": None, "high_s": None, "never": True, "clock": "last-data"}
    hours = {"low_s": 7875.0, "high_s": 8347.8, "never": False, "clock": "last-data"}
    assert results.fits({"measured_s": None, "observed_s": 15.0, "prediction": never})
    assert results.fits({"measured_s": None, "observed_s": 170.0, "prediction": hours})
    assert not results.fits({"measured_s": None, "observed_s": 9000.0, "prediction": hours})
    assert not results.fits({"measured_s": 15.0, "observed_s": 15.0, "prediction": never})
    assert not results.fits({"measured_s": None, "observed_s": 15.0, "prediction": None})


def test_a_missing_case_is_an_error_not_a_pass() -> None:
    with pytest.raises(ValueError, match="python-socket-recommended-idle"):
        results.build([PYTHON_RECOMMENDED], _lab(_lab_case(PYTHON_RECOMMENDED, "busy")))


def test_keepalive_times_matter_only_when_keepalive_is_on() -> None:
    off = TcpOptions(keepalive=False)
    seen = {**SOCKET_RECOMMENDED, "user_timeout_ms": 0, "keepalive": False}
    assert results.socket_problems(off, seen) == []
    assert results.socket_problems(RECOMMENDED, seen) != []
