"""One look at the connections (``snapshot``): the kernel's socket diagnostics, the filters
``WatchConfig`` asks for, the process owning each socket, the program's own socket options,
and what the kernel model makes of each connection (``Watched``).

A connection with unacknowledged data the kernel keeps retransmitting is the model's busy
connection to a silent peer; one whose keepalive probes go unanswered is its idle one; a
connect whose SYNs go unanswered is its connecting one; a closing socket no program holds
any more is its orphan, bounded by ``tcp_orphan_retries``. A healthy connection gets the
answer for a request lost now. Every open connection also gets the idle answer: when a peer
that vanished while nothing was being sent would be noticed (never, without keepalive),
since the kernel shows nothing at all for that one. How long each has been stuck is rebuilt
from the kernel's timers (``model.stuck_for_s``), on the prediction's clock.

Each connection a program holds is also judged for what its options will let go wrong in
the state it is in now (``Watched.at_risk``), with ``explain``'s traps for those options
and the path: with data waiting for an acknowledgement, a missing user timeout; idle,
keepalive off or slower than the path's idle timeout; connecting, the SYNs' budget. Where
the options cannot be read it says it cannot tell (``options-unknown``), never that all is
well.

Every network namespace of the host is looked at by ``node_snapshot`` once, and again and
again by a ``NodeWatcher`` (the node agent's): it reads each socket's options once while
the socket lives (``OptionsCache``, by inode and the kernel's cookie). The model's answers
depend only on frozen values (the namespace's sysctls, the options, the state, the first
RTO), which a node's connections share: each is computed once and kept (bounded), and
only what depends on a connection's own timers (how long it has been stuck) is computed
for each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import operator
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tcpecho.explain import PathContext, Trap, socket_traps
from tcpecho.model import (
    TIMER_SLACK,
    Activity,
    Failure,
    KernelSettings,
    Mechanism,
    Prediction,
    first_rto_s,
    orphan_retries,
    predict,
    stuck_for_s,
)
from tcpecho.tcp import diag, names, namespaces
from tcpecho.tcp.diag import Connection, Owner
from tcpecho.tcp.namespaces import NamespaceUnavailableError, NetNamespace
from tcpecho.tcp.options import EffectiveOptions, TcpOptions
from tcpecho.watch import changes
from tcpecho.watch.config import WatchConfig
from tcpecho.watch.pods import PodIdentity, PodLookup, PodSources

# States in which the connection can have data in flight that the peer must acknowledge.
_SENDING_STATES = frozenset({"ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1", "CLOSING", "LAST_ACK"})
# States in which the program may still send: a peer that vanishes meanwhile can go unnoticed.
_OPEN_STATES = frozenset({"ESTABLISHED", "CLOSE_WAIT"})
# States of a socket whose FIN is sent: without a program it is an orphan.
_CLOSING_STATES = frozenset({"FIN_WAIT1", "CLOSING", "LAST_ACK"})
# What puts a connection at risk in the state it is in, among explain's traps for its options
# (docs/watch.md, "At risk"): with data waiting for an acknowledgement, no user timeout (and
# keepalive sends no probe meanwhile); idle, keepalive off (no-bound when no user timeout
# bounds the next request either) or probing no sooner than the path forgets the flow;
# connecting, the SYNs' budget.
_BUSY_RISKS = frozenset(
    {"no-bound", "keepalive-without-user-timeout", "recverr-without-user-timeout"}
)
_IDLE_RISKS = frozenset(
    {"no-bound", "user-timeout-without-keepalive", "keepalive-exceeds-path-idle"}
)
_CONNECTING_RISKS = frozenset({"slow-connect"})


@dataclass(frozen=True)
class Risk:
    """What the options a connection's socket carries will let go wrong in its state: one of
    explain's traps (its code and message, without the fix), or ``options-unknown``."""

    code: str
    message: str


