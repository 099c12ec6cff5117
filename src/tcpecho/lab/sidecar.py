"""The client pod's sidecar: a real TCP proxy (HAProxy) between the app and the Service.

This module owns the proxy's side of the lab's ``sidecar`` fault: its HAProxy
configuration, the command lines that check and run it, the temporary file the
configuration lives in, and the process while it runs in the client pod's namespace.
Which fault uses it, and when, is the runner's business, not this module's.

::

    client pod                                                  node          server pod
    app --loopback--> 127.0.0.1:15001 haproxy --eth0--> 10.96.0.10:8000 --DNAT--> 10.244.2.2

The app's connection ends on loopback, at the proxy, and stays healthy whatever happens
beyond it: the app's TCP_USER_TIMEOUT and keepalive watch a peer that always answers. When
the server pod vanishes, only three things end the app's wait: its own read deadline, the
proxy's timeouts, or the kernel's retransmission budget on the proxy's upstream socket.

The defaults mirror an Istio sidecar: its Envoy listens for captured outbound traffic on
port 15001 and runs ``tcp_proxy`` with Envoy's defaults, an ``idle_timeout`` of 1 hour
("no upstream or downstream activity") and a cluster ``connect_timeout`` of 5 seconds
(Envoy's timeouts FAQ, section "TCP":
https://www.envoyproxy.io/docs/envoy/latest/faq/configuration/timeouts#tcp, from
docs/root/faq/configuration/timeouts.rst in envoyproxy/envoy). Envoy keeps one idle timer
for both sides; HAProxy keeps one per side, so both get the hour.

What HAProxy 2.6 does with this configuration (its configuration manual, sections 3, 4.2
and 8.5, and its management guide, sections 3 and 4, as Debian's package ships them in
/usr/share/doc/haproxy), and what the lab measured of it:

- ``timeout client`` and ``timeout server`` are *inactivity* timeouts: each side's runs
  while that side is expected to send or acknowledge data, and is re-armed by traffic.
  ``timeout tunnel`` is left unset, so they apply for the connection's whole life. The
  manual advises equal client and server timeouts in TCP mode; the defaults are equal.
  Measured: with ``timeout server 5s`` and the server pod gone, the app's pending request
  ends 5.0 s after it was sent (not after the last echo: HAProxy's own write upstream
  re-arms the timer), with EOF on the app's side and ``sD`` in HAProxy's log; a healthy
  connection idle for longer than the timeout is closed the same way (EOF while idle).
- When the kernel gives up on the upstream socket (its retransmissions, ETIMEDOUT),
  HAProxy closes the app's connection with a FIN: the app reads EOF, HAProxy logs ``SD``.
- An unset timeout is infinite (HAProxy warns); every one is set here.
- ``-db`` keeps the process in the foreground, with no master and no daemon; SIGTERM
  stops it at once (a hard stop: its connections close). No pidfile is written
  without ``-p``.
- ``-c`` checks the configuration and exits: 0 when valid.
- Listeners take SO_REUSEPORT unless ``noreuseport`` says otherwise; it does here, so a
  second proxy on the same port fails to start instead of sharing it.
- ``log stderr`` writes each connection's log line (``option tcplog``) to the standard
  error stream when the connection ends; its termination state tells who ended it:
  ``sD`` the server-side timeout during data, ``cD`` the client-side one, ``SD`` an error
  on the server side (a reset, or the kernel giving up), ``--`` a normal close.

HAProxy runs as root inside the namespace, started with ``ip netns exec``: the
configuration has no ``user``, ``group`` nor ``chroot`` (no account to switch to, no jail
to prepare), no stats socket and no health checks (a check would open connections of its
own towards the Service and change what the lab measures).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tcpecho.lab.topology import CLUSTER_IP, SERVICE_PORT, in_namespace
from tcpecho.tcp import diag
from tcpecho.tcp.names import format_address

__all__ = [
    "CONNECT_TIMEOUT_S",
    "ENVOY_TCP_IDLE_TIMEOUT_S",
    "HAPROXY",
    "SIDECAR_HOST",
    "SIDECAR_PORT",
    "UPSTREAM_HOST",
    "UPSTREAM_PORT",
    "Sidecar",
    "SidecarError",
    "TimeoutSettings",
    "check_argv",
    "check_config",
    "config_file",
    "haproxy_duration",
    "haproxy_missing",
    "render_config",
    "start_argv",
]

HAPROXY = "haproxy"
# Where the app connects: loopback in the client pod, on Istio's outbound capture port.
SIDECAR_HOST = "127.0.0.1"
SIDECAR_PORT = 15001
# Where the proxy connects: the Service's ClusterIP, which the node DNATs to the pod.
UPSTREAM_HOST = CLUSTER_IP
UPSTREAM_PORT = SERVICE_PORT
# Envoy's tcp_proxy idle_timeout and cluster connect_timeout when unset: 1 hour and 5 s
# (https://www.envoyproxy.io/docs/envoy/latest/faq/configuration/timeouts#tcp).
ENVOY_TCP_IDLE_TIMEOUT_S = 3600.0
CONNECT_TIMEOUT_S = 5.0
# HAProxy keeps timeouts in milliseconds in a signed 32-bit integer: about 24.8 days.
_MAX_TIMEOUT_MS = 2**31 - 1
_NAME = "sidecar"


class SidecarError(RuntimeError):
    """HAProxy refused its configuration, or did not start listening."""


@dataclass(frozen=True)
class TimeoutSettings:
    """HAProxy's ``timeout connect``, ``timeout client`` and ``timeout server``, in seconds.

    ``client_s`` bounds the app's side (loopback) and ``server_s`` the upstream side, each
    as an inactivity time; both default to Envoy's tcp_proxy idle timeout (1 h)."""

    connect_s: float = CONNECT_TIMEOUT_S
    client_s: float = ENVOY_TCP_IDLE_TIMEOUT_S
    server_s: float = ENVOY_TCP_IDLE_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("connect_s", "client_s", "server_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
            if round(value * 1000) > _MAX_TIMEOUT_MS:
                raise ValueError(f"{name} is over HAProxy's limit of {_MAX_TIMEOUT_MS} ms")
            if round(value * 1000) < 1:
                raise ValueError(f"{name} is under HAProxy's resolution of 1 ms: {value!r}")


def haproxy_duration(seconds: float) -> str:
    """``seconds`` in HAProxy's notation: ``1h``, ``5s``, or milliseconds (``1500ms``)."""
    milliseconds = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"


def render_config(
    timeouts: TimeoutSettings | None = None,
    *,
    listen_host: str = SIDECAR_HOST,
    listen_port: int = SIDECAR_PORT,
    upstream_host: str = UPSTREAM_HOST,
    upstream_port: int = UPSTREAM_PORT,
) -> str:
    """The HAProxy configuration: one TCP ``listen`` section, one server, no checks."""
    timeouts = timeouts or TimeoutSettings()
    return f"""\
# tcpecho lab: the client pod's sidecar (tcpecho/lab/sidecar.py).
global
    # One thread and a small connection limit: one app, a few connections.
    nbthread 1
    maxconn 256
    # No SO_REUSEPORT (HAProxy's default, for reloads): a second proxy on the port fails
    # to bind instead of sharing the app's connections with the first.
    noreuseport
    # Each connection's log line goes to stderr when it ends (-db keeps stderr open).
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect {haproxy_duration(timeouts.connect_s)}
    timeout client {haproxy_duration(timeouts.client_s)}
    timeout server {haproxy_duration(timeouts.server_s)}

listen {_NAME}
    bind {listen_host}:{listen_port}
    # No "check": a health check would open connections of its own to the Service.
    server upstream {upstream_host}:{upstream_port}
"""


def start_argv(config_path: str | os.PathLike[str]) -> list[str]:
    """HAProxy in the foreground on ``config_path``: no daemon, no master, no pidfile."""
    return [HAPROXY, "-f", os.fspath(config_path), "-db"]


def check_argv(config_path: str | os.PathLike[str]) -> list[str]:
    """HAProxy's check of ``config_path``: exit status 0 when it is valid."""
    return [HAPROXY, "-c", "-f", os.fspath(config_path)]


def haproxy_missing() -> str | None:
    """Why HAProxy cannot run here, or None."""
    if shutil.which(HAPROXY) is None:
        return "needs haproxy (apt-get install -y haproxy; scripts/system-packages installs it)"
    return None


@contextlib.contextmanager
def config_file(config: str) -> Iterator[Path]:
    """``config`` written to a file in a private temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tcpecho-sidecar-") as directory:
        path = Path(directory) / "haproxy.cfg"
        path.write_text(config)
        yield path


def check_config(config: str, namespace: str | None = None) -> str:
    """Have HAProxy check ``config`` (inside ``namespace`` if given); its output.

    Raises SidecarError with HAProxy's own words when the configuration is invalid."""
    with config_file(config) as path:
        argv = _in_namespace(namespace, check_argv(path))
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise SidecarError(f"haproxy -c rejected the configuration: {output}")
    return output


def _in_namespace(namespace: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv] if namespace else list(argv)


class Sidecar:
    """HAProxy running in ``namespace`` on a configuration of its own, as a context manager.

    Entering writes the configuration, starts HAProxy and waits until it listens; leaving
    stops it (SIGTERM, then SIGKILL) and removes the file. What HAProxy writes on stderr,
    its warnings and one log line per connection that ended, is kept in ``lines``."""

    def __init__(
        self,
        namespace: str | None,
        timeouts: TimeoutSettings | None = None,
        *,
        listen_port: int = SIDECAR_PORT,
        upstream_host: str = UPSTREAM_HOST,
        upstream_port: int = UPSTREAM_PORT,
        ready_timeout_s: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.timeouts = timeouts or TimeoutSettings()
        self.listen_port = listen_port
        self.config = render_config(
            self.timeouts,
            listen_port=listen_port,
            upstream_host=upstream_host,
            upstream_port=upstream_port,
        )
        self.lines: list[str] = []
        self._ready_timeout_s = ready_timeout_s
        self._files: contextlib.ExitStack | None = None
        self._reader: threading.Thread | None = None
        self.process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise SidecarError("the sidecar is not running")
        return self.process.pid

    def __enter__(self) -> Sidecar:
        self._files = contextlib.ExitStack()
        try:
            path = self._files.enter_context(config_file(self.config))
            # ip netns exec execs HAProxy in its own place: the pid is HAProxy's.
            self.process = subprocess.Popen(
                _in_namespace(self.namespace, start_argv(path)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            self._reader = threading.Thread(
                target=self._read, args=(self.process,), name="sidecar-stderr", daemon=True
            )
            self._reader.start()
            self._wait_listening(self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line.rstrip("\n"))

    def _wait_listening(self, process: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        while not _listens(process.pid, self.namespace, SIDECAR_HOST, self.listen_port):
            if process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(2)
                raise SidecarError(
                    f"haproxy exited with status {process.returncode}: "
                    + " / ".join(self.lines[-5:])
                )
            if time.monotonic() > deadline:
                raise SidecarError(f"haproxy did not listen within {self._ready_timeout_s} s")
            time.sleep(0.02)

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop HAProxy (SIGTERM: it quits at once; SIGKILL if not) and remove its file."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join(2)
        files, self._files = self._files, None
        if files is not None:
            files.close()


def _listens(pid: int, namespace: str | None, host: str, port: int) -> bool:
    """Whether ``pid`` itself holds a socket listening on ``host:port`` in ``namespace``
    (the kernel's socket diagnostics, as everywhere in the lab): another process's listener
    on the same port does not count, nor a socket of ``pid``'s before it entered the
    namespace."""

    def listening() -> set[int]:
        found = diag.connections(listening=True)
        wanted = format_address((host, port))
        return {c.inode for c in found if c.state == "LISTEN" and c.local == wanted}

    inodes = listening() if namespace is None else in_namespace(namespace, listening)
    return any(owner.pid == pid for owner in diag.owners(inodes).values())
