"""The experiment model: one verdict rule and one measurement for the lab and the cluster run."""

from __future__ import annotations

import pytest

from tcpecho.events import ConnectionFailed
from tcpecho.experiment import Case, Fault, Profile, Result, Verdict, judge
from tcpecho.model import Activity, KernelSettings, predict
from tcpecho.settings import Deadlines
from tcpecho.tcp.info import TcpInfo
from tcpecho.tcp.options import TcpOptions

USER_TIMEOUT = Profile("user-timeout", TcpOptions(user_timeout_ms=30_000))
DEFAULT = Profile("default")


def _result(profile: Profile, fault: Fault = Fault.FORCE_DELETE, **fields: object) -> Result:
    prediction = predict(
        KernelSettings(), profile.tcp, fault.failure, Activity.ACTIVE, profile.deadlines
    )
    result = Result(Case(fault, profile, Activity.ACTIVE), prediction=prediction)
    for key, value in fields.items():
        setattr(result, key, value)
    return result


@pytest.mark.parametrize(
    ("profile", "fault", "measured", "errno", "verdict", "matches"),
    [
        (USER_TIMEOUT, Fault.FORCE_DELETE, None, None, Verdict.HANG, False),  # never noticed
        (DEFAULT, Fault.FORCE_DELETE, 939.0, "ETIMEDOUT", Verdict.HANG, True),  # the budget
        (USER_TIMEOUT, Fault.FORCE_DELETE, 30.43, "ETIMEDOUT", Verdict.DETECTED, True),
        (USER_TIMEOUT, Fault.FORCE_DELETE, 30.43, "EOF", Verdict.DETECTED, False),  # wrong errno
        (USER_TIMEOUT, Fault.FORCE_DELETE, 45.0, "ETIMEDOUT", Verdict.DETECTED, False),
        (DEFAULT, Fault.KILL, 0.2, "EOF", Verdict.FAST, True),
    ],
)
def test_judge_gives_one_verdict_for_every_run(
    profile: Profile,
    fault: Fault,
    measured: float | None,
    errno: str | None,
    verdict: Verdict,
    matches: bool,
) -> None:
    result = _result(profile, fault, measured_s=measured, errno=errno)
    assert judge(result) == (verdict, matches)
    assert (result.verdict, result.matches) == (verdict, matches)


def test_a_case_that_could_not_run_is_an_error() -> None:
    assert judge(_result(DEFAULT, error="starting: timed out")) == (Verdict.ERROR, False)
    assert judge(Result(Case(Fault.KILL, DEFAULT, Activity.IDLE))) == (Verdict.ERROR, False)


def _failed(**fields: object) -> ConnectionFailed:
    values: dict[str, object] = {
        "phase": "request",
        "errno": "ETIMEDOUT",
        "error": "[Errno 110] Connection timed out",
        "seq": 4,
        "detection_s": 30.41,
        "since_last_response_s": 33.2,
        "tcp_info": None,
    }
    values.update(fields)
    return ConnectionFailed(**values)  # type: ignore[arg-type]


def test_record_takes_the_predictions_clock() -> None:
    active = _result(USER_TIMEOUT)
    active.record(_failed(), since_fault_s=31.0)
    assert (active.measured_s, active.measured_clock, active.errno) == (
        30.41,
        "request",
        "ETIMEDOUT",
    )
    idle_profile = Profile("keepalive", TcpOptions(keepalive_idle_s=10, keepalive_count=3))
    idle = Result(
        Case(Fault.FORCE_DELETE, idle_profile, Activity.IDLE),
        prediction=predict(
            KernelSettings(), idle_profile.tcp, Fault.FORCE_DELETE.failure, Activity.IDLE
        ),
    )
    idle.record(_failed(phase="idle", detection_s=None, since_last_response_s=13.1))
    assert (idle.measured_s, idle.measured_clock) == (13.1, "last-data")


def test_record_falls_back_to_the_fault_and_keeps_the_retransmissions() -> None:
    killed = _result(DEFAULT, Fault.KILL)  # predicted on the fault's clock
    info = TcpInfo("CLOSE", 0, 0, 0, 204.0, 0, 0, 2, 0.1, 0.1, 10, 20, 20)
    killed.record(_failed(errno="EOF", phase="idle", detection_s=None, tcp_info=info), 0.05)
    assert (killed.measured_s, killed.measured_clock, killed.retransmissions) == (0.05, "fault", 2)


def test_a_profile_with_deadlines_is_judged_by_them() -> None:
    profile = Profile("mitigated", TcpOptions(user_timeout_ms=30_000), Deadlines(read_timeout_s=10))
    result = _result(profile, measured_s=10.01, errno="READ_TIMEOUT")
    assert (result.verdict, result.matches) == (Verdict.DETECTED, True)


def test_a_case_watched_for_less_than_the_earliest_prediction_is_not_a_miss() -> None:
    """The kernel's 2 h keepalive, watched for minutes: nothing yet is what the model says;
    nothing after the model's latest time would be a miss."""
    waited_less = _result(USER_TIMEOUT, Fault.FORCE_DELETE, measured_s=None, observed_s=10.0)
    waited_long = _result(USER_TIMEOUT, Fault.FORCE_DELETE, measured_s=None, observed_s=300.0)
    assert judge(waited_less) == (Verdict.HANG, True)
    assert judge(waited_long) == (Verdict.HANG, False)
