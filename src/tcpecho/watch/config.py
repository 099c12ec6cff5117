"""``tcpecho watch``'s settings (``WatchConfig``): which connections to show and how, and the
path their risks are judged against, each checked where it is declared, so a bad one is
refused before anything is looked at. A peer given by name is resolved here, once: a name
that does not resolve is refused like any other bad value, and a watch that resolved a
Service's name keeps its ClusterIP."""

from __future__ import annotations

from dataclasses import dataclass, field

from tcpecho.explain import PathContext
from tcpecho.settings import SettingError, check_duration, check_range
from tcpecho.tcp import names

MIN_INTERVAL_S = 0.1  # below this the watch would mostly watch itself scanning /proc
PORT_MAX = 65535


@dataclass(frozen=True)
class WatchConfig:
    """What to watch and how to show it; refuses what it cannot take with ``SettingError``."""

    peer_host: str | None = None  # only connections to this host (an address or a name)
    peer_port: int | None = None  # ... and this port of it
    port: int | None = None  # only connections with this local or peer port
    pid: int | None = None  # only connections owned by this process
    stuck: bool = False  # only connections the kernel is retransmitting or probing on
    at_risk: bool = False  # only connections at risk, or whose risk cannot be told
    all_states: bool = False  # every state, as ss -a; else ss's default: connected ones only
    interval_s: float = 1.0
    once: bool = False
    json: bool = False
    # The path's idle timeout (and the preset that gave it): keepalive that does not probe
    # within it puts an idle connection at risk. No outage or proxy: those are explain's.
    path: PathContext = field(default_factory=PathContext)
    # Every network namespace of the host (kubectl's -A), each connection named by its pod.
    all_namespaces: bool = False
    # The node agent: serve the per-pod metrics of every snapshot at /metrics, print nothing.
    metrics_port: int | None = None
    # The cluster's Service ranges: a connection at risk to one of them is to a Service.
    service_cidrs: tuple[str, ...] = ()
    # The kubelet's pod log directories and container log links (read-only, for pod names).
    pod_logs: str = "/var/log/pods"
    container_logs: str | None = "/var/log/containers"
    # The addresses peer_host stands for (normalized), resolved when the config is made.
    peer_addresses: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        if self.peer_host is not None and not self.peer_host.strip():
            raise SettingError("peer", "the host is empty")
        if self.peer_port is not None and self.peer_host is None:
            raise SettingError("peer", "a peer port needs a peer host")
        check_range("peer", self.peer_port, 1, PORT_MAX)
        check_range("port", self.port, 1, PORT_MAX)
        check_range("pid", self.pid, 1)
        check_duration("interval", self.interval_s, minimum=MIN_INTERVAL_S, step=0.001)
        idle_timeout = self.path.idle_timeout_s
        if idle_timeout is not None and idle_timeout <= 0:
            raise SettingError("path_idle_timeout", "the path's idle timeout must be more than 0s")
        check_range("metrics_port", self.metrics_port, 0, PORT_MAX)
        agent = {"metrics_port": self.metrics_port is not None, "service_cidr": self.service_cidrs}
        for setting, given in agent.items():
            if given and not self.all_namespaces:
                raise SettingError(setting, "is the node agent's: it needs --all-namespaces")
        if self.service_cidrs and self.metrics_port is None:
            raise SettingError(
                "service_cidr", "labels the node agent's metrics: it needs --metrics-port"
            )
        if self.metrics_port is not None and (self.once or self.json):
            raise SettingError("metrics_port", "serves metrics until stopped: no --once or --json")
        if self.peer_host is not None:
            object.__setattr__(self, "peer_addresses", _resolved(self.peer_host))


def _resolved(host: str) -> frozenset[str]:
    """The addresses ``host`` stands for; a ``SettingError`` on ``peer`` when none."""
    try:
        addresses = names.host_addresses(host)
    except OSError as error:
        reason = error.strerror or str(error)
        raise SettingError(
            "peer", f"{host} does not resolve: {reason} ({names.error_name(error)})"
        ) from None
    if not addresses:
        raise SettingError("peer", f"{host} does not resolve: no address")
    return addresses
