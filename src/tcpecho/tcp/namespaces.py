"""Every network namespace of the host, found through the processes that hold them
(``host_namespaces``), and work done inside one of them (``run_inside``, ``socket_in``).

A namespace is known by the inode of ``/proc/PID/ns/net``; the walk stats that file for every
process and groups the processes by it. Reading another process's file needs the right to
ptrace-read it (the same user, or CAP_SYS_PTRACE), so a walk without that right sees fewer
namespaces; a process that exits or refuses is skipped and counted (``Skipped``), never an
error. A namespace with no process in it (only a bind mount, as ``ip netns add`` leaves
one) is not found.

Entering a namespace is ``setns(CLONE_NEWNET)``, which needs CAP_SYS_ADMIN and changes only
the calling thread. Python 3.11 has no ``os.setns`` and pyroute2's ``setns`` and
``pushns``/``popns`` keep the saved namespaces in one list for the whole process (its
``create_socket`` forks a child instead), so the call goes to libc through ctypes, in a
thread made for it: it enters, does its work (a socket made there stays in that namespace
for its whole life; ``/proc/sys/net`` opened there is that namespace's), goes back, and
ends. No other code ever runs in that thread, so the switch cannot leak into the caller,
even if going back failed.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

CLONE_NEWNET = 0x40000000  # os.CLONE_NEWNET from Python 3.12 on
_OWN = "/proc/thread-self/ns/net"  # the calling thread's, not the main thread's

Result = TypeVar("Result")


@dataclass
class Skipped:
    """What a walk or a listing left out, counted by why: ``vanished``, gone before it could
    be read (the process exited, its PID names another process now, a zombie); ``refused``,
    the kernel said EACCES or EPERM (a capability missing: see ``docs/watch.md``);
    ``failed``, any other error."""

    vanished: int = 0
    refused: int = 0
    failed: int = 0

    def count(self, reason: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)

    @property
    def total(self) -> int:
        return self.vanished + self.refused + self.failed

    def by_reason(self) -> dict[str, int]:
        return {"vanished": self.vanished, "refused": self.refused, "failed": self.failed}


def reason_of(error: OSError) -> str:
    """Why reading a process or namespace failed, as ``Skipped`` counts it."""
    if error.errno in (errno.ENOENT, errno.ESRCH):
        return "vanished"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "refused"
    return "failed"


@dataclass(frozen=True)
class NetNamespace:
    """One network namespace: the inode of its ``/proc/PID/ns/net``, the processes in it
    when the walk saw them (ascending PIDs), and whether it was the walking thread's own."""

    inode: int
    holders: tuple[int, ...]
    own: bool


@dataclass(frozen=True)
class HostNamespaces:
    """The walk's answer: the namespaces by ascending inode, and the processes it skipped."""

    namespaces: tuple[NetNamespace, ...]
    skipped: Skipped = field(default_factory=Skipped)

    def by_inode(self) -> dict[int, NetNamespace]:
        return {namespace.inode: namespace for namespace in self.namespaces}


class NamespaceUnavailableError(Exception):
    """A namespace that could not be entered: ``reason`` as ``Skipped`` counts it."""

    def __init__(self, namespace: NetNamespace, reason: str, detail: str) -> None:
        super().__init__(f"network namespace {namespace.inode}: {reason} ({detail})")
        self.namespace = namespace
        self.reason = reason


def own_inode() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat(_OWN).st_ino


def host_namespaces(*, pids: Iterable[int] | None = None) -> HostNamespaces:
    """Every network namespace some process is in, from ``/proc/PID/ns/net`` of each of
    ``pids`` (every process of ``/proc`` by default); a process that exits or refuses
    while being read is skipped and counted."""
    own = own_inode()
    holders: dict[int, list[int]] = {}
    skipped = Skipped()
    for pid in _pids() if pids is None else pids:
        try:
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError as error:
            skipped.count(reason_of(error))
            continue
        holders.setdefault(inode, []).append(pid)
    namespaces = tuple(
        NetNamespace(inode=inode, holders=tuple(sorted(pids_in)), own=inode == own)
        for inode, pids_in in sorted(holders.items())
    )
    return HostNamespaces(namespaces=namespaces, skipped=skipped)


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def open_namespace(namespace: NetNamespace) -> int:
    """A descriptor of ``namespace`` (the caller closes it), opened through the first of
    its holders still in it. A holder that exited is passed over, and so is one whose PID
    now names a process in another namespace; ``NamespaceUnavailableError`` when none is left
    (refused if any holder refused, vanished otherwise)."""
    refused: OSError | None = None
    for pid in namespace.holders:
        try:
            descriptor = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            if reason_of(error) == "refused":
                refused = error
            continue
        if os.fstat(descriptor).st_ino == namespace.inode:
            return descriptor
        os.close(descriptor)  # a reused PID: entering it would list the wrong namespace
    if refused is not None:
        raise NamespaceUnavailableError(namespace, "refused", os.strerror(refused.errno or 0))
    raise NamespaceUnavailableError(namespace, "vanished", "no process left in it")


def run_inside(namespace: NetNamespace, work: Callable[[], Result]) -> Result:
    """``work()``'s answer, run in a thread of its own inside ``namespace``. What ``work``
    raises is raised here; a namespace that cannot be entered (gone, or setns refused
    without CAP_SYS_ADMIN) raises ``NamespaceUnavailableError``."""
    descriptor = open_namespace(namespace)
    try:
        return _in_thread(lambda: _entered(namespace, descriptor, work))
    finally:
        os.close(descriptor)


def socket_in(namespace: NetNamespace, family: int, kind: int, protocol: int = 0) -> socket.socket:
    """A socket made inside ``namespace``: it stays there, whichever thread uses it."""
    return run_inside(namespace, lambda: socket.socket(family, kind, protocol))


def _entered(namespace: NetNamespace, descriptor: int, work: Callable[[], Result]) -> Result:
    home = os.open(_OWN, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(descriptor)
        except OSError as error:
            raise NamespaceUnavailableError(
                namespace, reason_of(error), f"setns: {os.strerror(error.errno or 0)}"
            ) from error
        try:
            return work()
        finally:
            # Back home, though the thread ends next anyway: were this to fail, no other
            # code would run in the namespace it is left in.
            _setns(home)
    finally:
        os.close(home)


def _in_thread(work: Callable[[], Result]) -> Result:
    outcome: list[Result] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # handed to the caller's thread, raised there
            raised.append(error)

    thread = threading.Thread(target=run, name="tcpecho-setns", daemon=True)
    thread.start()
    thread.join()
    if raised:
        raise raised[0]
    return outcome[0]


def _setns(descriptor: int) -> None:
    if _libc().setns(descriptor, CLONE_NEWNET) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