OPTIONS_UNKNOWN = Risk(
    "options-unknown",
    "its program's socket options could not be read, so whether it is at risk cannot be "
    "told (the JSON's assumption says what it takes to read them)",
)


@dataclass(frozen=True)
class Watched:
    """One connection, its owner and options, and what the kernel model makes of it.

    ``stuck_for_s`` and ``prediction`` run on the same clock (the prediction's ``clock``):
    from the first unacknowledged send (or the connect), or, for keepalive probing, from the
    last data received."""

    connection: Connection
    owner: Owner | None
    options: EffectiveOptions | None  # None: the program's own options could not be read
    prediction: Prediction | None  # None: nothing this state waits for is modelled
    stuck_for_s: float | None
    # For an open connection: when a peer that vanished while it is idle would be noticed.
    if_idle: Prediction | None = None
    # What its options will let go wrong in its state; empty: nothing, or no program holds it.
    at_risk: tuple[Risk, ...] = ()
    # With --all-namespaces: its network namespace (the inode of /proc/PID/ns/net), and the
    # Kubernetes pod of its owner (None: the host's, or no owner).
    netns: int | None = None
    pod: PodIdentity | None = None

    @functools.cached_property
    def urgency(self) -> tuple[bool, float, str, str]:
        """Where it goes in a snapshot, most urgent first: stuck ones by the time left
        (``gives_up_in_s``), then by peer and local address."""
        connection = self.connection
        # Without a stuck time there is no time left: most connections, whose key is made
        # without the chain of properties behind ``gives_up_in_s``.
        left = None if self.stuck_for_s is None else self.gives_up_in_s
        return (
            not connection.stuck,
            _NEVER if left is None else left,
            connection.peer,
            connection.local,
        )

    @property
    def orphaned(self) -> bool:
        """Closed by its program (or left by it at exit) and finished by the kernel alone."""
        return is_orphan(self.connection)

    @property
    def gives_up_after_s(self) -> float | None:
        """The earliest time the model expects the kernel to end the wait; None: never."""
        if self.prediction is None or self.prediction.never:
            return None
        return round(self.prediction.low_s, 3)

    @property
    def gives_up_in_s(self) -> float | None:
        """What is left of the wait, for a stuck connection; None for a healthy one."""
        after = self.gives_up_after_s
        if after is None or self.stuck_for_s is None:
            return None
        return round(max(0.0, after - self.stuck_for_s), 3)

    @property
    def limited_by(self) -> str | None:
        return None if self.prediction is None else str(self.prediction.mechanism)

    @property
    def options_source(self) -> str:
        return "unknown" if self.options is None else "socket"

    @property
    def assumption(self) -> str | None:
        """What the prediction assumed in place of options it could not read, and how to get
        the real ones; None when the options are the socket's own."""
        if self.options is not None:
            return None
        keepalive = (
            "keepalive on with this namespace's tcp_keepalive_* sysctls (the kernel's keepalive "
            "timer runs)"
            if self.connection.timer == "keepalive"
            else "keepalive off (the kernel shows no keepalive timer)"
        )
        assumed = f"the kernel's defaults: no TCP_USER_TIMEOUT, {keepalive}"
        if self.connection.inode == 0:
            return (
                f"{assumed}. No program holds this socket any more (closed, or TIME_WAIT): "
                "the kernel finishes it alone"
            )
        if self.owner is None:
            return (
                f"{assumed}. No process shows this socket in /proc/PID/fd: run as the "
                "program's user, or as root with CAP_SYS_PTRACE over it, to see the owner "
                "and read its own options"
            )
        return (
            f"{assumed}. Reading the options of pid {self.owner.pid} was refused "
            "(pidfd_getfd): run as root or with CAP_SYS_PTRACE over the process "
            "(a container runtime's seccomp profile also wants CAP_SYS_PTRACE)"
        )


