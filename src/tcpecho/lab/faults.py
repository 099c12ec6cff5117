"""What each fault does to the lab's namespaces and processes.

``force-delete`` is the bug: the node loses the pod's route (a blackhole now), the pod's
interface goes away so its FIN is lost, and the server process is killed. The client's
next packet vanishes without a trace, and the node's conntrack entry stays ESTABLISHED.
The other faults give the comparisons: a silently dropped node, an ICMP-answering router,
a plain crash with the network intact, and a graceful shutdown (``experiment.Fault``).

The field's faults break the path rather than the peer, some of them before the case
starts (``prepare``: the node forgets idle flows; the Service has no DNAT rule yet) and
some end or change later (``follow_up``: the partition heals; a new pod takes the IP).
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable

from tcpecho.experiment import Fault, FaultTiming
from tcpecho.lab.topology import Topology


def prepare(fault: Fault, topology: Topology, timing: FaultTiming) -> None:
    """Set up what must be in place before the client connects (blocking)."""
    if fault in (Fault.IDLE_EXPIRY, Fault.IDLE_EXPIRY_RESET):
        # conntrack counts its timeouts in whole seconds; each packet sets the entry's.
        topology.forget_idle_flows(
            math.ceil(timing.path_idle_timeout_s), reset=fault is Fault.IDLE_EXPIRY_RESET
        )
    elif fault is Fault.STALE_CONNTRACK:
        topology.remove_service_rule()


def inject(
    fault: Fault,
    topology: Topology,
    server_pid: int,
    delete_pod: Callable[[], None] | None = None,
) -> float:
    """Break the path (blocking: run it in a worker thread); the wall time it broke.

    ``server_pid`` leads a process group of its own: a server program started from a shell
    line is killed whole, children included. ``delete_pod``: where an engine started the
    server's pod, its own force delete, which removes the pod instead of the kill."""
    broke_at = time.time()
    if fault in (Fault.FORCE_DELETE, Fault.IP_REUSE, Fault.SIDECAR):
        topology.blackhole_pod_route()
        topology.pod_link_down()
        if delete_pod is not None:
            delete_pod()
        else:
            os.killpg(server_pid, signal.SIGKILL)
    elif fault in (Fault.NODE_LOSS, Fault.PARTITION):
        topology.drop_pod_traffic()
    elif fault is Fault.UNREACHABLE:
        topology.remove_pod_link()
    elif fault is Fault.KILL:
        os.killpg(server_pid, signal.SIGKILL)
    elif fault is Fault.GRACEFUL:
        os.killpg(server_pid, signal.SIGTERM)
    elif fault is Fault.STALLED_READER:
        # Stopped, not killed: its sockets stay, and its kernel acknowledges what arrives.
        os.killpg(server_pid, signal.SIGSTOP)
    elif fault is Fault.STALE_CONNTRACK:
        topology.add_service_rule()  # the endpoint is programmed after the SYN left
    # idle-expiry: prepared before the connection; its packets themselves make it forget.
    return broke_at


def follow_up(
    fault: Fault, topology: Topology, timing: FaultTiming
) -> tuple[float, Callable[[], None]] | None:
    """What happens to the path after the fault, and how long after it (blocking)."""
    if fault is Fault.PARTITION:
        return timing.outage_s, topology.heal
    if fault is Fault.IP_REUSE:
        return timing.reuse_after_s, topology.reuse_server_ip
    return None
