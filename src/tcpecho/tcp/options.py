"""TcpOptions: every TCP socket option tcpecho sets, each described once, and all that follows
from the description: validation, ``apply``, the read-back (``read_effective``), the
client's flags (``as_flags``), the command line's options (``cli.options``) and the summary
``watch`` shows.

A field of ``TcpOptions`` is one option. Its value is in the kernel's own unit, the one
setsockopt takes, getsockopt returns and the logs report (``user_timeout_ms``,
``keepalive_idle_s``); its metadata is the ``SocketOption`` that describes it: the kernel's
level and constant, the kind and unit, the bounds, whether only a connecting socket uses
it, the switch it tunes, its help line. The setting's name is the field's without its unit
(``user_timeout``): its errors name it, its flag is ``--user-timeout`` and its environment
variable ``TCPECHO_<COMMAND>_USER_TIMEOUT``. Adding an option is adding a field here, its
line in docs/tcp-options.md and its line in tests/tcp/test_options.py.

The client applies the options to its socket before ``connect`` (TCP_SYNCNT only matters
then); the server applies them to its listening socket, and Linux copies them to every
connection it accepts. ``read_effective`` asks the kernel what a socket really uses, which
is what the logs report: a value the user asked for but the kernel did not take would
otherwise go unnoticed.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from tcpecho.durations import format_duration
from tcpecho.settings import SettingError, check_duration, check_range

Kind = Literal["duration", "count", "switch"]
_UNIT_SUFFIXES = {0.001: "_ms", 1.0: "_s"}  # a duration field's name ends in its unit


class SocketLike(Protocol):
    """What is needed of a socket: stdlib sockets and uvloop's PseudoSocket both fit."""

    @property
    def family(self) -> int: ...

    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...

    def getsockopt(self, level: int, option: int, /) -> int: ...


class Constant(NamedTuple):
    """A socket option as the kernel names it, and its number where Python lacks the name."""

    level: int
    name: str  # TCP_USER_TIMEOUT
    linux_number: int | None = None  # Linux's number, for a name Python's socket module lacks

    def number(self, platform: object = socket) -> int | None:
        """The option's number on this platform; None where it cannot be set."""
        number = getattr(platform, self.name, None)
        if number is None and sys.platform.startswith("linux"):
            return self.linux_number
        return number if isinstance(number, int) else None


class SocketOption(NamedTuple):
    """One option, described once. ``field`` is filled in from the field it describes.

    A named tuple rather than a dataclass: the command line imports these descriptions for
    ``--help``, and a tuple class costs a fraction of a frozen dataclass to create."""

    constant: Constant
    kind: Kind
    help: str  # what it does, for --help; the bounds are added from low and high
    unit_s: float = 1.0  # a duration's kernel unit in seconds (0.001: milliseconds)
    low: int = 0
    high: int | None = None
    ipv6: Constant | None = None  # its IPv6 twin: set too, and read instead, on IPv6 sockets
    connecting: bool = False  # only a connecting socket uses it: not set on a listener
    tunes: str | None = None  # the switch it tunes: setting it turns that switch on
    command_line: bool = True  # the commands take it as a flag (TCP_NODELAY is always on)
    summary: bool = False  # shown by watch when it is on: it changes when the kernel gives up
    field: str = ""

    @property
    def setting(self) -> str:
        """``user_timeout``: what errors name, and the flag and variable are made of."""
        if self.is_duration:
            return self.field.removesuffix(_UNIT_SUFFIXES[self.unit_s])
        return self.field

    @property
    def is_duration(self) -> bool:
        return self.kind == "duration"

    @property
    def flag(self) -> str:
        return "--" + self.setting.replace("_", "-")

    @property
    def help_line(self) -> str:
        """``TCP_KEEPCNT: unanswered probes before giving up (1-127).``"""
        bounds = ""
        if self.kind == "count" and self.high is not None:
            bounds = f" ({self.low}-{self.high})"
        elif self.is_duration and self.unit_s == 1:
            bounds = " (whole seconds)"
        return f"{self.constant.name}: {self.help}{bounds}."

    @property
    def tuned_by(self) -> tuple[SocketOption, ...]:
        """The options that tune this switch (keepalive's idle time, interval and count)."""
        return _TUNED_BY[self.field]

    def targets(self, family: int) -> tuple[tuple[int, int], ...]:
        """(level, number) of what ``apply`` sets on a socket of ``family``: the IPv6 twin
        too on IPv6 sockets."""
        return _TARGETS[self.field][family == socket.AF_INET6]

    def source(self, family: int) -> tuple[int, int] | None:
        """(level, number) of what a socket of ``family`` is asked; None: this platform
        lacks the option."""
        return _SOURCES[self.field][family == socket.AF_INET6]

    def check(self, value: int | bool | None) -> None:
        """A value in the kernel's unit, within the kernel's bounds."""
        if self.kind != "switch":
            check_range(self.setting, value, self.low, self.high)

    def from_user(self, value: float | int | bool | None) -> int | bool | None:
        """What a user gave (a duration in seconds, a count, a switch) in the kernel's unit,
        checked for what the kernel can take: a whole number of the unit, within bounds."""
        if value is None or isinstance(value, bool):
            return value
        if not self.is_duration:
            return int(value)
        maximum = None if self.high is None else self.high * self.unit_s
        minimum = self.low * self.unit_s
        check_duration(self.setting, value, minimum=minimum, maximum=maximum, step=self.unit_s)
        return round(value / self.unit_s)

    def text(self, value: int | bool) -> str:
        """The value as a user writes it: ``30s``, ``3``, ``true``."""
        if self.is_duration:
            return format_duration(value * self.unit_s)
        if self.kind == "switch":
            return "true" if value else "false"
        return str(value)

    def flags(self, value: int | bool | None) -> list[str]:
        """The ``tcpecho client`` flags that ask for ``value``."""
        if value is None or not self.command_line:
            return []
        if self.kind == "switch":
            return [self.flag if value else "--no-" + self.flag[2:]]
        return [self.flag, self.text(value)]