@dataclass(frozen=True)
class NodeSnapshot:
    """One look at every network namespace of the node (``watch --all-namespaces``), and
    what it could not see: the node agent's metrics are made of it."""

    watched: tuple[Watched, ...]
    namespaces: int  # network namespaces read
    skipped: Mapping[str, int]  # what was skipped, by kind: namespace, process, socket
    errors: Mapping[str, int]  # sources that failed in this snapshot, by source
    duration_s: float


def snapshot(config: WatchConfig, kernel: KernelSettings) -> list[Watched]:
    """The connections ``config`` selects, most urgent first: stuck ones by the time left.

    The kernel leaves out the states not asked for (by default ``ss``'s: connected sockets,
    no listeners, no TIME-WAIT), so a busy pod's finished connections cost nothing."""
    states = diag.ALL_STATES if config.all_states else diag.CONNECTED_STATES
    selected = [c for c in diag.connections(states=states) if _addresses_match(c, config)]
    owners = diag.owners({c.inode for c in selected if c.inode})
    if config.pid is not None:
        selected = [c for c in selected if _owner_pid(owners.get(c.inode)) == config.pid]
    if config.stuck:
        selected = [c for c in selected if c.stuck]
    answers, options = _Answers(kernel, config.path), OptionsCache()
    watched = []
    for connection in selected:
        owner = owners.get(connection.inode)
        read = None if owner is None else options.of(connection, owner)
        watched.append(_judge(connection, owner, read, answers))
    if config.at_risk:
        watched = [w for w in watched if w.at_risk]
    return sorted(watched, key=_by_urgency)


def node_snapshot(config: WatchConfig) -> NodeSnapshot:
    """``snapshot`` of every network namespace of the host, each judged with its own
    sysctls (``tcp_retries2`` and keepalive's are per namespace), each connection named by
    its owner's pod: what ``watch --all-namespaces`` shows and the node agent exports.

    A namespace whose last process left, or that may not be entered, is skipped and counted,
    as are processes that vanish or refuse; the snapshot goes on. One look: a watch that
    looks again and again keeps a ``NodeWatcher``, which reads each socket's options once."""
    return NodeWatcher(config).snapshot()


