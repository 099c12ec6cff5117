"""Pods that an engine outside the lab starts (``cluster/pods.py``: podman), in a case.

The lab builds a case's node as always, but the server's and the client's pod network
namespaces are the engine's: ``PodMaker`` makes both pods, their namespaces held by the
engine and nothing of theirs started, with the engine running in the case's node namespace
(where it holds what it holds for the pods, as on a node). The lab then wires those
namespaces as a CNI plugin does (``Topology.build``: a veth from the node, the pod's
address, its route), starts the server's and the client's containers through the engine,
reads their own logs through it, and force-deletes with the engine's own force delete, after
the route and the link are gone. ``CasePods.remove`` ends both pods, whatever state they are
in, before the lab removes its namespaces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tcpecho.experiment import Case


class CasePods(Protocol):
    """A case's two pods, made by the engine; the lab starts their containers."""

    @property
    def client_netns_pid(self) -> int:
        """A process of the engine's holding the client pod's network namespace."""
        ...

    @property
    def server_netns_pid(self) -> int:
        """A process of the engine's holding the server pod's network namespace."""
        ...

    def start_server(self) -> int:
        """Start the server's container (blocking); its process's PID."""
        ...

    def server_log(self) -> Sequence[str]:
        """A command whose output is the server container's log, from its start on."""
        ...

    def start_client(self) -> int:
        """Start the client's container (blocking); its process's PID."""
        ...

    def client_log(self) -> Sequence[str]:
        """A command whose output is the client container's log, from its start on."""
        ...

    def force_delete_server(self) -> None:
        """The engine's force delete of the server's pod (blocking)."""
        ...

    def remove(self) -> None:
        """Both pods gone, whatever state they are in (blocking)."""
        ...


# Makes a case's pods, with the engine in the node namespace named (blocking).
PodMaker = Callable[[Case, str], CasePods]
