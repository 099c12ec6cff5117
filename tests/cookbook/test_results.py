"""From the lab's JSON to cookbook.json: every check a case must pass, each shown to fail."""

from __future__ import annotations

from typing import Any

import pytest

from cookbook import results
from cookbook.recipes import FAULTS, RECIPES, RECOMMENDED, Recipe
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


def _lab_case(
    recipe: Recipe, mode: str, fault: str = "force-delete", **changes: Any
) -> dict[str, Any]:
    case: dict[str, Any] = {
        "profile": recipe.name(mode),  # type: ignore[arg-type]
        "fault": fault,
        "mode": "active" if mode == "busy" else "idle",
        "options": dict(SOCKET_RECOMMENDED),
        "quick": True,
        "prediction": {
            "low_s": 5.39,
            "high_s": 6.04,
            "never": False,
            "clock": "request",
            "mechanism": "user_timeout",
            "outcome": "fails",
        },
        "measured_s": 5.5,
        "recovered_s": None,
        "observed_s": 5.9,
        "retransmissions": 7,
        "verdict": "detected",
        "error": None,
    }
    case.update(changes)
    return case


def _lab(*cases: dict[str, Any]) -> dict[str, Any]:
    return {"kernel_release": "6.18", "quick": "note", "wall_s": 42.0, "cases": list(cases)}


def _survived(recipe: Recipe, mode: str, **changes: Any) -> dict[str, Any]:
    """idle-expiry's case of a connection that kept its flow: the peer answered after the
    window, on the last data's clock."""
    survives = {
        "low_s": 15.0,
        "high_s": 32.6,
        "never": False,
        "clock": "last-data",
        "mechanism": "nothing",
        "outcome": "survives",
    }
    fields: dict[str, Any] = {"prediction": survives, "measured_s": None, "recovered_s": 20.4}
    fields |= {"verdict": "survived", "retransmissions": 0, **changes}
    return _lab_case(recipe, mode, "idle-expiry", **fields)


def _both_faults(recipe: Recipe = PYTHON_RECOMMENDED) -> list[dict[str, Any]]:
    """A passing run of ``recipe`` (recommended) under both faults, busy and idle."""
    force_delete = [_lab_case(recipe, mode) for mode in ("busy", "idle")]
    return force_delete + [_survived(recipe, mode) for mode in ("busy", "idle")]


def test_a_case_in_its_range_with_its_verdict_and_socket_passes() -> None:
    lab = _lab(*_both_faults())
    cookbook = results.build([PYTHON_RECOMMENDED], lab, path_idle_timeout_s=15.0)
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
    assert [(case["fault"], case["name"]) for case in recipe["cases"]] == [
        ("force-delete", "busy"),
        ("force-delete", "idle"),
        ("idle-expiry", "busy"),
        ("idle-expiry", "idle"),
    ]
    survived = recipe["cases"][3]
    assert (survived["verdict"], survived["recovered_s"]) == ("survived", 20.4)
    assert survived["prediction"]["outcome"] == "survives"
    assert (cookbook["faults"], cookbook["path_idle_timeout_s"]) == (list(FAULTS), 15.0)
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
    cases = _both_faults()
    cases[0] = _lab_case(PYTHON_RECOMMENDED, "busy", **changes)
    found = results.problems(results.build([PYTHON_RECOMMENDED], _lab(*cases)))
    assert len(found) == 1
    assert found[0].startswith("python-socket recommended force-delete busy: ")
    assert problem in found[0]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"recovered_s": 15.0 - 0.01}, "outside its prediction"),
        ({"recovered_s": 32.6 + 0.01}, "outside its prediction"),
        # Nothing answered after the window: the flow was forgotten, not kept.
        ({"recovered_s": None, "verdict": "hang"}, "verdict hang, the recipe promises survived"),
        # Ended while the model says it survives: the measurement is not in its range.
        ({"recovered_s": None, "measured_s": 16.0, "verdict": "detected"}, "outside"),
    ],
)
def test_each_check_fails_a_survivor(changes: dict[str, Any], problem: str) -> None:
    cases = _both_faults()
    cases[3] = _survived(PYTHON_RECOMMENDED, "idle", **changes)
    found = results.problems(results.build([PYTHON_RECOMMENDED], _lab(*cases)))
    assert found
    assert all(f.startswith("python-socket recommended idle-expiry idle: ") for f in found)
    assert any(problem in f for f in found), found


def test_a_survival_fits_only_a_prediction_that_survives() -> None:
    fails = {"low_s": 45.0, "high_s": 48.2, "clock": "last-data", "outcome": "fails"}
    survives = {**fails, "low_s": 15.0, "high_s": 32.6, "outcome": "survives"}
    answered = {"measured_s": None, "observed_s": 21.0, "recovered_s": 20.4}
    assert results.fits({**answered, "prediction": survives})
    assert not results.fits({**answered, "prediction": fails})
    assert not results.fits({**answered, "recovered_s": None, "prediction": survives})
    assert results.fits({"measured_s": 46.8, "observed_s": 46.9, "prediction": fails})


def test_nothing_measured_fits_never_or_a_range_not_yet_reached() -> None:
    never = {"low_s": None, "high_s": None, "never": True, "clock": "last-data"}
    hours = {"low_s": 7875.0, "high_s": 8347.8, "never": False, "clock": "last-data"}
    assert results.fits({"measured_s": None, "observed_s": 15.0, "prediction": never})
    assert results.fits({"measured_s": None, "observed_s": 170.0, "prediction": hours})
    assert not results.fits({"measured_s": None, "observed_s": 9000.0, "prediction": hours})
    assert not results.fits({"measured_s": 15.0, "observed_s": 15.0, "prediction": never})
    assert not results.fits({"measured_s": None, "observed_s": 15.0, "prediction": None})


def test_a_missing_case_is_an_error_not_a_pass() -> None:
    cases = _both_faults()
    with pytest.raises(ValueError, match="force-delete/python-socket-recommended-idle"):
        results.build([PYTHON_RECOMMENDED], _lab(*cases[:1], *cases[2:]))
    with pytest.raises(ValueError, match="idle-expiry/python-socket-recommended-busy"):
        results.build([PYTHON_RECOMMENDED], _lab(*cases[:2], *cases[3:]))
    # A run of one fault (--fault) is checked for that fault's cases only.
    only = results.build([PYTHON_RECOMMENDED], _lab(*cases[:2]), faults=("force-delete",))
    assert results.problems(only) == []


def test_keepalive_times_matter_only_when_keepalive_is_on() -> None:
    off = TcpOptions(keepalive=False)
    seen = {**SOCKET_RECOMMENDED, "user_timeout_ms": 0, "keepalive": False}
    assert results.socket_problems(off, seen) == []
    assert results.socket_problems(RECOMMENDED, seen) != []