class NodeWatcher:
    """``node_snapshot`` taken again and again, as the node agent takes it: each socket's
    options are read on the first snapshot that shows it and kept while it lives
    (``OptionsCache``, one per namespace); each socket's owner is kept while its descriptor
    still refers to it (``diag.owners_again``: one readlink, where a walk reads every
    process's descriptors); and the model's answers are shared by every connection with
    the same sysctls, options and state (kept for the process's life, bounded).

    With ``relist_every`` (the agent's), a namespace whose last listing nothing can have
    changed since (``watch.changes``: its TCP counters still, no timer that moves a
    connection on its own) is not listed again: its last listing stands, and each one is
    listed again at least every ``relist_every`` snapshots. Without it every namespace is
    listed at every snapshot, as the watch's table shows them (its timers and tcp_info
    move on, where the agent's counts do not)."""

    def __init__(self, config: WatchConfig, *, relist_every: int | None = None) -> None:
        self.config = config
        self.relist_every = relist_every
        self.options_read = 0  # sockets' options read so far (each a pidfd_getfd)
        self._listings: dict[int, _Listing] = {}  # each namespace's last, by its inode

    @property
    def options_kept(self) -> int:
        """The sockets whose options are kept: the live ones of the namespaces listed."""
        return sum(len(listing.options) for listing in self._listings.values())

    def options_in(self, netns: int) -> OptionsCache:
        """The options kept for the sockets of the namespace ``netns`` (an inode)."""
        listing = self._listings.get(netns)
        return OptionsCache() if listing is None else listing.options

    def snapshot(self) -> NodeSnapshot:
        """One look at every network namespace of the host, as ``node_snapshot``'s."""
        with _collector_paused():
            return self._snapshot()

    def _snapshot(self) -> NodeSnapshot:
        config = self.config
        started = time.monotonic()
        host = namespaces.host_namespaces()
        counters, to_list = self._to_list(host.namespaces)
        self._let_go(to_list)
        states = diag.ALL_STATES if config.all_states else diag.CONNECTED_STATES
        kernels: dict[int, KernelSettings] = {}
        listed = diag.connections_by_namespace(
            to_list, states=states, visit=functools.partial(_read_kernel, kernels)
        )
        by_inode = host.by_inode()
        selected = (
            {
                inode: [c for c in found if _addresses_match(c, config)]
                for inode, found in listed.by_namespace.items()
            }
            if config.port is not None or config.peer_host is not None
            else listed.by_namespace  # no address asked for: every connection matches
        )
        owners = diag.owners_again(
            {c.inode for found in selected.values() for c in found if c.inode},
            self._owners_of(selected),
        )
        pods = PodLookup(
            PodSources(
                pod_logs=Path(config.pod_logs),
                container_logs=None
                if config.container_logs is None
                else Path(config.container_logs),
            )
        )
        errors: dict[str, int] = {}
        listings = self._standing(host.namespaces, {n.inode for n in to_list})
        for inode, found in selected.items():
            kernel = kernels.get(inode) or _namespace_kernel(by_inode[inode], errors)
            listings[inode] = self._listed(
                inode, found, owners, kernel, pods, (counters.get(inode), listed.by_namespace)
            )
        self._listings = listings
        skipped = {
            "namespace": listed.skipped.total,
            "process": host.skipped.total + pods.skipped.vanished + pods.skipped.unreadable,
        }
        watched = [w for listing in listings.values() for w in listing.watched]
        return NodeSnapshot(
            tuple(sorted(watched, key=_by_urgency)),
            len(listings),
            skipped,
            errors,
            time.monotonic() - started,
        )

    def _to_list(
        self, present: tuple[NetNamespace, ...]
    ) -> tuple[dict[int, str | None], list[NetNamespace]]:
        """Each namespace's TCP counters (with ``relist_every``), and the namespaces to list
        now: every one, or those ``changes.to_relist`` chooses."""
        if self.relist_every is None:
            return {}, list(present)
        counters = {namespace.inode: changes.tcp_counters(namespace) for namespace in present}
        last = {inode: listing.last for inode, listing in self._listings.items()}
        chosen = changes.to_relist(present, last, counters, self.relist_every)
        return counters, [namespace for namespace in present if namespace.inode in chosen]

    def _let_go(self, to_list: list[NetNamespace]) -> None:
        """The connections of the last listings of ``to_list`` let go before they are listed
        again (their owners and options are kept): a snapshot that lists every namespace
        then holds one node's connections at a time, not two."""
        for namespace in to_list:
            listing = self._listings.get(namespace.inode)
            if listing is not None:
                self._listings[namespace.inode] = dataclasses.replace(listing, watched=())

    def _standing(
        self, present: tuple[NetNamespace, ...], listed_now: set[int]
    ) -> dict[int, _Listing]:
        """The last listings that stand: of the namespaces still there and not listed now,
        each a snapshot older. A namespace gone, or listed now (even if that failed), has
        none."""
        standing = {}
        for namespace in present:
            listing = self._listings.get(namespace.inode)
            if listing is not None and namespace.inode not in listed_now:
                standing[namespace.inode] = listing.aged()
        return standing

    def _owners_of(self, selected: Mapping[int, list[Connection]]) -> dict[int, Owner]:
        """The owners the last listings of the ``selected`` namespaces found: where each
        socket's owner is looked for first."""
        before: dict[int, Owner] = {}
        for inode in selected:
            listing = self._listings.get(inode)
            if listing is not None:
                before.update(listing.owners)
        return before

    def _listed(
        self,
        netns: int,
        found: list[Connection],
        owners: dict[int, Owner],
        kernel: KernelSettings,
        pods: PodLookup,
        counted: tuple[str | None, Mapping[int, list[Connection]]],
    ) -> _Listing:
        """The namespace's new listing: what the model makes of ``found`` (with ``at_risk``,
        only of those at risk: the others are never built), with the options kept from its
        last listing, and what the next snapshot weighs about it (its ``counters`` then,
        and whether all it showed is settled)."""
        counters, every_listed = counted
        last = self._listings.get(netns)
        kept = OptionsCache() if last is None else last.options
        read = kept.reads
        answers = _Answers(kernel, self.config.path)
        judged = []
        for connection in _filtered(found, owners, self.config):
            owner = owners.get(connection.inode)
            options = None if owner is None else kept.of(connection, owner)
            if self.config.at_risk and not _risks(connection, options, answers):
                continue
            pod = None if owner is None else pods.of(owner.pid)
            judged.append(_judge(connection, owner, options, answers, netns, pod))
        kept.forget_unseen()
        self.options_read += kept.reads - read
        return _Listing(
            tuple(sorted(judged, key=_by_urgency)),  # a run the snapshot's sort merges
            {c.inode: owners[c.inode] for c in found if c.inode in owners},
            kept,
            changes.LastListing(counters, changes.settled(every_listed[netns])),
        )


