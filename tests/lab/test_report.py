"""The lab report: table rows, JSON and chart from case results."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tcpecho.experiment import Case, Fault, Profile, Result
from tcpecho.lab.profiles import PROFILES
from tcpecho.lab.report import (
    RunInfo,
    counted,
    plot,
    render,
    render_table,
    row,
    to_json,
    write_json,
)
from tcpecho.model import Activity, Mechanism, Prediction
from tcpecho.tcp.options import EffectiveOptions
from tests.support import read_table

INFO = RunInfo(wall_s=41.5, quick_note="shortened", sysctl_note=None, kernel_release="6.18")


def _result(**changes: object) -> Result:
    result = Result(
        Case(Fault.FORCE_DELETE, PROFILES["user-timeout"], Activity.ACTIVE),
        prediction=Prediction(5.39, 6.04, "request", Mechanism.USER_TIMEOUT, ("ETIMEDOUT",)),
        measured_s=5.43,
        measured_clock="request",
        errno="ETIMEDOUT",
        retransmissions=5,
        observed_s=5.9,
        fault_at=1.0,
    )
    for key, value in changes.items():
        setattr(result, key, value)
    return result


def test_a_row_says_what_was_expected_and_measured() -> None:
    assert row(_result()) == {
        "fault": "force-delete",
        "profile": "user-timeout",
        "mode": "active",
        "expected": "5.39-6.04 s",
        "measured": "5.43 s",
        "from": "request",
        "error": "ETIMEDOUT",
        "retrans": "5",
        "verdict": "detected",
        "model": "ok",
    }
    hang = row(_result(measured_s=None, errno=None, observed_s=17.8, quick=True))
    assert (hang["measured"], hang["from"], hang["expected"]) == (
        "none in 17.8 s",
        "-",
        "5.39-6.04 s *",
    )
    assert row(_result(measured_s=9.0))["model"] == "MISS"
    assert row(_result(errno="ECONNRESET"))["model"] == "MISS"
    assert row(_result(measured_s=929.4))["measured"] == "929 s (15m29s)"


def test_table_columns_line_up() -> None:
    table = render_table([{"a": "1", "b": "long value"}, {"a": "22", "b": "x"}], columns=("a", "b"))
    assert table.splitlines() == ["a   b", "--  ----------", "1   long value", "22  x"]


def test_report_flags_misses_and_shows_conntrack() -> None:
    text = render([_result(), _result(measured_s=9.0, conntrack=["tcp ESTABLISHED ..."])], INFO)
    assert "model: 1 case outside the predicted range (MISS)" in text
    assert "tcp ESTABLISHED ..." in text
    # The note on --quick is a footnote to * only when a case carries the mark.
    assert "shortened" in text.splitlines()
    assert "* shortened" in render([_result(), _result(quick=True)], INFO).splitlines()


def test_the_model_is_praised_only_for_cases_that_were_measured() -> None:
    """Every case an error: the footer must not say every measurement fitted (there was
    none); some errors beside fitting measurements are counted, not hidden."""
    failed = _result(error="starting: timed out", measured_s=None, errno=None)
    text = render([failed, failed], INFO)
    assert "model: nothing measured (2 cases could not run)" in text.splitlines()
    assert "within its predicted range" not in text
    text = render([_result(), failed], INFO)
    assert (
        "model: every measurement within its predicted range; 1 case could not run"
        in text.splitlines()
    )
    text = render([_result(), _result(measured_s=9.0), failed], INFO)
    assert "model: 1 case outside the predicted range (MISS); 1 case could not run" in text
    assert "model: every measurement within its predicted range" in render([_result()], INFO)


def test_counts_are_in_the_right_number() -> None:
    assert [counted(n, "case") for n in (0, 1, 2)] == ["0 cases", "1 case", "2 cases"]
    assert render([_result()], INFO).startswith("tcpecho lab: 1 case in 41.5 s wall")
    assert render([_result(), _result()], INFO).startswith("tcpecho lab: 2 cases in")


def test_other_programs_words_are_shown_escaped_and_kept_whole_in_the_json() -> None:
    """A program's last line, which a case's error quotes, is another program's text: the
    table and the notes show its control characters as ps does."""
    error = "starting: 'socat' exited with status 1: \x1b[2J\x1b[31mEVIL\x07"
    failed = _result(error=error, measured_s=None)
    shown = "starting: 'socat' exited with status 1: ?[2J?[31mEVIL?"
    assert row(failed)["measured"] == f"error: {shown}"
    text = render([failed], INFO)
    assert f"could not run force-delete/user-timeout/active: {shown}" in text
    assert "\x1b" not in text
    assert "\x07" not in text
    assert to_json([failed], INFO)["cases"][0]["error"] == error


def test_json_has_every_case_with_its_prediction(tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    write_json([_result(client_events=[{"event": "connected"}])], INFO, path)
    document = json.loads(path.read_text())
    assert document == to_json([_result(client_events=[{"event": "connected"}])], INFO)
    (case,) = document["cases"]
    assert case["prediction"]["mechanism"] == "user_timeout"
    assert case["client_args"] == ["--user-timeout", "5s"]
    assert case["client_events"] == [{"event": "connected"}]
    never = to_json(
        [
            _result(
                prediction=Prediction(
                    float("inf"), float("inf"), "last-data", Mechanism.NOTHING, ()
                )
            )
        ],
        INFO,
    )
    assert never["cases"][0]["prediction"]["high_s"] is None


def test_plot_draws_a_png(tmp_path: Path) -> None:
    path = tmp_path / "lab.png"
    plot([_result(), _result(measured_s=None)], INFO, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_a_table_reads_back_as_rows() -> None:
    """The helper the end-to-end tests read the lab's table with."""
    text = render([_result(), _result(quick=True, measured_s=None, observed_s=17.8)], INFO)
    rows = read_table(text)
    assert [row["expected"] for row in rows] == ["5.39-6.04 s", "5.39-6.04 s *"]
    assert rows[1]["measured"] == "none in 17.8 s"
    assert rows[0] == row(_result())


