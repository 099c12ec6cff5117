"""The node agent (``tcpecho watch -A --metrics-port``) as a DaemonSet runs it: a process of its
own (``tests/agent/node_agent.py``) serving ``/metrics`` from snapshots of real connections,
scraped over HTTP and read back with prometheus_client's own parser.

Each gauge is checked per pod and label against connections the test made and knows:
loopback connections of this test in several states, one pod named with quotes, a backslash
and a newline, one the kubelet's logs do not name, and the host's; then programs in a lab's
client pod black-holed on their way to a Service's address. The counters add each snapshot's
counts; a snapshot that raises is counted and logged and the next scrape still works; the
agent stops on SIGINT and SIGTERM with status 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tcpecho import events
from tcpecho.agent.metrics import METRIC_NAMES, NodeCollector, service_networks
from tcpecho.lab.topology import CLUSTER_IP, SERVICE_PORT
from tcpecho.metrics import new_registry
from tcpecho.model import Activity, Failure, KernelSettings, predict
from tcpecho.process import free_port
from tcpecho.settings import SettingError
from tcpecho.tcp.options import TcpOptions
from tcpecho.watch import WatchConfig
from tcpecho.watch.look import NodeSnapshot, snapshot
from tests.conftest import Spawn, requires_netns
from tests.support import LoggedProcess, Scrape, scrape
from tests.watch.support import running_lab, wait_until
from tests.watch.test_namespaces import REFUSE_PIDFD_GETFD, send_line

TEST_PREFIX = "tagC-"
SERVICE_CIDRS = ["127.0.0.2/32", "fd00:10:96::/112"]
# A pod's name as another program may write it: the exposition format must escape it.
ODD_POD = 'cart-"db"\\ \n\u00fc'
UNNAMED_UID = "1f0e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
HOST = ("", "")
CHECKOUT = ("shop", "checkout")
ODD = ("shop", ODD_POD)
UNNAMED = ("", UNNAMED_UID)
# Keepalive probing within a minute and a 20 s user timeout: at risk neither idle nor busy.
PROTECTED = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 20_000),
]
# How far a rebuilt stuck time may be from the time since the send (tests/watch's figure).
STUCK_TOLERANCE_S = 0.5
Labels = frozenset[tuple[str, str]]


def labels(pod: tuple[str, str], **more: str) -> Labels:
    return frozenset({"namespace": pod[0], "pod": pod[1], **more}.items())


@dataclasses.dataclass
class Agent:
    """A running node agent: its process, its port and the record of its snapshots."""

    process: LoggedProcess
    port: int
    record: Path

    def scrape(self) -> Scrape:
        return scrape("127.0.0.1", self.port)

    def scrape_until(
        self, condition: Callable[[Scrape], bool], timeout: float, what: str
    ) -> Scrape:
        """The first scrape for which ``condition`` holds, scraping again until it does."""
        scrapes = [self.scrape()]

        def holds() -> bool:
            if condition(scrapes[-1]):
                return True
            scrapes.append(self.scrape())
            return False

        wait_until(holds, timeout, lambda: f"{what}; last scrape:\n{scrapes[-1].text}")
        return scrapes[-1]

    def snapshot_shown(self, scraped: Scrape) -> dict[str, Any]:
        """The snapshot ``scraped`` was made of: the histogram's count says which."""
        count = int(scraped.value("tcpecho_node_snapshot_duration_seconds_count"))
        lines = self.record.read_text().splitlines()
        shown: dict[str, Any] = json.loads(lines[count - 1])
        return shown

    def stop(self, signum: signal.Signals) -> events.AgentStopped:
        self.process.signal(signum)
        assert self.process.wait(10) == 0
        self.process.assert_no_traceback()
        for event in self.process.events:
            raw = {k: v for k, v in event.items() if k != "_received_at"}
            assert events.parse_line(json.dumps(raw)) is not None, raw  # declared events only
        stopped = events.parse_line(json.dumps(self.process.named("agent_stopped")[0]))
        assert stopped is not None
        assert isinstance(stopped.event, events.AgentStopped)
        assert stopped.event.signal == signum.name
        return stopped.event


