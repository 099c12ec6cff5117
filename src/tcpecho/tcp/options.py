"""TcpOptions: the one place that validates, applies and reads back TCP socket options.

Server, client, load generator, lab and kernel model share it; the command line builds it
from durations (``from_durations``), and it renders itself back to the client's flags
(``as_flags``) for the lab and the manifests: the flags are never parsed back.

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
from dataclasses import dataclass
from typing import Protocol

from tcpecho.durations import format_duration
from tcpecho.settings import SettingError, check_duration, check_range

# Kernel limits (include/net/tcp.h and the setsockopt handlers): values outside them are
# refused with EINVAL, so they are refused here first with a message that names them.
USER_TIMEOUT_MAX_MS = 2**31 - 1
KEEPALIVE_TIME_MAX_S = 32767  # MAX_TCP_KEEPIDLE and MAX_TCP_KEEPINTVL
KEEPALIVE_COUNT_MAX = 127  # MAX_TCP_KEEPCNT
SYN_RETRIES_MAX = 255  # MAX_TCP_SYNCNT

# Linux option numbers that Python's socket module names only in newer versions.
IP_RECVERR: int = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR: int = getattr(socket, "IPV6_RECVERR", 25)


# The setting each socket option comes from, for errors that name it.
_SETTING_OF = {
    "TCP_USER_TIMEOUT": "user_timeout",
    "TCP_KEEPIDLE": "keepalive_idle",
    "TCP_KEEPINTVL": "keepalive_interval",
    "TCP_KEEPCNT": "keepalive_count",
    "TCP_SYNCNT": "syn_retries",
    "IP_RECVERR": "recverr",
}


class SocketLike(Protocol):
    """What is needed of a socket: stdlib sockets and uvloop's PseudoSocket both fit."""

    @property
    def family(self) -> int: ...

    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...

    def getsockopt(self, level: int, option: int, /) -> int: ...


