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
from collections.abc import Callable, Mapping, Sequence
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
# stale-conntrack's way out of the node (documentation addresses, RFC 5737; a locally
# administered MAC that no interface has).
UPLINK_IP = "192.0.2.1"
UPLINK_GATEWAY_IP = "192.0.2.254"
UPLINK_GATEWAY_MAC = "02:00:00:00:00:fe"

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
class Flow:
    """One of the node's conntrack entries."""

    state: str
    source: str
    destination: str
    source_port: int
    destination_port: int
    reply_source: str
    reply_destination: str
    status: str
    timeout_s: int

    @property
    def translated(self) -> bool:
        """Whether the Service's DNAT applies: the reply comes from another address."""
        return self.reply_source != self.destination

    def __str__(self) -> str:
        return (
            f"tcp {self.state} src={self.source} dst={self.destination} "
            f"sport={self.source_port} dport={self.destination_port} "
            f"src={self.reply_source} dst={self.reply_destination} "
            f"[{self.status}] timeout={self.timeout_s}s"
        )


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
    def new_server_ns(self) -> str:
        """The pod that takes the server pod's IP after it vanished (``ip-reuse``)."""
        return f"{self.prefix}-reused"

    @property
    def pods(self) -> tuple[str, str, str]:
        """The namespaces ``build`` creates."""
        return (self.client_ns, self.node_ns, self.server_ns)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace the topology may hold, for ``destroy``."""
        return (*self.pods, self.new_server_ns)

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

    def build(self, adopt: Callable[[str], Mapping[str, int]] | None = None) -> None:
        """The namespaces, wired. ``adopt``: an engine's pods, made once the node exists
        (given its name), as namespace name -> a process holding the pod's network
        namespace; those are named here, not created, and wired as a CNI plugin would."""
        from pyroute2 import IPRoute, netns

        try:
            netns.create(self.node_ns)
            adopted = adopt(self.node_ns) if adopt is not None else {}
            for name in (self.client_ns, self.server_ns):
                if name in adopted:
                    netns.attach(name, adopted[name])
                else:
                    netns.create(name)
            with IPRoute(netns=self.node_ns) as node:
                _link_up(node, "lo")
            self._wire_pod("veth-c", self.client_ns, CLIENT_IP, NODE_CLIENT_SIDE_IP)
            self._wire_pod("veth-s", self.server_ns, SERVER_IP, NODE_SERVER_SIDE_IP)
            self.sysctl(self.node_ns, "net.ipv4.ip_forward", 1)
            self.nft(self.node_ns, _KUBE_PROXY_RULES)
        except BaseException:
            self.destroy()
            raise

    def _wire_pod(self, ifname: str, pod_ns: str, address: str, gateway: str) -> None:
        """What a CNI plugin does for a new pod: a veth pair from the node into the pod's
        namespace, the pod's address and its default route through the node."""
        from pyroute2 import IPRoute

        with IPRoute(netns=self.node_ns) as node:
            node.link(
                "add", ifname=ifname, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod_ns}
            )
            index = node.link_lookup(ifname=ifname)[0]
            node.addr("add", index=index, address=gateway, prefixlen=PREFIX_LEN)
            node.link("set", index=index, state="up")
        with IPRoute(netns=pod_ns) as pod:
            _link_up(pod, "lo")
            index = pod.link_lookup(ifname="eth0")[0]
            pod.addr("add", index=index, address=address, prefixlen=PREFIX_LEN)
            pod.link("set", index=index, state="up")
            pod.route("add", dst="0.0.0.0/0", gateway=gateway)

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
        return [str(flow) for flow in self.flows()]

    def flows(self) -> list[Flow]:
        """The node's conntrack entries."""
        from pyroute2 import Conntrack

        flows = []
        with Conntrack(netns=self.node_ns) as table:
            for entry in table.dump_entries():
                orig, reply = entry.tuple_orig, entry.tuple_reply
                state = entry.protoinfo.state_name() if entry.protoinfo is not None else "-"
                flows.append(
                    Flow(
                        state=state,
                        source=orig.saddr,
                        destination=orig.daddr,
                        source_port=orig.sport,
                        destination_port=orig.dport,
                        reply_source=reply.saddr,
                        reply_destination=reply.daddr,
                        status=entry.status_name(),
                        timeout_s=entry.timeout,
                    )
                )
        return flows

    # -- the field's faults (see faults.py) -----------------------------------------------

    def forget_idle_flows(self, idle_timeout_s: int, reset: bool = False) -> None:
        """Make the node a middlebox that forgets a flow idle for ``idle_timeout_s``: the
        established timeout is per network namespace, and with ``nf_conntrack_tcp_loose``
        off a mid-stream packet of a forgotten flow is INVALID instead of picked up again.
        Such packets are dropped (the Azure and GCP load balancers, IPVS) or answered with
        RST (the AWS NAT gateway) before routing: the un-NATed ClusterIP has no route, and
        the node would otherwise answer ICMP unreachable, which no middlebox does."""
        self.sysctl(
            self.node_ns, "net.netfilter.nf_conntrack_tcp_timeout_established", idle_timeout_s
        )
        self.sysctl(self.node_ns, "net.netfilter.nf_conntrack_tcp_loose", 0)
        action = "meta l4proto tcp reject with tcp reset" if reset else "drop"
        self.nft(
            self.node_ns,
            f"""
table ip middlebox {{
    chain prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        ct state invalid {action}
    }}
}}
""",
        )

    def remove_service_rule(self) -> None:
        """The Service's DNAT rule not there yet (an endpoint not yet programmed), and a way
        out of the node for what is not translated: the un-NATed SYN leaves (so conntrack
        confirms its entry) and vanishes, as it would on the node's uplink. The uplink is a
        veth whose peer stays in the node and drops what comes, being addressed to another
        host's MAC (a permanent neighbour: no ARP, whose failure would answer the client
        with ICMP host unreachable)."""
        from pyroute2 import IPRoute

        self.nft(self.node_ns, "flush chain ip kube prerouting")
        with IPRoute(netns=self.node_ns) as node:
            node.link("add", ifname="uplink", kind="veth", peer={"ifname": "uplink-peer"})
            for ifname in ("uplink", "uplink-peer"):
                _link_up(node, ifname)
            index = node.link_lookup(ifname="uplink")[0]
            node.addr("add", index=index, address=UPLINK_IP, prefixlen=PREFIX_LEN)
            node.neigh(
                "add", dst=UPLINK_GATEWAY_IP, lladdr=UPLINK_GATEWAY_MAC, ifindex=index, state=0x80
            )
            node.route("add", dst="0.0.0.0/0", gateway=UPLINK_GATEWAY_IP)

    def add_service_rule(self) -> None:
        """kube-proxy programs the endpoint: new connections are translated from now on."""
        self.nft(
            self.node_ns,
            f"add rule ip kube prerouting ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT} "
            f"dnat to {SERVER_IP}:{SERVICE_PORT}",
        )

    def heal(self) -> None:
        """End ``drop_pod_traffic``: the path carries the pod's packets again."""
        self.nft(self.node_ns, "delete table ip fault")

    def reuse_server_ip(self) -> None:
        """After a force-delete: a new pod with the server pod's IP, listening on nothing.
        The old pod's veth goes (and its blackhole route), as the CNI removes them; the new
        pod gets a veth of its own, as the CNI adds it."""
        from pyroute2 import IPRoute, netns

        with IPRoute(netns=self.node_ns) as node:
            node.route("del", dst=f"{SERVER_IP}/32", type="blackhole")
            node.link("del", index=node.link_lookup(ifname="veth-s")[0])
        netns.create(self.new_server_ns)
        self._wire_pod("veth-s", self.new_server_ns, SERVER_IP, NODE_SERVER_SIDE_IP)

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
