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