def test_the_options_read_from_a_programs_socket_are_under_the_table() -> None:
    """Not only in --json: one line a program, as watch's OPTIONS column shows them."""

    def program(name: str, fault: Fault, options: EffectiveOptions | None) -> Result:
        case = Case(fault, Profile(name, command="socat ..."), Activity.ACTIVE)
        return _result(case=case, options=None if options is None else options.as_dict())

    # What the kernel reports for a socket with nothing set (read_effective's values).
    plain = EffectiveOptions(
        nodelay=False, user_timeout_ms=0, keepalive=False, keepalive_idle_s=7200,
        keepalive_interval_s=75, keepalive_count=9, syn_retries=6, recverr=False,
    )  # fmt: skip
    bounded = replace(plain, user_timeout_ms=5000)
    probing = replace(plain, keepalive=True, keepalive_idle_s=10, keepalive_interval_s=1,
                      keepalive_count=3)  # fmt: skip
    results = [
        _result(),  # tcpecho's own client: its profile says what it sets
        program("socat", Fault.FORCE_DELETE, plain),
        program("socat-user-timeout", Fault.FORCE_DELETE, bounded),
        program("socat-keepalive", Fault.FORCE_DELETE, probing),
        program("socat-keepalive", Fault.KILL, plain),
    ]
    lines = render(results, INFO).splitlines()
    at = lines.index("options read from each program's socket (as tcpecho watch shows them):")
    assert lines[at + 1 : at + 4] == [
        "  socat               defaults",
        "  socat-user-timeout  user_timeout=5s",
        "  socat-keepalive     keepalive=10s/1s/3 (force-delete); defaults (kill)",
    ]
    assert lines[at + 4 :] == []  # tcpecho's own client is not listed: its profile says it
    assert "options read" not in render([_result()], INFO)


def test_an_interrupted_case_is_neither_measured_nor_held_to_the_model() -> None:
    stopped = RunInfo(wall_s=12.0, quick_note=None, sysctl_note=None, kernel_release="6.18")
    stopped = replace(stopped, stopped_by="SIGINT")
    waiting = _result(interrupted=True, measured_s=None, errno=None, observed_s=9.3)
    early = _result(interrupted=True, measured_s=None, errno=None, observed_s=None)
    cells = row(waiting)
    assert (cells["measured"], cells["verdict"], cells["model"]) == (
        "interrupted 9.30 s after the fault",
        "interrupted",
        "-",
    )
    assert row(early)["measured"] == "interrupted before the fault"
    lines = render([_result(), waiting, early], stopped).splitlines()
    assert "model: every measurement within its predicted range; 2 cases interrupted" in lines
    assert (
        "interrupted: SIGINT stopped the run before 2 cases of 3 had finished (verdict interrupted)"
    ) in lines
    assert "model: nothing measured (1 case interrupted)" in render([waiting], stopped)
    document = to_json([_result(), waiting], stopped)
    assert document["stopped_by"] == "SIGINT"
    assert [case["verdict"] for case in document["cases"]] == ["detected", "interrupted"]
    assert to_json([_result()], INFO)["stopped_by"] is None
