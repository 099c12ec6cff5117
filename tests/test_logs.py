"""The JSON log line: what a machine reading tcpecho's stdout may rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

PROGRAM = """
from tcpecho import logs
logs.configure("json", "debug")
log = logs.get_logger()
log.info("first", count=1, nested={"a": None}, odd=object())
log.warning("second")
log.warn("third")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("fourth")
"""


def test_json_lines_lead_with_time_level_event_and_keep_every_field() -> None:
    before = datetime.now(UTC)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=60
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["first", "second", "third", "fourth"]
    assert [line["level"] for line in lines] == ["info", "warning", "warning", "error"]
    for line in lines:
        assert list(line)[:3] == ["timestamp", "level", "event"]
        assert line["timestamp"].endswith("Z")
        stamped = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert before <= stamped <= datetime.now(UTC)
    first = lines[0]
    assert first["count"] == 1
    assert first["nested"] == {"a": None}
    assert first["odd"].startswith("<object object at ")  # what JSON has no type for: its repr
    assert "ZeroDivisionError: division by zero" in lines[3]["exception"]
    assert "exc_info" not in lines[3]


DROPPING = """
from tcpecho import events, logs
from tcpecho.streams import STDOUT_OUTPUT
logs.configure("json", "info", report_dropped=events.report_lines_dropped)
log = logs.get_logger()
STDOUT_OUTPUT._writable = lambda timeout_s: False  # stdout stops taking lines
for number in range(3):
    log.info("lost", number=number)
del STDOUT_OUTPUT._writable  # and takes them again
log.info("back")
log.info("after")
"""


def test_a_burst_of_dropped_lines_is_reported_once_lines_get_through_again() -> None:
    """The reporter handed to ``configure`` (the commands hand ``events``'): after the first
    line that gets through, ``log_lines_dropped`` with the burst's count and the total."""
    done = subprocess.run(
        [sys.executable, "-c", DROPPING], capture_output=True, text=True, check=True, timeout=60
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["back", "log_lines_dropped", "after"]
    reported = lines[1]
    assert reported["level"] == "warning"
    assert (reported["dropped"], reported["dropped_total"]) == (3, 3)
    assert "stdout: not being read: lines are dropped until it is" in done.stderr