def agent_argv(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.agent.node_agent", json.dumps(spec)]


# The modules this test runs: the agent's process imports the same.
SAME_MODULES = {"PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}


@pytest.fixture
def start_agent(spawn: Spawn, tmp_path: Path) -> Callable[..., Agent]:
    """``start_agent(**spec)``: the node agent on a free port, once it has started; run
    through ``prefix`` when given."""

    def start(*, prefix: tuple[str, ...] = (), **given: Any) -> Agent:
        record = tmp_path / "snapshots.jsonl"
        spec = {
            **{"interval_s": 0.3, "service_cidrs": SERVICE_CIDRS, "pods": [], "netns": None},
            **{"skipped": {}, "errors": {}, "fail_calls": []},
            **given,
            **{"port": free_port(), "record": str(record)},
        }
        process = spawn([*prefix, *agent_argv(spec)], env=SAME_MODULES)
        process.wait_for("agent_started", timeout=20)
        return Agent(process, spec["port"], record)

    return start


@dataclasses.dataclass
class LoopbackNode:
    """Connections of this test on loopback, each standing for a pod's (``node_agent`` gives
    the pods by port): a Service's listener on 127.0.0.2, another on 127.0.0.1, and one whose
    accept queue is full, so a SYN to it goes unanswered."""

    service_port: int
    other_port: int
    full_port: int
    checkout_ports: list[int]  # the local ports of checkout's connections
    unnamed_port: int  # the local port of the unnamed pod's connection
    connecting_since: float  # time.monotonic() when checkout's unanswered connect began

    @property
    def pod_rules(self) -> list[dict[str, Any]]:
        def rule(port: int, pod: tuple[str | None, str | None], uid: str) -> dict[str, Any]:
            return {"side": "local", "port": port, "namespace": pod[0], "pod": pod[1], "uid": uid}

        return [
            *(
                rule(port, CHECKOUT, "c0ffee00-0000-4000-8000-000000000001")
                for port in self.checkout_ports
            ),
            rule(self.service_port, ODD, "c0ffee00-0000-4000-8000-000000000002"),
            rule(self.unnamed_port, (None, None), UNNAMED_UID),
        ]


@pytest.fixture
def loopback_node() -> Iterator[LoopbackNode]:
    opened: list[socket.socket] = []

    def keep(sock: socket.socket) -> socket.socket:
        opened.append(sock)
        return sock

    def connect(host: str, port: int) -> socket.socket:
        return keep(socket.create_connection((host, port), source_address=("127.0.0.1", 0)))

    try:
        service = keep(socket.create_server(("127.0.0.2", 0)))
        other = keep(socket.create_server(("127.0.0.1", 0)))
        full = keep(socket.socket())
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # one connection waiting fills its queue
        ports = [s.getsockname()[1] for s in (service, other, full)]
        idle = connect("127.0.0.2", ports[0])  # ESTAB, no bound: at risk, to the Service
        keep(service.accept()[0])  # its other end, in the odd pod
        closed = connect("127.0.0.2", ports[0])
        for level, option, value in PROTECTED:
            closed.setsockopt(level, option, value)
        service.accept()[0].close()  # CLOSE-WAIT here; the orphan in FIN-WAIT-2 is no pod's
        to_other = connect("127.0.0.1", ports[1])  # ESTAB, at risk, to another peer
        keep(other.accept()[0])  # the host's
        waiting = connect("127.0.0.1", ports[2])  # the unnamed pod's, left in the queue
        connecting = keep(socket.socket())
        connecting.setblocking(False)
        connecting.connect_ex(("127.0.0.1", ports[2]))  # SYN-SENT: the queue is full
        yield LoopbackNode(
            service_port=ports[0],
            other_port=ports[1],
            full_port=ports[2],
            checkout_ports=[s.getsockname()[1] for s in (idle, closed, to_other, connecting)],
            unnamed_port=waiting.getsockname()[1],
            connecting_since=time.monotonic(),
        )
    finally:
        for sock in reversed(opened):
            sock.close()


def connections_expected() -> dict[Labels, float]:
    return {
        labels(CHECKOUT, state="ESTAB"): 2,
        labels(CHECKOUT, state="CLOSE-WAIT"): 1,
        labels(CHECKOUT, state="SYN-SENT"): 1,
        labels(ODD, state="ESTAB"): 1,
        labels(UNNAMED, state="ESTAB"): 1,
        labels(HOST, state="ESTAB"): 2,  # one accepted by this test, one still in the queue
        labels(HOST, state="FIN-WAIT-2"): 1,  # closed by this test: held by no process
    }


def at_risk_expected(options_read: bool) -> dict[Labels, float]:
    """By their own options when the agent could read them, else ``options-unknown`` for
    every connection a process holds in a state some option bounds."""
    if not options_read:
        unknown = "options-unknown"
        return {
            labels(CHECKOUT, code=unknown, peer="service"): 2,
            labels(CHECKOUT, code=unknown, peer="other"): 2,
            labels(ODD, code=unknown, peer="other"): 1,
            labels(UNNAMED, code=unknown, peer="other"): 1,
            labels(HOST, code=unknown, peer="other"): 1,
        }
    return {
        labels(CHECKOUT, code="no-bound", peer="service"): 1,  # the protected one is not
        labels(CHECKOUT, code="no-bound", peer="other"): 1,
        labels(CHECKOUT, code="slow-connect", peer="other"): 1,
        labels(ODD, code="no-bound", peer="other"): 1,
        labels(UNNAMED, code="no-bound", peer="other"): 1,
        labels(HOST, code="no-bound", peer="other"): 1,
    }


@pytest.mark.parametrize(
    "reads_options",
    [
        pytest.param(True, id="reads-options"),
        pytest.param(False, id="options-refused"),
    ],
)
def test_a_scrape_shows_the_last_snapshot_per_pod_state_and_risk(
    loopback_node: LoopbackNode, start_agent: Callable[..., Agent], reads_options: bool
) -> None:
    """Under a seccomp profile that refuses pidfd_getfd (a container runtime's default,
    without CAP_SYS_PTRACE) the agent sees the owners but not their options: each connection
    a process holds in a state some option bounds is then at risk as ``options-unknown``."""
    node = loopback_node
    agent = start_agent(
        prefix=() if reads_options else (sys.executable, "-c", REFUSE_PIDFD_GETFD),
        ports=[node.service_port, node.other_port, node.full_port],
        pods=node.pod_rules,
        skipped={"process": 2, "socket": 1},
        errors={"pods": 1},
        fail_calls=[2],
    )
    # Once checkout's SYN has been retransmitted (after 1 s), and after the failed call.
    scraped = agent.scrape_until(
        lambda s: (
            s.samples.get(("tcpecho_node_stuck_connections", labels(CHECKOUT))) == 1
            and s.samples.get(("tcpecho_node_errors_total", frozenset({("source", "snapshot")})))
            == 1
        ),
        timeout=15,
        what="checkout's connect stuck, and one failed snapshot",
    )
    shown = agent.snapshot_shown(scraped)
    assert scraped.labelled("tcpecho_node_connections") == connections_expected()
    risks = scraped.labelled("tcpecho_node_at_risk_connections")
    if not reads_options:
        assert risks == at_risk_expected(options_read=False)
    elif os.geteuid() == 0:
        assert risks == at_risk_expected(options_read=True)
    else:  # Yama may refuse a user's process its parent's sockets: then it cannot tell
        assert risks in (at_risk_expected(options_read=True), at_risk_expected(options_read=False))
    assert scraped.value("tcpecho_node_namespaces") == 1
    _check_stuck(scraped, shown, node)
    _check_counters(scraped, agent)
    _check_odd_name_escaped(scraped)
    assert {"process_cpu_seconds_total", "python_info"} <= scraped.names()
    failed = agent.process.wait_for("snapshot_failed")
    assert (failed["failures"], "call 2" in failed["error"]) == (1, True)
    assert agent.process.wait_for("snapshot_recovered")["failures"] == 1
    stopped = agent.stop(signal.SIGTERM)
    assert (stopped.failures, stopped.snapshots >= 2) == (1, True)


def _check_stuck(scraped: Scrape, shown: dict[str, Any], node: LoopbackNode) -> None:
    """Checkout's connect is its only stuck connection: its times are the snapshot's, and
    add up to the SYNs' budget; other pods are stuck on nothing and have no times."""
    assert scraped.labelled("tcpecho_node_stuck_connections") == {
        labels(pod): 1 if pod == CHECKOUT else 0 for pod in (CHECKOUT, ODD, UNNAMED, HOST)
    }
    (syn,) = [c for c in shown["connections"] if c["stuck"]]
    assert syn["state"] == "SYN_SENT"
    longest = scraped.labelled("tcpecho_node_longest_stuck_seconds")
    soonest = scraped.labelled("tcpecho_node_soonest_give_up_seconds")
    assert longest == {labels(CHECKOUT): pytest.approx(syn["stuck_for_s"])}
    assert soonest == {labels(CHECKOUT): pytest.approx(syn["gives_up_in_s"])}
    since_connect = shown["at"] - node.connecting_since
    assert abs(syn["stuck_for_s"] - since_connect) < STUCK_TOLERANCE_S
    budget = predict(KernelSettings.here(), TcpOptions(), Failure.SILENT, Activity.CONNECTING)
    both = longest[labels(CHECKOUT)] + soonest[labels(CHECKOUT)]
    assert both == pytest.approx(budget.low_s, abs=0.002)


def _check_counters(scraped: Scrape, agent: Agent) -> None:
    """Each whole snapshot adds its counts; the histogram holds each one's duration."""
    taken = int(scraped.value("tcpecho_node_snapshot_duration_seconds_count"))
    assert taken >= 2  # the first, and one after the failed call
    records = [json.loads(line) for line in agent.record.read_text().splitlines()][:taken]
    assert scraped.value("tcpecho_node_snapshot_duration_seconds_sum") == pytest.approx(
        sum(record["duration_s"] for record in records)
    )
    assert scraped.labelled("tcpecho_node_skipped_total") == {
        frozenset({("what", "namespace")}): 0,
        frozenset({("what", "process")}): 2 * taken,
        frozenset({("what", "socket")}): taken,
    }
    assert scraped.labelled("tcpecho_node_errors_total") == {
        frozenset({("source", "snapshot")}): 1,
        frozenset({("source", "pods")}): taken,
    }


def _check_odd_name_escaped(scraped: Scrape) -> None:
    """The exposition text escapes the name (a newline in it would end the line), and the
    parser gives back the name as read."""
    assert 'pod="cart-\\"db\\"\\\\ \\n\u00fc"' in scraped.text
    odd = [line for line in scraped.text.splitlines() if "cart-" in line]
    assert [line.split("{")[0] for line in odd] == [
        *("tcpecho_node_connections", "tcpecho_node_stuck_connections"),
        "tcpecho_node_at_risk_connections",
    ]  # one whole line each: the newline in the name did not end it
    pods = {dict(found)["pod"] for found in scraped.labelled("tcpecho_node_connections")}
    assert ODD_POD in pods


def test_metrics_that_cannot_be_served_are_metrics_failed_and_status_1(spawn: Spawn) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        spec = {"interval_s": 1, "service_cidrs": [], "port": port}
        agent = spawn(agent_argv(spec), env=SAME_MODULES)
        assert agent.wait(20) == 1
    failed = agent.wait_for("metrics_failed")
    assert (failed["port"], failed["errno"]) == (port, "EADDRINUSE")
    assert agent.named("agent_started") == []
    agent.assert_no_traceback()


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("10.96.0.1/16", "has host bits set"),
        ("10.96.0.0/33", "10.96.0.0/33"),
        ("kube-services", "kube-services"),
        ("", "''"),
    ],
)
def test_a_service_range_that_is_no_network_is_refused_on_its_option(cidr: str, why: str) -> None:
    with pytest.raises(SettingError, match="is no address range") as refused:
        service_networks(["10.96.0.0/16", cidr])
    assert refused.value.setting == "service_cidr"
    assert why in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_part_that_fails_is_left_out_and_counted_and_the_others_are_served() -> None:
    """A snapshot with a risk no part expected (a bug in whoever made it): the at-risk gauge
    is missing from the scrape and counted; the connections, the stuck ones and the
    namespaces are served, and the next snapshot is counted again."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), listener.accept()[0]:
            watched = snapshot(WatchConfig(port=port), KernelSettings.here())
    assert len(watched) == 2
    # No Risk where a Risk belongs: what a bug in the snapshot's maker would hand over.
    broken = dataclasses.replace(watched[0], at_risk=(None,))  # type: ignore[arg-type]
    node = NodeSnapshot((broken, watched[1]), 1, {}, {}, 0.01)
    collector = NodeCollector(service_networks(["10.96.0.0/16"]))
    registry = new_registry()
    registry.register(collector)
    for times in (1, 2):
        failed = collector.record(node)
        assert list(failed) == ["at_risk"]
        assert isinstance(failed["at_risk"], AttributeError)
        scraped = Scrape.parse(generate_latest(registry).decode())
        assert "tcpecho_node_at_risk_connections" not in scraped.names()
        assert scraped.value("tcpecho_node_connections", namespace="", pod="", state="ESTAB") == 2
        assert scraped.value("tcpecho_node_stuck_connections", namespace="", pod="") == 0
        assert scraped.value("tcpecho_node_namespaces") == 1
        assert scraped.value("tcpecho_node_errors_total", source="metrics:at_risk") == times


def test_the_metric_names_are_the_families_a_scrape_serves(
    loopback_node: LoopbackNode, start_agent: Callable[..., Agent]
) -> None:
    node = loopback_node
    agent = start_agent(
        ports=[node.service_port, node.other_port, node.full_port], pods=node.pod_rules
    )
    scraped = agent.scrape_until(
        lambda s: ("tcpecho_node_longest_stuck_seconds", labels(CHECKOUT)) in s.samples,
        timeout=15,
        what="checkout's connect stuck",
    )
    families = {
        family.name
        for family in text_string_to_metric_families(scraped.text)
        if family.name.startswith("tcpecho_node_")
    }
    # The parser names a counter's family without _total.
    assert families == {name.removesuffix("_total") for name in METRIC_NAMES}
    agent.stop(signal.SIGINT)


CLUSTER = f"{CLUSTER_IP}:{SERVICE_PORT}"


@requires_netns
@pytest.mark.netns
def test_black_holed_connections_give_the_longest_stuck_and_the_soonest_give_up(
    spawn: Spawn, tcpecho: str, start_agent: Callable[..., Agent]
) -> None:
    """Two programs of one pod black-holed on their way to a Service, one with no bound and
    one with a 60 s user timeout, sent to 1 s apart: the longest stuck time is the first's,
    the soonest give-up the second's; only the first is at risk, and to a Service."""
    with running_lab(TEST_PREFIX, spawn, tcpecho) as lab:
        plain = lab.start(["socat", "-", f"TCP:{CLUSTER}"], stdin=True)
        bounded = lab.start(["socat", "-", f"TCP:{CLUSTER},setsockopt-int=6:18:60000"], stdin=True)
        lab.wait_for_owners({plain.pid, bounded.pid})
        for program in (plain, bounded):
            send_line(program, b"hello\n")  # one echo first, so the RTO is the path's
        time.sleep(0.5)
        lab.topology.drop_pod_traffic()
        plain_sent = send_line(plain, b"ping\n")
        time.sleep(1)
        bounded_sent = send_line(bounded, b"ping\n")
        agent = start_agent(
            interval_s=0.5,
            netns=lab.topology.client_ns,
            service_cidrs=["10.96.0.0/16"],
            ports=[SERVICE_PORT],
            pods=[
                {
                    "side": "peer",
                    "port": SERVICE_PORT,
                    "namespace": "shop",
                    "pod": "checkout",
                    "uid": "c0ffee00-0000-4000-8000-000000000003",
                }
            ],
        )
        scraped = agent.scrape_until(
            lambda s: (
                s.samples.get(("tcpecho_node_stuck_connections", labels(CHECKOUT))) == 2
                and agent.snapshot_shown(s)["at"] > bounded_sent + 2
            ),
            timeout=20,
            what="both programs stuck, the second for 2 s",
        )
        _check_black_holed(scraped, agent.snapshot_shown(scraped), plain_sent, bounded_sent)
        agent.stop(signal.SIGINT)


