"""The lab's client profiles: named client settings, each a mitigation to compare.

Each profile runs *active* (a request every second: data is unacknowledged when the peer
vanishes) and, where it matters, *idle* (one request an hour: only keepalive can notice).
Profiles are data (``TcpOptions`` and ``Deadlines``); the runner renders them to the
client's flags when it starts a client, and the model predicts from the same values.
"""

from __future__ import annotations

from dataclasses import replace

from tcpecho.experiment import WINDOW_FILLING_BYTES, Fault, Profile
from tcpecho.model import Activity
from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions

ACTIVE_INTERVAL = "1s"
IDLE_INTERVAL = "1h"
# The lab decides these for every client; a custom profile must leave them alone.
LAB_OWNED_OPTIONS = ("--server", "--port", "--interval", "--count", "--retries", "--log-format")

# A 10 s idle time leaves the lab room to inject the fault before the first probe even on
# a busy machine (an answered probe would restart the kernel's idle clock). With the user
# timeout as well, probing ends at the first probe past it (11 s) instead of after
# 10 + 3 x 1 = 13 s: KEEPCNT no longer counts.
_KEEPALIVE = TcpOptions(keepalive_idle_s=10, keepalive_interval_s=1, keepalive_count=3)
_USER_TIMEOUT_MS = 5000
_ACTIVE_ONLY = (Activity.ACTIVE,)

PROFILES = {
    profile.name: profile
    for profile in (
        Profile("default"),
        Profile("user-timeout", TcpOptions(user_timeout_ms=_USER_TIMEOUT_MS)),
        Profile("keepalive", _KEEPALIVE),
        Profile("keepalive+user-timeout", replace(_KEEPALIVE, user_timeout_ms=_USER_TIMEOUT_MS)),
        Profile("read-timeout", deadlines=Deadlines(read_timeout_s=3.0), activities=_ACTIVE_ONLY),
        Profile("recverr", TcpOptions(recverr=True), activities=_ACTIVE_ONLY),
        # A fresh socket (a new source port) escapes a stale conntrack entry.
        Profile("connect-timeout", deadlines=Deadlines(connect_timeout_s=2.0)),
        # Requests larger than a stopped reader's buffers: the windows fill.
        Profile("bulk", request_size=WINDOW_FILLING_BYTES, activities=_ACTIVE_ONLY),
        Profile(
            "bulk+user-timeout",
            TcpOptions(user_timeout_ms=_USER_TIMEOUT_MS),
            request_size=WINDOW_FILLING_BYTES,
            activities=_ACTIVE_ONLY,
        ),
    )
}
PROFILE_NAMES = tuple(PROFILES)

_FIRST_SIX = (
    "default",
    "user-timeout",
    "keepalive",
    "keepalive+user-timeout",
    "read-timeout",
    "recverr",
)
# The built-in profiles each fault runs with when no --profile names them: those whose
# outcome the fault can change (recverr acts only on ICMP errors, a connect timeout only on
# the connect, a window-filling sender only on a reader that stopped).
FAULT_PROFILES: dict[Fault, tuple[str, ...]] = {
    Fault.FORCE_DELETE: _FIRST_SIX,
    Fault.NODE_LOSS: _FIRST_SIX,
    Fault.UNREACHABLE: _FIRST_SIX,
    Fault.KILL: _FIRST_SIX,
    Fault.GRACEFUL: _FIRST_SIX,
    Fault.IDLE_EXPIRY: _FIRST_SIX[:5],
    Fault.IDLE_EXPIRY_RESET: _FIRST_SIX[:5],
    Fault.STALE_CONNTRACK: ("default", "user-timeout", "connect-timeout"),
    Fault.IP_REUSE: ("default", "user-timeout", "keepalive", "read-timeout"),
    Fault.PARTITION: _FIRST_SIX[:5],
    Fault.STALLED_READER: (
        "default",
        "user-timeout",
        "keepalive",
        "read-timeout",
        "bulk",
        "bulk+user-timeout",
    ),
    Fault.SIDECAR: ("default", "user-timeout", "keepalive+user-timeout", "read-timeout"),
}
