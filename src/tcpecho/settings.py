"""How settings are validated, and the client's own deadlines.

Every setting is checked where it is defined, in the typed value that holds it
(``TcpOptions``, ``Deadlines``, the commands' configs), not in the command line's parameter
types, which only parse: a value built in code, in the lab or from a manifest is refused
the same way as one typed by a user. A refusal is a ``SettingError`` that names the setting
(``user_timeout``, ``interval``), so the command line can point at the option, or the
environment variable, that gave it.

``Deadlines`` are the client's application-level bounds. They sit here, beside the checks,
because the kernel model needs them as much as the client does.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpecho.durations import format_duration

_UNIT_NAMES = {0.000001: "microseconds", 0.001: "milliseconds", 1.0: "seconds"}


class SettingError(ValueError):
    """A setting with a value it cannot take; ``setting`` names it (``user_timeout``)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def check_range(setting: str, value: int | None, low: int, high: int | None = None) -> None:
    """A whole number within [low, high]."""
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise SettingError(setting, f"must be {bounds}, not {value}")


def check_duration(
    setting: str,
    seconds: float | None,
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
    step: float = 0.000001,
) -> None:
    """A duration within [minimum, maximum] and a whole number of ``step`` (1e-6, 1e-3 or 1)."""
    if seconds is None:
        return
    shown = format_duration(seconds)
    if seconds < 0:
        raise SettingError(setting, f"{shown} is negative: a duration must be 0 or more")
    steps = round(seconds * 1_000_000) / round(step * 1_000_000)
    if steps != int(steps):
        raise SettingError(setting, f"{shown} must be a whole number of {_UNIT_NAMES[step]}")
    if seconds < minimum:
        raise SettingError(setting, f"{shown} is below the minimum of {format_duration(minimum)}")
    if maximum is not None and seconds > maximum:
        raise SettingError(setting, f"{shown} is above the maximum of {format_duration(maximum)}")


# A gRPC server takes a ping without data at most this often unless told otherwise
# (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS), and closes the connection with
# GOAWAY "too_many_pings" after two more (grpc/doc/keepalive.md).
GRPC_SERVER_MIN_PING_INTERVAL_S = 300.0


@dataclass(frozen=True)
class Ping:
    """An application's own keepalive, as gRPC's HTTP/2 PING: one after ``interval_s`` without
    reading anything (every read restarts the wait), and the connection closed when its
    answer does not come within ``ack_timeout_s``.

    Measured with grpcio 1.85 (docs/cookbook.md): the ping's deadline is
    ``grpc.http2.ping_timeout_ms`` (60 s unless set), not ``grpc.keepalive_timeout_ms``, which
    acts only as the TCP_USER_TIMEOUT gRPC sets on the socket (in ``TcpOptions``, not here)."""

    interval_s: float
    ack_timeout_s: float
    without_calls: bool = False  # also on a connection with no call in flight (a pooled one)
    # After this many pings with no data sent between them, no more (gRPC's
    # grpc.http2.max_pings_without_data, 2 unless set); None: no limit (gRPC's 0).
    limit_without_data: int | None = None
    # The shortest interval between pings without data that the library's servers take by
    # default (gRPC's 5 min, GRPC_SERVER_MIN_PING_INTERVAL_S); None: they set none (Go's).
    server_min_interval_s: float | None = None

    def __post_init__(self) -> None:
        check_duration("ping_interval", self.interval_s, minimum=0.001, step=0.001)
        check_duration("ping_timeout", self.ack_timeout_s, minimum=0.001, step=0.001)
        check_range("ping_limit", self.limit_without_data, 1)

    @property
    def watches_idle(self) -> bool:
        """Whether the pings go on however long a call waits for its answer."""
        return self.limit_without_data is None


@dataclass(frozen=True)
class Deadlines:
    """The client's own bounds, whatever the kernel does; ``None`` sets none."""

    connect_timeout_s: float | None = None  # each connection attempt
    read_timeout_s: float | None = None  # each echo, from its send
    # A library's pings (gRPC's); tcpecho's own client has none, so no flag gives one.
    ping: Ping | None = None

    def __post_init__(self) -> None:
        check_duration("connect_timeout", self.connect_timeout_s, minimum=0.001)
        check_duration("read_timeout", self.read_timeout_s, minimum=0.001)

    def as_flags(self) -> tuple[str, ...]:
        """The ``tcpecho client`` flags that give these deadlines (a ping has none)."""
        flags: list[str] = []
        if self.connect_timeout_s is not None:
            flags += ["--connect-timeout", format_duration(self.connect_timeout_s)]
        if self.read_timeout_s is not None:
            flags += ["--read-timeout", format_duration(self.read_timeout_s)]
        return tuple(flags)
