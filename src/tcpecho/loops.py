"""Event loop choice: uvloop when it is installed (the fast path), asyncio otherwise.

asyncio and uvloop are imported only when a loop is made, so ``tcpecho --help`` stays fast.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    import asyncio

LoopName = Literal["auto", "uvloop", "asyncio"]
LOOP_NAMES: tuple[LoopName, ...] = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


def resolve(name: LoopName) -> Literal["uvloop", "asyncio"]:
    """The loop ``name`` stands for here; ``LookupError`` if uvloop is asked for but missing."""
    if name == "asyncio":
        return "asyncio"
    if importlib.util.find_spec("uvloop") is not None:
        return "uvloop"
    if name == "uvloop":
        raise LookupError("uvloop is not installed here (pip install uvloop); use --loop asyncio")
    return "asyncio"


def loop_factory(name: LoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    if resolve(name) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    import asyncio

    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], name: LoopName) -> T:
    """Run ``main`` to completion on a fresh loop of the chosen kind."""
    import asyncio

    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
