"""The process's open-file limit: raised to the hard limit so 10,000 connections fit.

Each TCP connection is a file descriptor, and the usual soft limit (1024) would stop a
server or a load generator far below what the machine can hold. Raising the soft limit up
to the hard one needs no privilege.
"""

from __future__ import annotations

import resource


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit is no valid soft limit for open files: Linux caps it at nr_open.
    target = _nr_open(default=soft) if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def _nr_open(default: int) -> int:
    try:
        with open("/proc/sys/fs/nr_open") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return default
