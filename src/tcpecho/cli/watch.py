"""``tcpecho watch``: parse the options into a ``WatchConfig`` and run it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tcpecho.cli.options import (
    environment_epilog,
    metrics_port_option,
    path_options,
    settings_errors,
)
from tcpecho.cli.params import BOOLEAN, Duration, Endpoint, option

if TYPE_CHECKING:
    from tcpecho.explain import PathContext
    from tcpecho.watch import WatchConfig

EPILOG = environment_epilog("watch", "STUCK=true")


@click.command(epilog=EPILOG)
@option(
    "--peer",
    type=Endpoint(),
    default=None,
    help="Only connections to this peer: an address or a name (resolved once, at start), "
    "with :PORT if you like (10.96.0.10:8000, [::1]:8000, postgres).",
)
@option("--port", type=int, default=None, help="Only connections with this local or peer port.")
@option("--pid", type=int, default=None, help="Only connections owned by this process.")
@option(
    "--stuck",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="Only connections the kernel is retransmitting on, or probing without an answer.",
)
@option(
    "--at-risk",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="Only connections at risk from their own options in the state they are in (explain's "
    "traps: no user timeout while busy, keepalive off or too slow while idle), or whose "
    "options cannot be read (cannot tell).",
)
@path_options("keepalive that first probes no sooner puts an idle connection at risk")
@option(
    "-a",
    "--all",
    "all_states",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="Sockets in every state, listening and TIME-WAIT ones too, as `ss -a`; "
    "by default connected ones only, as `ss`.",
)
@option(
    "-A",
    "--all-namespaces",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="Every network namespace of the host (found through the processes that hold them), "
    "each connection named by its Kubernetes namespace, pod and container (from its "
    "cgroup and the kubelet's log directories); the host's own by its command.",
)
@metrics_port_option
@option(
    "--service-cidr",
    "service_cidrs",
    multiple=True,
    help="With --metrics-port: a Service range of the cluster (10.96.0.0/16); connections at "
    'risk to it are counted as to a Service (peer="service"). Repeatable.',
)
@option(
    "--pod-logs",
    default="/var/log/pods",
    show_default=True,
    help="With -A: the kubelet's pod log directories (<namespace>_<pod>_<uid>), for pod names.",
)
@option(
    "--container-logs",
    default="/var/log/containers",
    show_default=True,
    help="With -A: the kubelet's container log links, for container names.",
)
@option("--interval", type=Duration(), default="1s", help="Time between snapshots.")
@option(
    "--once",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="One snapshot, then exit: with --stuck or --at-risk, status 1 when a connection "
    "matched, 0 when none did.",
)
@option(
    "--json",
    "json_output",
    is_flag=True,
    type=BOOLEAN,
    default=False,
    help="One JSON object per snapshot, one per line.",
)
def watch(
    peer: tuple[str, int | None] | None,
    port: int | None,
    pid: int | None,
    stuck: bool,
    at_risk: bool,
    path: PathContext,
    all_states: bool,
    all_namespaces: bool,
    metrics_port: int | None,
    service_cidrs: tuple[str, ...],
    pod_logs: str,
    container_logs: str,
    interval: float,
    once: bool,
    json_output: bool,
) -> None:
    """Is a program stuck in the hang right now, and when will the kernel give up?

    Lists the TCP connections of this network namespace (the connected ones, as `ss`; every
    state with --all) with the process that owns each, its socket options, what the kernel
    is doing about it (retransmissions, backoff, keepalive probes), how long it has been
    stuck and when the kernel will give up, from the same model as `tcpecho explain`, and
    what its options will let go wrong (explain's traps, for the state it is in).
    Refreshes in place on a terminal; Ctrl-C stops."""
    from tcpecho.watch import WatchConfig, run

    peer_host, peer_port = peer if peer is not None else (None, None)
    with settings_errors():
        config = WatchConfig(
            peer_host=peer_host,
            peer_port=peer_port,
            port=port,
            pid=pid,
            stuck=stuck,
            at_risk=at_risk,
            path=path,
            all_states=all_states,
            all_namespaces=all_namespaces,
            metrics_port=metrics_port,
            service_cidrs=service_cidrs,
            pod_logs=pod_logs,
            container_logs=container_logs,
            interval_s=interval,
            once=once,
            json=json_output,
        )
    if config.metrics_port is not None:
        raise SystemExit(_serve_node_metrics(config))
    raise SystemExit(run(config))


def _serve_node_metrics(config: WatchConfig) -> int:
    """The node agent: a snapshot of every namespace each interval, served at /metrics;
    it logs events (JSON lines off a terminal), never a table."""
    from tcpecho import agent, events, logs
    from tcpecho.metrics import every_address

    with settings_errors():
        agent.service_networks(config.service_cidrs)
    logs.configure("auto", "info", report_dropped=events.report_lines_dropped)
    assert config.metrics_port is not None
    # Kept: each socket's options read once, each namespace listed when it may have changed.
    watcher = agent.node_watcher(config)
    return agent.run(
        watcher.snapshot,
        config.interval_s,
        config.metrics_port,
        every_address(),
        config.service_cidrs,
    )
