"""What each fault does to the lab's namespaces and processes.

``force-delete`` is the bug: the node loses the pod's route (a blackhole now), the pod's
interface goes away so its FIN is lost, and the server process is killed. The client's
next packet vanishes without a trace, and the node's conntrack entry stays ESTABLISHED.
The other faults give the comparisons: a silently dropped node, an ICMP-answering router,
a plain crash with the network intact, and a graceful shutdown (``experiment.Fault``).
"""

from __future__ import annotations

import os
import signal
import time

from tcpecho.experiment import Fault
from tcpecho.lab.topology import Topology


def inject(fault: Fault, topology: Topology, server_pid: int) -> float:
    """Break the path (blocking: run it in a worker thread); the wall time it broke.

    ``server_pid`` leads a process group of its own: a server program started from a shell
    line is killed whole, children included."""
    broke_at = time.time()
    if fault is Fault.FORCE_DELETE:
        topology.blackhole_pod_route()
        topology.pod_link_down()
        os.killpg(server_pid, signal.SIGKILL)
    elif fault is Fault.NODE_LOSS:
        topology.drop_pod_traffic()
    elif fault is Fault.UNREACHABLE:
        topology.remove_pod_link()
    elif fault is Fault.KILL:
        os.killpg(server_pid, signal.SIGKILL)
    elif fault is Fault.GRACEFUL:
        os.killpg(server_pid, signal.SIGTERM)
    return broke_at
