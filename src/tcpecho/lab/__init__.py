"""The lab: reproduce the vanished-peer hang in network namespaces on one Linux machine.

``topology`` builds a client pod, a node with kube-proxy DNAT and a server pod; ``faults``
breaks the path; ``profiles`` names the client settings to compare; ``runner`` runs every
case in parallel and records what the client logged; ``report`` prints the table, the JSON
and the chart; ``main`` checks the machine and cleans up whatever happens.

The public names (``__all__``), for the scripts beside the package (cookbook/, cluster/):
``LabConfig`` (faults, profiles, ``KernelBudget``, report files) run by ``run`` (report
printed and written, exit status) or ``run_matrix`` (the results and the run's facts, for a
report of the caller's own); ``check_requirements`` first (it raises ``MissingRequirement``),
``cleanup`` for what killed runs left behind, and ``StoppedError`` when a stop signal ends a
run (it carries the results, the unfinished cases marked interrupted). ``report``,
``topology``, ``servers`` (the server presets) and ``grpc_server`` (the gRPC preset's
server, whose names its clients call) are modules of their own to import. The names are
looked up on first use: reading the profiles (``tcpecho lab --help``) does not load the
runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tcpecho.lab.main import (
        LabConfig,
        MissingRequirement,
        StoppedError,
        check_requirements,
        cleanup,
        run,
        run_matrix,
    )
    from tcpecho.lab.runner import KernelBudget

__all__ = [
    "KernelBudget",
    "LabConfig",
    "MissingRequirement",
    "StoppedError",
    "check_requirements",
    "cleanup",
    "run",
    "run_matrix",
]


def __getattr__(name: str) -> object:
    # Imported here, on first use: the runner and what it needs (asyncio, the programs, the
    # report) cost ~50 ms that the profiles and --help should not pay.
    if name == "KernelBudget":
        from tcpecho.lab import runner

        return runner.KernelBudget
    if name in __all__:
        from tcpecho.lab import main

        return getattr(main, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