def _check_black_holed(
    scraped: Scrape, shown: dict[str, Any], plain_sent: float, bounded_sent: float
) -> None:
    assert scraped.labelled("tcpecho_node_connections") == {labels(CHECKOUT, state="ESTAB"): 2}
    first, second = sorted(shown["connections"], key=lambda c: -c["stuck_for_s"])
    at = shown["at"]
    assert abs(first["stuck_for_s"] - (at - plain_sent)) < STUCK_TOLERANCE_S
    assert abs(second["stuck_for_s"] - (at - bounded_sent)) < STUCK_TOLERANCE_S
    assert scraped.value(
        "tcpecho_node_longest_stuck_seconds", namespace="shop", pod="checkout"
    ) == pytest.approx(first["stuck_for_s"])
    soonest = scraped.value(
        "tcpecho_node_soonest_give_up_seconds", namespace="shop", pod="checkout"
    )
    assert soonest == pytest.approx(second["gives_up_in_s"])
    assert 60 <= soonest + second["stuck_for_s"] <= 61  # the user timeout, from the send
    assert first["gives_up_in_s"] > 900  # tcp_retries2's ~929 s
    assert scraped.labelled("tcpecho_node_at_risk_connections") == {
        labels(CHECKOUT, code="no-bound", peer="service"): 1
    }