def _described(option: SocketOption, default: bool | None = None) -> Any:
    return field(default=default, metadata={"option": option})


_TCP = socket.IPPROTO_TCP


@dataclass(frozen=True)
class TcpOptions:
    """Socket options requested by the user; ``None`` leaves the kernel's default.

    Refuses a value the kernel would refuse or ignore with ``SettingError``."""

    nodelay: bool | None = _described(
        SocketOption(
            Constant(_TCP, "TCP_NODELAY"),
            "switch",
            "send each write at once (always on: an echo must not wait)",
            command_line=False,
        ),
        default=True,
    )
    user_timeout_ms: int | None = _described(
        SocketOption(
            Constant(_TCP, "TCP_USER_TIMEOUT"),
            "duration",
            "give up when sent data stays unacknowledged this long (0s: kernel default). "
            "Bounds the ~15 min retransmission hang",
            unit_s=0.001,
            high=2**31 - 1,  # an int of milliseconds
            summary=True,
        )
    )
    keepalive: bool | None = _described(
        SocketOption(
            Constant(socket.SOL_SOCKET, "SO_KEEPALIVE"),
            "switch",
            "probe an idle connection. Detects a dead peer only while no data is "
            "unacknowledged. Default: the socket's default (off)",
            summary=True,
        )
    )
    keepalive_idle_s: int | None = _described(
        SocketOption(
            Constant(_TCP, "TCP_KEEPIDLE"),
            "duration",
            "idle time before the first probe",
            low=1,
            high=32767,  # MAX_TCP_KEEPIDLE
            tunes="keepalive",
        )
    )
    keepalive_interval_s: int | None = _described(
        SocketOption(
            Constant(_TCP, "TCP_KEEPINTVL"),
            "duration",
            "time between probes",
            low=1,
            high=32767,  # MAX_TCP_KEEPINTVL
            tunes="keepalive",
        )
    )
    keepalive_count: int | None = _described(
        SocketOption(
            Constant(_TCP, "TCP_KEEPCNT"),
            "count",
            "unanswered probes before giving up",
            low=1,
            high=127,  # MAX_TCP_KEEPCNT
            tunes="keepalive",
        )
    )
    syn_retries: int | None = _described(
        SocketOption(
            Constant(_TCP, "TCP_SYNCNT"),
            "count",
            "SYN retransmissions before connect gives up",
            low=1,
            high=127,  # MAX_TCP_SYNCNT (setsockopt refuses 128 to 255 with EINVAL)
            connecting=True,
        )
    )
    recverr: bool | None = _described(
        SocketOption(
            Constant(socket.IPPROTO_IP, "IP_RECVERR", linux_number=11),
            "switch",
            "an ICMP unreachable ends the connection at once instead of after the retransmissions",
            # An IPv6 socket may carry IPv4 traffic (dual stack): ICMPv4 errors for it are
            # reported through IP_RECVERR, so both are set there.
            ipv6=Constant(socket.IPPROTO_IPV6, "IPV6_RECVERR", linux_number=25),
            summary=True,
        )
    )

    def __post_init__(self) -> None:
        for option in OPTIONS:
            option.check(getattr(self, option.field))
        for switch in OPTIONS:
            if getattr(self, switch.field) is False and self._any_set(switch.tuned_by):
                flags = [o.flag for o in switch.tuned_by]
                raise SettingError(
                    switch.setting,
                    f"{', '.join(flags[:-1])} and {flags[-1]} need {switch.setting}, "
                    f"but --no-{switch.flag[2:]} was given",
                )
        missing = self.unsupported()
        if missing:
            setting = next(o.setting for o in OPTIONS if o.constant.name == missing[0])
            raise SettingError(
                setting,
                f"this platform cannot set {', '.join(missing)}; leave out the option(s) "
                "that need it",
            )

    @classmethod
    def from_user(cls, given: Mapping[str, float | int | bool | None]) -> TcpOptions:
        """From what a user gave, by setting name (``user_timeout``: 30.0 seconds), each
        checked for what the kernel can take (whole milliseconds, whole seconds)."""
        values: dict[str, Any] = {
            option.field: option.from_user(given[option.setting])
            for option in OPTIONS
            if option.setting in given
        }
        return cls(**values)

    def _any_set(self, options: tuple[SocketOption, ...]) -> bool:
        return any(getattr(self, option.field) is not None for option in options)

    def applied(self, option: SocketOption) -> int | bool | None:
        """The value ``apply`` sets: a switch left unset is turned on by tuning it, as users
        expect (``--keepalive-idle 10s`` alone turns keepalive on)."""
        value: int | bool | None = getattr(self, option.field)
        if value is None and option.kind == "switch":
            return True if self._any_set(option.tuned_by) else None
        return value

    @property
    def keepalive_enabled(self) -> bool | None:
        """Keepalive as applied: tuning it switches it on."""
        return bool(value) if (value := self.applied(KEEPALIVE)) is not None else None

    def as_flags(self) -> tuple[str, ...]:
        """The ``tcpecho client`` flags that ask for exactly these options."""
        return tuple(flag for o in OPTIONS for flag in o.flags(getattr(self, o.field)))

    def as_dict(self) -> dict[str, int | bool | None]:
        # Every value is an int, a bool or None: a shallow copy is the same as
        # dataclasses.asdict, without its recursive deep copy (once per accepted connection).
        return dict(vars(self))

    def summary(self) -> str:
        """The options that are on and change when the kernel gives up, as watch shows
        them: ``user_timeout=5s keepalive=10s/1s/3``; ``defaults`` when none is."""
        parts = []
        for option in OPTIONS:
            value = self.applied(option)
            if not option.summary or not value:
                continue
            shown = option.setting
            if option.kind == "switch":
                tuning = option.tuned_by
                values = [o.text(v) for o in tuning if (v := getattr(self, o.field)) is not None]
                shown += ("=" + "/".join(values)) if values else ""
            else:
                shown += "=" + option.text(value)
            parts.append(shown)
        return " ".join(parts) or "defaults"

    def unsupported(self, platform: object = socket) -> list[str]:
        """Names of requested options this platform's socket module cannot set."""
        return [
            option.constant.name
            for option in OPTIONS
            if getattr(self, option.field) is not None and option.constant.number(platform) is None
        ]

    def without_connect_options(self) -> TcpOptions:
        """The subset that makes sense on a listening socket (SYN retries are the client's)."""
        return dataclasses.replace(self, **{o.field: None for o in OPTIONS if o.connecting})

    def apply(self, sock: SocketLike) -> None:
        """Set every requested option on ``sock``; call before connect or listen."""
        family = sock.family
        for option in OPTIONS:
            value = self.applied(option)
            if value is not None:  # __post_init__ refused what this platform cannot set
                for level, number in option.targets(family):
                    sock.setsockopt(level, number, int(value))


