"""What each overlay of ``manifests/overlays`` gives its client, as data.

The model predicts each overlay's detection time from these values, and the manifests test
renders them to ``TCPECHO_CLIENT_*`` variables and holds them against the overlay's
``client-env.yaml``: the manifests are checked against the data, never parsed back into it.
"""

from __future__ import annotations

from tcpecho.experiment import Profile
from tcpecho.model import Activity, Failure, KernelSettings, Prediction, predict
from tcpecho.settings import Deadlines
from tcpecho.tcp.options import TcpOptions

ENV_PREFIX = "TCPECHO_CLIENT_"
_KEEPALIVE = TcpOptions(
    keepalive=True, keepalive_idle_s=10, keepalive_interval_s=5, keepalive_count=3
)
_ACTIVE = (Activity.ACTIVE,)  # the pods' client sends every 5 s: always a request in flight

OVERLAYS: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile("default", activities=_ACTIVE),
        Profile("user-timeout", TcpOptions(user_timeout_ms=30_000), activities=_ACTIVE),
        Profile("keepalive", _KEEPALIVE, activities=_ACTIVE),
        Profile(
            "mitigated",
            TcpOptions(
                user_timeout_ms=30_000,
                keepalive=True,
                keepalive_idle_s=10,
                keepalive_interval_s=5,
                keepalive_count=3,
            ),
            Deadlines(read_timeout_s=10.0),
            activities=_ACTIVE,
        ),
    )
}


def expected(overlay: str) -> Prediction | None:
    """When the overlay's client should notice the force-delete (kernel defaults)."""
    profile = OVERLAYS.get(overlay)
    if profile is None:
        return None
    return predict(
        KernelSettings(), profile.tcp, Failure.SILENT, Activity.ACTIVE, profile.deadlines
    )


def client_env(profile: Profile) -> dict[str, str]:
    """The profile as the client's environment variables, as a manifest sets them."""
    env: dict[str, str] = {}
    flags = list(profile.client_flags())
    while flags:
        flag = flags.pop(0).removeprefix("--")
        if flags and not flags[0].startswith("--"):
            value = flags.pop(0)
        elif flag.startswith("no-"):
            flag, value = flag.removeprefix("no-"), "false"
        else:
            value = "true"
        env[ENV_PREFIX + flag.replace("-", "_").upper()] = value
    return env
