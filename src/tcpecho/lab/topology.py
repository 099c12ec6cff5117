"""A Kubernetes path in network namespaces: client pod, node with kube-proxy DNAT, server pod.

::

    client pod            node                                 server pod
    eth0 10.244.1.2 --- veth-c 10.244.1.1                       10.244.2.2 eth0
                        veth-s 10.244.2.1 ---------------------/
                        nft: 10.96.0.10:8000 -> 10.244.2.2:8000 (conntrack on)

Each topology has its own three namespaces, named ``tcpecho-<id>-client`` and so on, so
several can run at once; the addresses repeat in each, which is harmless because nothing
routes between topologies. pyroute2 creates the namespaces, links, addresses and routes
over netlink. Sysctls are not netlink: they are written to ``/proc/sys`` from a short-lived
thread that has entered the namespace (setns changes only the calling thread). Rules are
nft scripts, since nft is what users read and what kube-proxy's nftables mode writes.

Everything created here lives inside the namespaces, so removing them (after killing the
processes in them) removes every link and rule with them; nothing on the host changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

PREFIX = "tcpecho-"
CLUSTER_IP = "10.96.0.10"
SERVICE_PORT = 8000
CLIENT_IP = "10.244.1.2"
NODE_CLIENT_SIDE_IP = "10.244.1.1"
SERVER_IP = "10.244.2.2"
NODE_SERVER_SIDE_IP = "10.244.2.1"
PREFIX_LEN = 24

# kube-proxy's shape: DNAT in prerouting, and a filter rule that references conntrack.
# The filter rule matters: with only the DNAT rule, deleting it would leave the netns
# with no conntrack user, and the established flow would stop being translated.
_KUBE_PROXY_RULES = f"""
table ip kube {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT} dnat to {SERVER_IP}:{SERVICE_PORT}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state invalid drop
    }}
}}
"""


class LabError(RuntimeError):
    """The lab could not build or use its namespaces."""


@dataclass(frozen=True)
class Topology:
    """Three namespaces named after ``prefix`` (unique per case); build, use, destroy."""

    prefix: str

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}-client"

    @property
    def node_ns(self) -> str:
        return f"{self.prefix}-node"

    @property
    def server_ns(self) -> str:
        return f"{self.prefix}-server"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.node_ns, self.server_ns)

    def __enter__(self) -> Topology:
        self.build()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.destroy()

    # -- building ------------------------------------------------------------------------

    def build(self) -> None:
        from pyroute2 import IPRoute, netns

        try:
            for name in self.namespaces:
                netns.create(name)
            with IPRoute(netns=self.node_ns) as node:
                _link_up(node, "lo")
                for ifname, peer_ns, address in (
                    ("veth-c", self.client_ns, NODE_CLIENT_SIDE_IP),
                    ("veth-s", self.server_ns, NODE_SERVER_SIDE_IP),
                ):
                    node.link(
                        "add",
                        ifname=ifname,
                        kind="veth",
                        peer={"ifname": "eth0", "net_ns_fd": peer_ns},
                    )
                    index = node.link_lookup(ifname=ifname)[0]
                    node.addr("add", index=index, address=address, prefixlen=PREFIX_LEN)
                    node.link("set", index=index, state="up")
            for name, address, gateway in (
                (self.client_ns, CLIENT_IP, NODE_CLIENT_SIDE_IP),
                (self.server_ns, SERVER_IP, NODE_SERVER_SIDE_IP),
            ):
                with IPRoute(netns=name) as pod:
                    _link_up(pod, "lo")
                    index = pod.link_lookup(ifname="eth0")[0]
                    pod.addr("add", index=index, address=address, prefixlen=PREFIX_LEN)
                    pod.link("set", index=index, state="up")
                    pod.route("add", dst="0.0.0.0/0", gateway=gateway)
            self.sysctl(self.node_ns, "net.ipv4.ip_forward", 1)
            self.nft(self.node_ns, _KUBE_PROXY_RULES)
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Kill what runs in the namespaces, then remove them (their links and rules go too)."""
        remove_namespaces(self.namespaces)

    # -- using ---------------------------------------------------------------------------

    def command(self, namespace: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``namespace``."""
        return ["ip", "netns", "exec", namespace, *argv]

    def sysctl(self, namespace: str, key: str, value: int) -> None:
        write_sysctl(namespace, key, value)

    def read_sysctl(self, namespace: str, key: str) -> int:
        return read_sysctl(namespace, key)

    def nft(self, namespace: str, script: str) -> None:
        result = subprocess.run(
            self.command(namespace, ["nft", "-f", "-"]),
            input=script,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"nft in {namespace} failed: {result.stderr.strip()}")

    # -- what a failure does to the network (see faults.py for the whole faults) ---------

    def blackhole_pod_route(self) -> None:
        """Replace the node's route to the pod by a blackhole: packets to it vanish."""
        from pyroute2 import IPRoute

        with IPRoute(netns=self.node_ns) as node:
            node.route("add", dst=f"{SERVER_IP}/32", type="blackhole")

    def pod_link_down(self) -> None:
        """Take the pod's interface down: nothing it sends leaves (its FIN is lost)."""
        from pyroute2 import IPRoute

        with IPRoute(netns=self.server_ns) as pod:
            pod.link("set", index=pod.link_lookup(ifname="eth0")[0], state="down")

    def remove_pod_link(self) -> None:
        """Delete the node's veth to the pod: its route goes, and the node answers the
        client with ICMP network unreachable."""
        from pyroute2 import IPRoute

        with IPRoute(netns=self.node_ns) as node:
            node.link("del", index=node.link_lookup(ifname="veth-s")[0])

    def conntrack(self) -> list[str]:
        """The node's conntrack entries, one line each, as ``conntrack -L`` would show."""
        from pyroute2 import Conntrack

        lines = []
        with Conntrack(netns=self.node_ns) as table:
            for entry in table.dump_entries():
                orig, reply = entry.tuple_orig, entry.tuple_reply
                state = entry.protoinfo.state_name() if entry.protoinfo is not None else "-"
                lines.append(
                    f"tcp {state} src={orig.saddr} dst={orig.daddr} "
                    f"sport={orig.sport} dport={orig.dport} "
                    f"src={reply.saddr} dst={reply.daddr} "
                    f"[{entry.status_name()}] timeout={entry.timeout}s"
                )
        return lines

    def drop_pod_traffic(self) -> None:
        """Black-hole the server pod on the node: every packet to or from it is dropped
        silently, as when the pod's route is gone and the CNI does not answer."""
        self.nft(
            self.node_ns,
            f"""
table ip fault {{
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        ip daddr {SERVER_IP} drop
        ip saddr {SERVER_IP} drop
    }}
}}
""",
        )


def _link_up(ipr: object, ifname: str) -> None:
    index = ipr.link_lookup(ifname=ifname)[0]  # type: ignore[attr-defined]
    ipr.link("set", index=index, state="up")  # type: ignore[attr-defined]


def in_namespace(namespace: str, action: Callable[[], T]) -> T:
    """Run ``action()`` in a thread that has entered ``namespace``; return its result."""
    from pyroute2 import netns

    outcome: list[T] = []
    failure: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            netns.setns(namespace, flags=0)
            outcome.append(action())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=enter_and_run, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if failure:
        raise LabError(f"in namespace {namespace}: {failure[0]}") from failure[0]
    return outcome[0]


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def write_sysctl(namespace: str, key: str, value: int) -> None:
    def write() -> None:
        with open(_sysctl_path(key), "w") as handle:
            handle.write(str(value))

    in_namespace(namespace, write)


def read_sysctl(namespace: str, key: str) -> int:
    def read() -> int:
        with open(_sysctl_path(key)) as handle:
            return int(handle.read().split()[0])

    return in_namespace(namespace, read)


def leftover_namespaces(prefix: str = PREFIX) -> list[str]:
    """Namespaces a lab run left behind (for instance after SIGKILL)."""
    from pyroute2 import netns

    return sorted(name for name in netns.listnetns() if name.startswith(prefix))


def remove_namespaces(names: Sequence[str], grace_s: float = 1.0) -> None:
    """Kill every process in ``names`` (TERM, then KILL after ``grace_s``), then remove them."""
    from pyroute2 import netns

    existing = set(netns.listnetns())
    names = [name for name in names if name in existing]
    if not names:
        return
    pids = _pids_in(names)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.02)
        pids = _pids_in(names)
    _signal_all(pids, signal.SIGKILL)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            netns.remove(name)


def _pids_in(names: Sequence[str]) -> list[int]:
    from pyroute2 import netns

    by_namespace: dict[str, list[int]] = netns.ns_pids()
    own = os.getpid()
    return [pid for name in names for pid in by_namespace.get(name, []) if pid != own]


def _signal_all(pids: Sequence[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
