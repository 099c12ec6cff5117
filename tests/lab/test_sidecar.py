"""The client pod's sidecar: its HAProxy configuration, HAProxy's own check of it, and a real
echo through the proxy from the client pod to the server pod.

HAProxy comes from Debian's package, which scripts/system-packages installs (CI runs it on a
fresh machine); without it the tests that run HAProxy skip and say so.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpecho.lab import sidecar
from tcpecho.lab.sidecar import Sidecar, SidecarError, TimeoutSettings
from tcpecho.lab.topology import CLUSTER_IP, SERVER_IP, SERVICE_PORT, Topology, remove_namespaces
from tests.conftest import Spawn, requires_netns
from tests.support import free_port

requires_haproxy = pytest.mark.skipif(
    sidecar.haproxy_missing() is not None, reason=str(sidecar.haproxy_missing())
)


def _directives(config: str) -> list[str]:
    """The configuration's lines without comments and indentation."""
    lines = (line.split("#", 1)[0].strip() for line in config.splitlines())
    return [line for line in lines if line]


# -- the configuration ------------------------------------------------------------------------


def test_default_config_mirrors_an_istio_sidecar() -> None:
    directives = _directives(sidecar.render_config())
    assert "mode tcp" in directives
    assert "bind 127.0.0.1:15001" in directives
    assert f"server upstream {CLUSTER_IP}:{SERVICE_PORT}" in directives
    # Envoy's tcp_proxy idle_timeout (1 h) on both sides, and its 5 s connect timeout.
    assert "timeout connect 5s" in directives
    assert "timeout client 1h" in directives
    assert "timeout server 1h" in directives


def test_config_has_no_checks_no_privilege_drop_and_no_daemon() -> None:
    words = {word for line in _directives(sidecar.render_config()) for word in line.split()}
    assert words.isdisjoint({"check", "user", "group", "chroot", "daemon", "pidfile", "stats"})
    assert not any(
        line.startswith("timeout tunnel") for line in _directives(sidecar.render_config())
    )


def test_config_renders_the_timeouts_it_is_given() -> None:
    timeouts = TimeoutSettings(connect_s=1.5, client_s=90, server_s=5)
    directives = _directives(sidecar.render_config(timeouts, listen_port=15006))
    assert "timeout connect 1500ms" in directives
    assert "timeout client 90s" in directives
    assert "timeout server 5s" in directives
    assert "bind 127.0.0.1:15006" in directives


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(3600, "1h"), (7200, "2h"), (60, "1m"), (90, "90s"), (5, "5s"), (0.25, "250ms")],
)
def test_durations_are_written_in_haproxy_units(seconds: float, expected: str) -> None:
    assert sidecar.haproxy_duration(seconds) == expected


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf, 0.0001, 30 * 86400])
def test_timeouts_haproxy_cannot_hold_are_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="server_s"):
        TimeoutSettings(server_s=seconds)


def test_argv_runs_haproxy_in_the_foreground() -> None:
    assert sidecar.start_argv(Path("/tmp/x/haproxy.cfg")) == [
        "haproxy",
        "-f",
        "/tmp/x/haproxy.cfg",
        "-db",
    ]
    assert sidecar.check_argv("/tmp/x/haproxy.cfg") == ["haproxy", "-c", "-f", "/tmp/x/haproxy.cfg"]


def test_config_file_is_removed_afterwards() -> None:
    with sidecar.config_file("global\n") as path:
        assert path.read_text() == "global\n"
    assert not path.exists()
    assert not path.parent.exists()


# -- HAProxy's own word ------------------------------------------------------------------------


@requires_haproxy
@pytest.mark.parametrize(
    "timeouts", [TimeoutSettings(), TimeoutSettings(connect_s=1.5, client_s=0.25, server_s=5)]
)
def test_haproxy_accepts_the_config(timeouts: TimeoutSettings) -> None:
    output = sidecar.check_config(sidecar.render_config(timeouts))
    assert "Configuration file is valid" in output
    # No warning either: every timeout is set, nothing is deprecated.
    assert "WARNING" not in output.upper()


@requires_haproxy
def test_haproxy_refusal_is_reported_in_its_own_words() -> None:
    with pytest.raises(SidecarError, match="unknown keyword 'nonsense'"):
        sidecar.check_config(sidecar.render_config() + "    nonsense on\n")


@requires_haproxy
def test_a_sidecar_that_cannot_bind_says_why() -> None:
    # On the host's loopback, with no namespace: the second proxy finds the port taken.
    port = free_port()
    with (
        Sidecar(None, listen_port=port, upstream_host="127.0.0.1", upstream_port=9),
        pytest.raises(SidecarError, match=r"exited with status 1: .*cannot bind socket"),
        Sidecar(None, listen_port=port, upstream_host="127.0.0.1", upstream_port=9),
    ):
        pass


# -- a real echo through the proxy -------------------------------------------------------------


@pytest.fixture
def topology() -> Iterator[Topology]:
    """The lab's three namespaces, named for this test run; removed whatever happens."""
    topology = Topology(f"tcpecho-sidecartest-{os.getpid()}")
    try:
        topology.build()
        yield topology
    finally:
        remove_namespaces(topology.namespaces)


@requires_netns
@requires_haproxy
@pytest.mark.netns
def test_an_echo_goes_through_the_proxy_to_the_server_pod(
    topology: Topology, spawn: Spawn, tcpecho: str
) -> None:
    server = spawn(
        topology.command(
            topology.server_ns,
            [tcpecho, "server", "--port", str(SERVICE_PORT), "--log-format", "json"],
        ),
    )
    server.wait_for("server_started")
    with Sidecar(topology.client_ns) as proxy:
        client = subprocess.run(
            topology.command(
                topology.client_ns,
                [
                    tcpecho,
                    "client",
                    "--server",
                    sidecar.SIDECAR_HOST,
                    "--port",
                    str(sidecar.SIDECAR_PORT),
                    "--count",
                    "1",
                    "--log-format",
                    "json",
                ],
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert '"event": "response_received"' in client.stdout
        # The server saw the proxy's connection from the client pod, through the DNAT.
        accepted = server.wait_for("connection_accepted")
        assert accepted["peer"].startswith("10.244.1.2:")
        assert accepted["local"] == f"{SERVER_IP}:{SERVICE_PORT}"
    # HAProxy logged the connection when it ended: a normal close ("--") on both sides.
    assert any(" sidecar sidecar/upstream " in line and " -- " in line for line in proxy.lines)