@dataclass(frozen=True)
class _Listing:
    """One namespace's last listing, as the node watcher keeps it: what it showed, its
    sockets' owners and options, and what the next snapshot weighs about it."""

    watched: tuple[Watched, ...]
    owners: dict[int, Owner]  # by socket inode
    options: OptionsCache
    last: changes.LastListing

    def aged(self) -> _Listing:
        last = self.last
        return dataclasses.replace(
            self, last=changes.LastListing(last.counters, last.settled, last.age + 1)
        )


_SHARED_OPTIONS_MAX = 4096


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector held off while a snapshot is built: a snapshot
    makes several objects per connection (a hundred thousand for 20,000 sockets), none in a
    cycle, and each few hundred of them would otherwise start a collection that walks the
    young ones, and now and then every object of the process (about a tenth of a
    snapshot's CPU time with 20,000 sockets). Freed by their reference counts as ever; the
    collector runs after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class OptionsCache:
    """Each live socket's options, read once (``diag.socket_options``) and kept while the
    socket lives: a program sets its options when it makes the socket, and reading them
    takes three system calls per socket (pidfd_open, pidfd_getfd, getsockopt of each).

    A socket is known by its inode and the kernel's cookie for it: an inode number can be
    given again to a later socket, a cookie never is, and a descriptor number (what the
    owner holds) is reused all the time. A socket first seen connecting is read again once
    it is seen past it: a program may set its options once the connect succeeded (Go sets
    keepalive then). A read that failed (refused, or the socket closed meanwhile) is kept
    only for the owner it failed with. What one snapshot did not show is forgotten at its
    end (``forget_unseen``), so the cache holds no more than the live sockets. Equal
    options are kept as one value, shared by their sockets: a node has few distinct ones."""

    def __init__(self) -> None:
        self._kept: dict[tuple[int, int, bool], tuple[Owner, EffectiveOptions | None]] = {}
        self._seen: dict[tuple[int, int, bool], tuple[Owner, EffectiveOptions | None]] = {}
        self._shared: dict[EffectiveOptions, EffectiveOptions] = {}
        self.reads = 0  # sockets' options read so far (each a pidfd_getfd)

    def of(self, connection: Connection, owner: Owner) -> EffectiveOptions | None:
        """``owner``'s socket's options, as ``diag.socket_options`` reads them."""
        key = (connection.inode, connection.cookie, connection.state == "SYN_SENT")
        kept = self._seen.get(key) or self._kept.get(key)
        if kept is None or (kept[1] is None and kept[0] != owner):
            kept = (owner, self._shared_value(diag.socket_options(owner)))
            self.reads += 1
        self._seen[key] = kept
        return kept[1]

    def _shared_value(self, options: EffectiveOptions | None) -> EffectiveOptions | None:
        if options is None:
            return None
        if len(self._shared) >= _SHARED_OPTIONS_MAX:  # a node of many distinct options
            self._shared.clear()  # sharing saves memory and time: never needed for an answer
        return self._shared.setdefault(options, options)

    def forget_unseen(self) -> None:
        """Keep only the sockets looked up since the last call: the live ones."""
        self._kept, self._seen = self._seen, {}

    def __len__(self) -> int:
        return len(self._kept)


def _filtered(
    found: list[Connection], owners: dict[int, Owner], config: WatchConfig
) -> list[Connection]:
    if config.pid is not None:
        found = [c for c in found if _owner_pid(owners.get(c.inode)) == config.pid]
    if config.stuck:
        found = [c for c in found if c.stuck]
    return found


def _read_kernel(into: dict[int, KernelSettings], namespace: NetNamespace) -> None:
    """The sysctls of the namespace the calling thread is in (``namespace``), read while
    the listing is there anyway; where that fails, ``_namespace_kernel`` tries again."""
    with contextlib.suppress(OSError):
        into[namespace.inode] = KernelSettings.here()


def _namespace_kernel(namespace: NetNamespace, errors: dict[str, int]) -> KernelSettings:
    """The namespace's own sysctls, read inside it; where that fails, the kernel's defaults
    (what every new namespace starts from), and the failure counted."""
    try:
        return namespaces.run_inside(namespace, KernelSettings.here)
    except (OSError, NamespaceUnavailableError):
        errors["sysctls"] = errors.get("sysctls", 0) + 1
        return KernelSettings()


def _owner_pid(owner: Owner | None) -> int | None:
    return None if owner is None else owner.pid


# Most urgent first: stuck ones by the time left, then by peer and local address. The key is
# kept on each Watched (``urgency``): a listing that stands is ordered again at no cost.
_by_urgency = operator.attrgetter("urgency")


_NEVER = float("inf")


def _addresses_match(connection: Connection, config: WatchConfig) -> bool:
    if config.port is not None and config.port not in (
        connection.local_port,
        connection.peer_port,
    ):
        return False
    if config.peer_host is None:
        return True
    if config.peer_port is not None and connection.peer_port != config.peer_port:
        return False
    # Resolved once, when the config was made: a Service's name keeps its ClusterIP.
    return names.normalized(connection.peer_host) in config.peer_addresses


def watch_connection(
    connection: Connection,
    owner: Owner | None,
    kernel: KernelSettings,
    path: PathContext,
) -> Watched:
    """What the kernel model makes of one connection, with its program's own options when
    they can be read, and the kernel's defaults otherwise; its risks on ``path``."""
    options = None if owner is None else diag.socket_options(owner)
    return _judge(connection, owner, options, _Answers(kernel, path))


def _judge(
    connection: Connection,
    owner: Owner | None,
    options: EffectiveOptions | None,
    answers: _Answers,
    netns: int | None = None,
    pod: PodIdentity | None = None,
) -> Watched:
    prediction, idle, at_risk = answers.verdict(connection, options)
    return Watched(
        connection=connection,
        owner=owner,
        options=options,
        prediction=prediction,
        stuck_for_s=stuck_for_s(connection, answers.kernel),
        if_idle=idle,
        at_risk=at_risk,
        netns=netns,
        pod=pod,
    )


_Verdict = tuple[Prediction | None, Prediction | None, tuple[Risk, ...]]


def _verdict(
    connection: Connection, options: EffectiveOptions | None, answers: _Answers
) -> _Verdict:
    """What the model makes of a connection but how long it has been stuck: its
    prediction, the answer for its peer vanishing while it is idle, and its risks."""
    tcp = _model_options(options, connection)
    idle = (
        answers.predicted(tcp, Activity.IDLE, None)
        if connection.state in _OPEN_STATES and connection.info is not None
        else None
    )
    return _prediction(connection, tcp, answers), idle, _risks(connection, options, answers)


def _risks(
    connection: Connection, options: EffectiveOptions | None, answers: _Answers
) -> tuple[Risk, ...]:
    """Explain's traps for the socket's own options (those the model predicts from) that
    bite in the connection's state; ``options-unknown`` where they could not be read."""
    codes = _risks_in_state(connection)
    if not codes:
        return ()
    if options is None:
        return (OPTIONS_UNKNOWN,)
    return answers.risks_among(options, codes)


class _Answers:
    """The model's answers for the connections of one namespace (its sysctls) on one path,
    in front of the answers kept for the process's life (``_predicted``, ``_risks_among``):
    found by the options' identity, which costs nothing, where those hash every field of
    the sysctls and the options. Connections with equal options share one value
    (``OptionsCache``), or a constant (``_model_options``). Each entry holds its options,
    so an identity is never that of another value."""

    def __init__(self, kernel: KernelSettings, path: PathContext) -> None:
        self.kernel = kernel
        self.path = path
        self._predictions: dict[
            tuple[int, Activity, float | None], tuple[TcpOptions, Prediction]
        ] = {}
        self._risks: dict[tuple[int, frozenset[str]], tuple[TcpOptions, tuple[Risk, ...]]] = {}
        self._verdicts: dict[tuple[object, ...], tuple[TcpOptions, _Verdict]] = {}

    def verdict(self, connection: Connection, options: EffectiveOptions | None) -> _Verdict:
        """``_verdict``, shared by the connections for which every input of it is the
        same: its options, and what of the connection it looks at (state, timer, data in
        flight, probes, first RTO). An orphan's depends on its own timers: never shared."""
        info = connection.info
        if info is None or is_orphan(connection):
            return _verdict(connection, options, self)
        tcp = _model_options(options, connection)
        key = (
            id(tcp),
            options is None,
            connection.state,
            connection.timer == "persist",
            connection.inode == 0,
            info.unacked == 0,
            info.probes > 0,
            connection.send_queue > 0,
            first_rto_s(connection, self.kernel),
        )
        found = self._verdicts.get(key)
        if found is None or found[0] is not tcp:
            found = (tcp, _verdict(connection, options, self))
            self._verdicts[key] = found
        return found[1]

    def predicted(self, tcp: TcpOptions, activity: Activity, first_rto: float | None) -> Prediction:
        key = (id(tcp), activity, first_rto)
        found = self._predictions.get(key)
        if found is None or found[0] is not tcp:
            found = (tcp, _predicted(self.kernel, tcp, activity, first_rto))
            self._predictions[key] = found
        return found[1]

    def risks_among(self, tcp: TcpOptions, codes: frozenset[str]) -> tuple[Risk, ...]:
        key = (id(tcp), codes)
        found = self._risks.get(key)
        if found is None or found[0] is not tcp:
            found = (tcp, _risks_among(self.kernel, tcp, self.path, codes))
            self._risks[key] = found
        return found[1]


# The model's answers, kept for the process's life: the connections of a node share a few
# sysctls, options, states and RTOs, and each snapshot repeats the last one's answers,
# while a prediction for a busy connection costs about 2 ms (its grid of timer schedules)
# and explain's traps several predictions. Bounded: the least recently used go first.
_PREDICTIONS_KEPT = 4096
_TRAPS_KEPT = 1024


@functools.lru_cache(maxsize=_TRAPS_KEPT)
def _risks_among(
    kernel: KernelSettings, tcp: TcpOptions, path: PathContext, codes: frozenset[str]
) -> tuple[Risk, ...]:
    """Explain's traps among ``codes``, as risks: one tuple, shared by the connections
    with these options in a state those codes bite in."""
    return tuple(
        Risk(trap.code, trap.message)
        for trap in _socket_traps(kernel, tcp, path)
        if trap.code in codes
    )


@functools.lru_cache(maxsize=_TRAPS_KEPT)
def _socket_traps(kernel: KernelSettings, tcp: TcpOptions, path: PathContext) -> tuple[Trap, ...]:
    """Explain's traps for one set of options, kept: many connections share their options,
    and a snapshot repeats the last one's, while the model's predictions are costly."""
    return tuple(socket_traps(kernel, tcp, path))


@functools.lru_cache(maxsize=_PREDICTIONS_KEPT)
def _predicted(
    kernel: KernelSettings, tcp: TcpOptions, activity: Activity, first_rto: float | None
) -> Prediction:
    """``predict`` for a silent peer, kept: all its inputs are frozen values, and the one
    that varies by connection, its first RTO, is in milliseconds (a few values on a node)."""
    return predict(kernel, tcp, Failure.SILENT, activity, first_rto_s=first_rto)


def _risks_in_state(connection: Connection) -> frozenset[str]:
    """The trap codes that can put ``connection`` at risk now: none for a socket no program
    holds (an orphan, TIME-WAIT) or a state no option of its bounds (LISTEN, SYN-RECV,
    FIN-WAIT-2, a closing socket with nothing in flight)."""
    info = connection.info
    if connection.inode == 0 or info is None:
        return frozenset()
    if connection.state == "SYN_SENT":
        return _CONNECTING_RISKS
    if connection.state in _SENDING_STATES and (info.unacked > 0 or connection.send_queue > 0):
        return _BUSY_RISKS
    if connection.state in _OPEN_STATES:
        return _IDLE_RISKS
    return frozenset()


def is_orphan(connection: Connection) -> bool:
    """No program holds the socket (the kernel reports no inode) and its FIN is out."""
    return connection.inode == 0 and connection.state in _CLOSING_STATES


def _model_options(options: EffectiveOptions | None, connection: Connection) -> TcpOptions:
    """The options the model predicts from: the socket's own, or the kernel's defaults with
    keepalive as the kernel's timer shows it (the one option the diagnostics reveal)."""
    if options is not None:
        return options
    return _KEEPALIVE_SHOWN if connection.timer == "keepalive" else _NOTHING_SHOWN


_KEEPALIVE_SHOWN = TcpOptions(keepalive=True)
_NOTHING_SHOWN = TcpOptions()


def _prediction(connection: Connection, tcp: TcpOptions, answers: _Answers) -> Prediction | None:
    info = connection.info
    if info is None:
        return None
    if connection.state == "SYN_SENT":
        return answers.predicted(tcp, Activity.CONNECTING, None)
    if connection.state not in _SENDING_STATES or connection.timer == "persist":
        return None  # closing down, or a peer that acknowledges but reads nothing
    if _probing_idle(connection):
        return answers.predicted(tcp, Activity.IDLE, None)
    if is_orphan(connection):
        return _orphan_prediction(connection, tcp, answers)
    # Busy, or healthy: for a healthy connection, what a request lost now would take.
    return answers.predicted(tcp, Activity.ACTIVE, first_rto_s(connection, answers.kernel))


def _orphan_prediction(connection: Connection, tcp: TcpOptions, answers: _Answers) -> Prediction:
    """An orphan's end: ``tcp_orphan_retries``' budget, or, when its RTO had already reached
    the cap and the sysctl is 0, its next expiry (the kernel then allows it no retry)."""
    info = connection.info
    assert info is not None
    kernel = answers.kernel
    stuck = stuck_for_s(connection, kernel)
    capped = info.rto_ms / 1000 >= kernel.tcp_rto_max_s
    if capped and stuck is not None and orphan_retries(kernel, rto_capped=True) == 0:
        ends = stuck + connection.timer_expires_ms / 1000
        return Prediction(
            ends, ends * TIMER_SLACK[1], "request", Mechanism.ORPHAN_RETRIES, ("ETIMEDOUT",)
        )
    return answers.predicted(tcp, Activity.ORPHANED, first_rto_s(connection, kernel))


def _probing_idle(connection: Connection) -> bool:
    info = connection.info
    return info is not None and info.unacked == 0 and info.probes > 0
