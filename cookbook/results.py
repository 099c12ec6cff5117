"""From the lab's JSON to ``out/cookbook.json``, and the checks every case must pass.

A case is a recipe under one fault in one mode. It passes when the lab ran it, its
measurement lies in the model's range for a program (which allows for how late the lab sees
a program's socket, and for a program's request in more than one segment: ``lab.programs``;
a case the model gives hours, watched for minutes, passes when nothing happened before the
range began; a survivor's range is when the peer answered after the fault's window), its
verdict is the one its recipe promises, and the client's socket carried what the recipe
says its settings set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cookbook.recipes import FAULTS, Fault, Mode, Recipe
from tcpecho.tcp.options import TcpOptions

MODES: tuple[Mode, ...] = ("busy", "idle")


def socket_problems(declared: TcpOptions, seen: Mapping[str, Any] | None) -> list[str]:
    """How the socket's options differ from what the recipe says they are."""
    if seen is None:
        return ["the client's socket options could not be read"]
    problems = []
    wanted: dict[str, Any] = {
        "user_timeout_ms": declared.user_timeout_ms or 0,
        "keepalive": bool(declared.keepalive),
    }
    if declared.keepalive:
        wanted["keepalive_idle_s"] = declared.keepalive_idle_s
        wanted["keepalive_interval_s"] = declared.keepalive_interval_s
        wanted["keepalive_count"] = declared.keepalive_count
    for key, value in wanted.items():
        if value is not None and seen.get(key) != value:
            problems.append(f"socket {key} is {seen.get(key)!r}, the recipe says {value!r}")
    return problems


def fits(case: Mapping[str, Any]) -> bool:
    """Whether the measurement lies in the prediction (see the module's docstring)."""
    prediction = case["prediction"]
    if prediction is None:
        return False
    measured, low, high = case["measured_s"], prediction["low_s"], prediction["high_s"]
    survives = prediction.get("outcome") == "survives"
    recovered = case.get("recovered_s")
    if recovered is not None or survives:
        # A survivor fits when the model says it survives and the peer answered in its range.
        return survives and measured is None and recovered is not None and low <= recovered <= high
    if measured is None:
        # The lab's JSON says "never"; cookbook.json leaves both ends empty for it.
        never = prediction.get("never", low is None)
        return bool(never) or (case["observed_s"] is not None and case["observed_s"] < low)
    if low is None or high is None:
        return False
    return bool(low <= measured <= high)


def cookbook_case(
    recipe: Recipe, fault: Fault, mode: Mode, lab_case: Mapping[str, Any]
) -> dict[str, Any]:
    prediction = lab_case["prediction"]
    problems = []
    promised = recipe.verdicts[fault][mode]
    if lab_case["error"]:
        problems.append(f"the lab could not run it: {lab_case['error']}")
    else:
        if not fits(lab_case):
            problems.append("the measurement is outside its prediction")
        if lab_case["verdict"] != promised:
            problems.append(f"verdict {lab_case['verdict']}, the recipe promises {promised}")
        problems += socket_problems(recipe.socket, lab_case["options"])
    return {
        "name": mode,
        "fault": lab_case["fault"],
        "measured_s": lab_case["measured_s"],
        "recovered_s": lab_case.get("recovered_s"),
        "prediction": None
        if prediction is None
        else {
            "low_s": prediction["low_s"],
            "high_s": prediction["high_s"],
            "clock": prediction["clock"],
            "mechanism": prediction["mechanism"],
            "outcome": prediction.get("outcome", "fails"),
        },
        "verdict": lab_case["verdict"],
        "observed_s": lab_case["observed_s"],
        "seen_as": lab_case["mode"],
        "retransmissions": lab_case["retransmissions"],
        "socket": lab_case["options"],
        "quick": lab_case["quick"],
        "problems": problems,
    }


def build(
    recipes: Sequence[Recipe],
    lab: Mapping[str, Any],
    faults: Sequence[Fault] = FAULTS,
    path_idle_timeout_s: float | None = None,
) -> dict[str, Any]:
    """``out/cookbook.json`` from the recipes and the lab's JSON of their run under
    ``faults`` (``path_idle_timeout_s``: idle-expiry's, as the run had it)."""
    by_case = {(case["fault"], case["profile"]): case for case in lab["cases"]}
    entries = []
    for recipe in recipes:
        cases = []
        for fault in faults:
            for mode in recipe.modes(fault):
                lab_case = by_case.get((fault, recipe.name(mode)))
                if lab_case is None:
                    raise ValueError(f"the lab's run has no case {fault}/{recipe.name(mode)}")
                cases.append(cookbook_case(recipe, fault, mode, lab_case))
        entries.append(
            {
                "stack": recipe.stack,
                "library": recipe.library,
                "settings": recipe.settings,
                "options": recipe.options,
                "cases": cases,
            }
        )
    return {
        "kernel_release": lab["kernel_release"],
        "quick": lab["quick"],
        "wall_s": lab["wall_s"],
        "faults": list(faults),
        "path_idle_timeout_s": path_idle_timeout_s,
        "recipes": entries,
    }


def problems(cookbook: Mapping[str, Any]) -> list[str]:
    """Every case's problems, named."""
    found = []
    for recipe in cookbook["recipes"]:
        for case in recipe["cases"]:
            for problem in case["problems"]:
                name = f"{recipe['stack']} {recipe['settings']} {case['fault']} {case['name']}"
                found.append(f"{name}: {problem}")
    return found