@dataclass(frozen=True)
class TcpOptions:
    """Socket options requested by the user; ``None`` leaves the kernel's default."""

    user_timeout_ms: int | None = None
    keepalive: bool | None = None
    keepalive_idle_s: int | None = None
    keepalive_interval_s: int | None = None
    keepalive_count: int | None = None
    syn_retries: int | None = None
    recverr: bool = False
    nodelay: bool = True

    def __post_init__(self) -> None:
        check_range("user_timeout", self.user_timeout_ms, 0, USER_TIMEOUT_MAX_MS)
        check_range("keepalive_idle", self.keepalive_idle_s, 1, KEEPALIVE_TIME_MAX_S)
        check_range("keepalive_interval", self.keepalive_interval_s, 1, KEEPALIVE_TIME_MAX_S)
        check_range("keepalive_count", self.keepalive_count, 1, KEEPALIVE_COUNT_MAX)
        check_range("syn_retries", self.syn_retries, 1, SYN_RETRIES_MAX)
        if self.keepalive is False and self._keepalive_tuned():
            raise SettingError(
                "keepalive",
                "--keepalive-idle, --keepalive-interval and --keepalive-count "
                "need keepalive, but --no-keepalive was given",
            )
        missing = self.unsupported()
        if missing:
            raise SettingError(
                _SETTING_OF[missing[0]],
                f"this platform cannot set {', '.join(missing)}; leave out the option(s) "
                "that need it",
            )

    @classmethod
    def from_durations(
        cls,
        *,
        user_timeout_s: float | None = None,
        keepalive: bool | None = None,
        keepalive_idle_s: float | None = None,
        keepalive_interval_s: float | None = None,
        keepalive_count: int | None = None,
        syn_retries: int | None = None,
        recverr: bool = False,
    ) -> TcpOptions:
        """From durations in seconds, checked for what the kernel can take: TCP_USER_TIMEOUT
        in whole milliseconds, the keepalive times in whole seconds."""
        check_duration(
            "user_timeout", user_timeout_s, maximum=USER_TIMEOUT_MAX_MS / 1000, step=0.001
        )
        for setting, seconds in (
            ("keepalive_idle", keepalive_idle_s),
            ("keepalive_interval", keepalive_interval_s),
        ):
            check_duration(setting, seconds, minimum=1, maximum=KEEPALIVE_TIME_MAX_S, step=1)
        return cls(
            user_timeout_ms=None if user_timeout_s is None else round(user_timeout_s * 1000),
            keepalive=keepalive,
            keepalive_idle_s=None if keepalive_idle_s is None else round(keepalive_idle_s),
            keepalive_interval_s=(
                None if keepalive_interval_s is None else round(keepalive_interval_s)
            ),
            keepalive_count=keepalive_count,
            syn_retries=syn_retries,
            recverr=recverr,
        )

    @classmethod
    def from_effective(cls, effective: EffectiveOptions) -> TcpOptions:
        """What a socket really carries, as options (the model predicts from these).

        A socket reports keepalive times even with keepalive off; they matter only when on."""
        keepalive = effective.keepalive
        return cls(
            user_timeout_ms=effective.user_timeout_ms or None,
            keepalive=keepalive,
            keepalive_idle_s=effective.keepalive_idle_s if keepalive else None,
            keepalive_interval_s=effective.keepalive_interval_s if keepalive else None,
            keepalive_count=effective.keepalive_count if keepalive else None,
            syn_retries=effective.syn_retries,
            recverr=bool(effective.recverr),
            nodelay=effective.nodelay,
        )

    def as_flags(self) -> tuple[str, ...]:
        """The ``tcpecho client`` flags that ask for exactly these options."""
        flags: list[str] = []
        if self.user_timeout_ms is not None:
            flags += ["--user-timeout", format_duration(self.user_timeout_ms / 1000)]
        if self.keepalive is not None:
            flags.append("--keepalive" if self.keepalive else "--no-keepalive")
        if self.keepalive_idle_s is not None:
            flags += ["--keepalive-idle", format_duration(self.keepalive_idle_s)]
        if self.keepalive_interval_s is not None:
            flags += ["--keepalive-interval", format_duration(self.keepalive_interval_s)]
        if self.keepalive_count is not None:
            flags += ["--keepalive-count", str(self.keepalive_count)]
        if self.syn_retries is not None:
            flags += ["--syn-retries", str(self.syn_retries)]
        if self.recverr:
            flags.append("--recverr")
        return tuple(flags)

    @property
    def user_timeout_s(self) -> float:
        """TCP_USER_TIMEOUT in seconds; 0 when not set (the kernel's default: off)."""
        return (self.user_timeout_ms or 0) / 1000

    def _keepalive_tuned(self) -> bool:
        tuning = (self.keepalive_idle_s, self.keepalive_interval_s, self.keepalive_count)
        return any(value is not None for value in tuning)

    @property
    def keepalive_enabled(self) -> bool | None:
        """Keepalive as applied: tuning it switches it on, as users expect."""
        if self.keepalive is None and self._keepalive_tuned():
            return True
        return self.keepalive

    def unsupported(self, platform: object = socket) -> list[str]:
        """Names of requested options this platform's socket module cannot set."""
        wanted = {
            "TCP_USER_TIMEOUT": self.user_timeout_ms is not None,
            "TCP_KEEPIDLE": self.keepalive_idle_s is not None,
            "TCP_KEEPINTVL": self.keepalive_interval_s is not None,
            "TCP_KEEPCNT": self.keepalive_count is not None,
            "TCP_SYNCNT": self.syn_retries is not None,
        }
        missing = [name for name, asked in wanted.items() if asked and not hasattr(platform, name)]
        if self.recverr and not sys.platform.startswith("linux"):
            missing.append("IP_RECVERR")
        return missing

    def without_connect_options(self) -> TcpOptions:
        """The subset that makes sense on a listening socket (SYN retries are the client's)."""
        return dataclasses.replace(self, syn_retries=None)

    def apply(self, sock: SocketLike) -> None:
        """Set every requested option on ``sock``; call before connect or listen."""
        tcp = socket.IPPROTO_TCP
        sock.setsockopt(tcp, socket.TCP_NODELAY, int(self.nodelay))
        if self.user_timeout_ms is not None:
            sock.setsockopt(tcp, socket.TCP_USER_TIMEOUT, self.user_timeout_ms)
        keepalive = self.keepalive_enabled
        if keepalive is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(keepalive))
        if self.keepalive_idle_s is not None:
            sock.setsockopt(tcp, socket.TCP_KEEPIDLE, self.keepalive_idle_s)
        if self.keepalive_interval_s is not None:
            sock.setsockopt(tcp, socket.TCP_KEEPINTVL, self.keepalive_interval_s)
        if self.keepalive_count is not None:
            sock.setsockopt(tcp, socket.TCP_KEEPCNT, self.keepalive_count)
        if self.syn_retries is not None:
            sock.setsockopt(tcp, socket.TCP_SYNCNT, self.syn_retries)
        if self.recverr:
            # An IPv6 socket may carry IPv4 traffic (dual stack): ICMPv4 errors for it are
            # reported through IP_RECVERR, so set both.
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)


@dataclass(frozen=True)
class EffectiveOptions:
    """What the kernel reports for a socket: the values that decide when it gives up."""

    nodelay: bool
    user_timeout_ms: int | None
    keepalive: bool
    keepalive_idle_s: int | None
    keepalive_interval_s: int | None
    keepalive_count: int | None
    syn_retries: int | None
    recverr: bool | None

    def as_dict(self) -> dict[str, int | bool | None]:
        # Every value is an int, a bool or None: a shallow copy is the same as
        # dataclasses.asdict, without its recursive deep copy (once per accepted connection).
        return dict(vars(self))


def read_effective(sock: SocketLike) -> EffectiveOptions:
    """Read the options back with getsockopt."""
    tcp = socket.IPPROTO_TCP

    def tcp_option(name: str) -> int | None:
        number = getattr(socket, name, None)
        return None if number is None else sock.getsockopt(tcp, number)

    recverr: bool | None = None
    if sys.platform.startswith("linux"):
        if sock.family == socket.AF_INET6:
            recverr = bool(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR))
        else:
            recverr = bool(sock.getsockopt(socket.IPPROTO_IP, IP_RECVERR))
    return EffectiveOptions(
        nodelay=bool(sock.getsockopt(tcp, socket.TCP_NODELAY)),
        user_timeout_ms=tcp_option("TCP_USER_TIMEOUT"),
        keepalive=bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
        keepalive_idle_s=tcp_option("TCP_KEEPIDLE"),
        keepalive_interval_s=tcp_option("TCP_KEEPINTVL"),
        keepalive_count=tcp_option("TCP_KEEPCNT"),
        syn_retries=tcp_option("TCP_SYNCNT"),
        recverr=recverr,
    )
