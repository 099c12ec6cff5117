"""The node agent as the tests run it: ``tcpecho.agent.run`` in a process of its own, with a
snapshot function made of real connections, the way ``watch --all-namespaces`` hands it one.

``python -m tests.agent.node_agent SPEC``, SPEC a JSON object (``Spec``): each snapshot is
``tcpecho.watch.look.snapshot`` of this network namespace or of a named one, kept to the
connections with one of the test's ports, each given the pod a rule names (a local or a peer
port) when a process owns it, the host's otherwise, and wrapped into a ``NodeSnapshot`` with
the skipped and failed counts the test chose. The calls the test names raise instead. Every
whole snapshot is written, one JSON line each, to the record file, so the test knows what
each scrape was made of.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, TypedDict

from tcpecho import agent, events, logs
from tcpecho.lab.topology import in_namespace
from tcpecho.model import KernelSettings
from tcpecho.watch import WatchConfig
from tcpecho.watch.look import NodeSnapshot, Watched, snapshot
from tcpecho.watch.pods import PodIdentity


class PodRule(TypedDict):
    """Connections with ``port`` on their ``side`` (local, peer) are in this pod."""

    side: str
    port: int
    namespace: str | None
    pod: str | None
    uid: str


class Spec(TypedDict):
    port: int  # /metrics, on 127.0.0.1
    interval_s: float
    service_cidrs: list[str]
    ports: list[int]  # the connections kept: a local or peer port among these
    pods: list[PodRule]
    netns: str | None  # the named network namespace to look in; None: this one
    skipped: dict[str, int]  # each snapshot's
    errors: dict[str, int]  # each snapshot's
    fail_calls: list[int]  # the calls (from 1) that raise
    record: str  # a file: one JSON line per whole snapshot


class Snapshots:
    """The snapshot function handed to the agent (called in its worker thread)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.calls = 0

    def __call__(self) -> NodeSnapshot:
        self.calls += 1
        if self.calls in self.spec["fail_calls"]:
            raise RuntimeError(f"the test's snapshot fails on call {self.calls}")
        started = time.monotonic()
        name = self.spec["netns"]
        inode, watched = _look() if name is None else in_namespace(name, _look)
        kept = tuple(
            dataclasses.replace(w, netns=inode, pod=self._pod_of(w))
            for w in watched
            if self._kept(w)
        )
        taken = NodeSnapshot(
            watched=kept,
            namespaces=1,
            skipped=self.spec["skipped"],
            errors=self.spec["errors"],
            duration_s=time.monotonic() - started,
        )
        with open(self.spec["record"], "a") as record:
            record.write(json.dumps(_recorded(taken, started)) + "\n")
        return taken

    def _kept(self, watched: Watched) -> bool:
        connection = watched.connection
        return bool({connection.local_port, connection.peer_port} & set(self.spec["ports"]))

    def _pod_of(self, watched: Watched) -> PodIdentity | None:
        if watched.owner is None:
            return None  # a socket no process holds is in no pod
        ports = {"local": watched.connection.local_port, "peer": watched.connection.peer_port}
        for rule in self.spec["pods"]:
            if ports[rule["side"]] == rule["port"]:
                return PodIdentity(rule["namespace"], rule["pod"], "app", rule["uid"], None)
        return None


def _look() -> tuple[int, list[Watched]]:
    """This thread's network namespace (its inode) and its connections."""
    inode = os.stat("/proc/thread-self/ns/net").st_ino
    return inode, snapshot(WatchConfig(), KernelSettings.here())


def _recorded(taken: NodeSnapshot, started: float) -> dict[str, Any]:
    return {
        "at": started,  # time.monotonic(), which every process of the machine shares
        "duration_s": taken.duration_s,
        "connections": [
            {
                "local": w.connection.local,
                "peer": w.connection.peer,
                "state": w.connection.state,
                "pod": None if w.pod is None else [w.pod.namespace, w.pod.pod, w.pod.uid],
                "stuck": w.connection.stuck,
                "stuck_for_s": w.stuck_for_s,
                "gives_up_in_s": w.gives_up_in_s,
                "never": w.prediction is not None and w.prediction.never,
                "at_risk": [risk.code for risk in w.at_risk],
            }
            for w in taken.watched
        ],
    }


def main(argv: list[str]) -> int:
    spec: Spec = json.loads(argv[1])
    logs.configure("json", "info", report_dropped=events.report_lines_dropped)
    return agent.run(
        Snapshots(spec),
        spec["interval_s"],
        spec["port"],
        "127.0.0.1",
        tuple(spec["service_cidrs"]),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
