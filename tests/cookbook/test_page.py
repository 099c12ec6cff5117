"""docs/cookbook.md's figures are docs/cookbook.json's, and that stored run is complete and
passes its own checks: every stack, busy and idle, every measurement in its range. These read a
file committed from an earlier run; they judge no library. ``nox -s cookbook`` runs the
recipes live and is what judges them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cookbook import results, table
from cookbook.recipes import RECIPES
from tcpecho.experiment import FaultTiming

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "docs" / "cookbook.md"
RUN = ROOT / "docs" / "cookbook.json"


def _run() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(RUN.read_text())
    return loaded


def test_the_page_shows_the_committed_run() -> None:
    assert table.between_markers(PAGE.read_text()) == table.render(_run())


def test_the_stored_run_is_complete_and_passes_its_checks() -> None:
    """The committed docs/cookbook.json, as recorded: nothing here runs a library."""
    run = _run()
    assert results.problems(run) == []
    recorded = {(r["stack"], r["settings"]) for r in run["recipes"]}
    assert recorded == {(r.stack, r.settings) for r in RECIPES}
    assert len({stack for stack, _ in recorded}) >= 5
    assert run["faults"] == ["force-delete", "idle-expiry"]
    assert run["path_idle_timeout_s"] == FaultTiming().path_idle_timeout_s  # the lab's
    for recipe in run["recipes"]:
        assert set(recipe) >= {"library", "settings", "cases"}
        assert [(case["fault"], case["name"]) for case in recipe["cases"]] == [
            (fault, mode) for fault in run["faults"] for mode in ("busy", "idle")
        ]
        for case in recipe["cases"]:
            assert case["verdict"] in ("hang", "detected", "survived")
            assert set(case["prediction"]) >= {"low_s", "high_s", "outcome"}
            assert results.fits(case), case


def test_the_stored_run_shows_the_recommended_settings_surviving_the_idle_timeout() -> None:
    """What the page says of idle-expiry (the recommended settings keep their flow, some
    defaults do not), as the stored run recorded it."""
    verdicts = {
        (r["stack"], r["settings"], c["fault"], c["name"]): c["verdict"]
        for r in _run()["recipes"]
        for c in r["cases"]
    }
    for (_, settings, fault, _), verdict in verdicts.items():
        if settings == "recommended" and fault == "idle-expiry":
            assert verdict == "survived"
    lost = {k[:2] for k, v in verdicts.items() if k[2] == "idle-expiry" and v != "survived"}
    assert ("python-socket", "defaults") in lost
    assert ("redis-py", "defaults") in lost  # 30 s keepalive: past the 15 s timeout


def test_the_table_goes_between_the_markers_and_nowhere_else() -> None:
    page = f"intro\n{table.BEGIN}\nold\n{table.END}\noutro\n"
    assert table.update(page, "new") == f"intro\n{table.BEGIN}\nnew\n{table.END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        table.update("no markers here", "new")


def test_a_bad_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "cookbook.json"
    broken.write_text("{}")
    with pytest.raises(SystemExit) as exited:
        table.main([str(broken)])
    assert exited.value.code == 2
    assert "cookbook.json" in capsys.readouterr().err