OPTIONS: tuple[SocketOption, ...] = tuple(
    f.metadata["option"]._replace(field=f.name) for f in dataclasses.fields(TcpOptions)
)
KEEPALIVE = next(option for option in OPTIONS if option.field == "keepalive")


def _numbered(*constants: Constant | None) -> tuple[tuple[int, int], ...]:
    """(level, number) of each constant this platform has."""
    numbered = [(c.level, c.number()) for c in constants if c is not None]
    return tuple((level, number) for level, number in numbered if number is not None)


# Worked out once, from the descriptions: apply and read_effective run once per connection.
_TUNED_BY = {o.field: tuple(t for t in OPTIONS if t.tunes == o.field) for o in OPTIONS}
_TARGETS = {o.field: (_numbered(o.constant), _numbered(o.constant, o.ipv6)) for o in OPTIONS}
_SOURCES = {
    o.field: (
        next(iter(_numbered(o.constant)), None),
        next(iter(_numbered(o.ipv6 or o.constant)), None),
    )
    for o in OPTIONS
}


class EffectiveOptions(TcpOptions):
    """What the kernel reports for a socket: every option it has, filled in, the kernel's
    defaults included (``user_timeout_ms`` 0, ``keepalive_idle_s`` 7200); None only where
    this platform lacks the option. A report is never refused: a namespace's sysctls may
    hold what no socket could be given.

    The same fields, so not a dataclass of its own: TcpOptions' ``__init__``, ``__eq__`` and
    ``__repr__`` serve it (each compares and names the class it is called on)."""

    def __post_init__(self) -> None:
        pass


def read_effective(sock: SocketLike) -> EffectiveOptions:
    """Read every option back with getsockopt."""
    family = sock.family
    values: dict[str, Any] = {}
    for option in OPTIONS:
        source = option.source(family)
        raw = None if source is None else sock.getsockopt(*source)
        values[option.field] = bool(raw) if option.kind == "switch" and raw is not None else raw
    return EffectiveOptions(**values)
