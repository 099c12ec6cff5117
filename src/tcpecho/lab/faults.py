"""The faults the lab injects, each as the network and the processes see it.

``force-delete`` is the bug: the node loses the pod's route (a blackhole now), the pod's
interface goes away so its FIN is lost, and the server process is killed. The client's
next packet vanishes without a trace, and the node's conntrack entry stays ESTABLISHED.
The other faults give the comparisons: a silently dropped node, an ICMP-answering router,
a plain crash with the network intact, and a graceful shutdown.
"""

from __future__ import annotations

import os
import signal
import time
from enum import StrEnum

from tcpecho.lab.topology import Topology
from tcpecho.timing import Failure


class Fault(StrEnum):
    FORCE_DELETE = "force-delete"
    NODE_LOSS = "node-loss"
    UNREACHABLE = "unreachable"
    KILL = "kill"
    GRACEFUL = "graceful"

    @property
    def failure(self) -> Failure:
        """What the fault looks like from the client: the kernel model's input."""
        return _FAILURES[self]

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def server_catches_sigterm(self) -> bool:
        """The original reproduction's server ignores SIGTERM; the graceful case must not."""
        return self is not Fault.GRACEFUL


_FAILURES = {
    Fault.FORCE_DELETE: Failure.SILENT,
    Fault.NODE_LOSS: Failure.SILENT,
    Fault.UNREACHABLE: Failure.UNREACHABLE,
    Fault.KILL: Failure.CLOSED,
    Fault.GRACEFUL: Failure.CLOSED,
}

_DESCRIPTIONS = {
    Fault.FORCE_DELETE: "pod route blackholed, pod link down, server killed: its FIN is lost",
    Fault.NODE_LOSS: "everything to and from the server pod dropped (nft)",
    Fault.UNREACHABLE: "pod link removed: the node answers ICMP network unreachable",
    Fault.KILL: "server killed (SIGKILL) with the network intact: FIN/RST arrive",
    Fault.GRACEFUL: "server stopped with SIGTERM (no --catch-sigterm): it closes cleanly",
}


def inject(fault: Fault, topology: Topology, server_pid: int) -> float:
    """Break the path (blocking: run it in a worker thread); the wall time it broke."""
    broke_at = time.time()
    if fault is Fault.FORCE_DELETE:
        topology.blackhole_pod_route()
        topology.pod_link_down()
        os.kill(server_pid, signal.SIGKILL)
    elif fault is Fault.NODE_LOSS:
        topology.drop_pod_traffic()
    elif fault is Fault.UNREACHABLE:
        topology.remove_pod_link()
    elif fault is Fault.KILL:
        os.kill(server_pid, signal.SIGKILL)
    elif fault is Fault.GRACEFUL:
        os.kill(server_pid, signal.SIGTERM)
    return broke_at
