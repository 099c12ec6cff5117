"""The command line's parameter types: they parse text into values and check nothing else.

Bounds and combinations are the settings' own business (``settings``, ``TcpOptions``, the
configs); these types only turn ``30s``, ``64KiB``, ``[::1]:8000`` or ``true`` into values,
with a message that says what a valid one looks like. ``Option`` makes an error name the
environment variable when the bad value came from one, since that is what the user set.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from tcpecho.durations import parse_duration
from tcpecho.sizes import parse_size
from tcpecho.tcp.names import parse_endpoint

F = TypeVar("F", bound=Callable[..., Any])


class Option(click.Option):
    """A click option whose environment variable is named after its flag, and whose errors
    name that variable when it gave the bad value.

    click names the variable after the Python parameter: ``--json`` stored as ``json_path``
    would read ``TCPECHO_LAB_JSON_PATH``. Users read the flag, so ``--json`` is
    ``TCPECHO_LAB_JSON`` and ``--fault`` is ``TCPECHO_LAB_FAULT``."""

    def environment_variable(self, ctx: click.Context) -> str | None:
        if isinstance(self.envvar, str):
            return self.envvar
        if ctx.auto_envvar_prefix is None:
            return None
        flag = next((opt for opt in self.opts if opt.startswith("--")), None)
        name = flag.removeprefix("--") if flag else (self.name or "")
        return f"{ctx.auto_envvar_prefix}_{name.replace('-', '_').upper()}"

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        variable = self.environment_variable(ctx)
        if variable is None or not self.allow_from_autoenv:
            return None
        return os.environ.get(variable) or None

    def get_error_hint(self, ctx: click.Context | None) -> str:
        hint = super().get_error_hint(ctx)
        if ctx is None or self.name is None:
            return hint
        if ctx.get_parameter_source(self.name) is not ParameterSource.ENVIRONMENT:
            return hint
        return f"{self.environment_variable(ctx)} (the environment variable for {hint})"


def option(*declarations: str, **attributes: Any) -> Callable[[F], F]:
    """``click.option`` with this module's ``Option``: every tcpecho option is one."""
    return click.option(*declarations, cls=Option, **attributes)


class Duration(click.ParamType[float]):
    """A Go duration (``500ms``, ``30s``, ``1m30s``) as float seconds."""

    name = "duration"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):  # a default already converted, or a call from code
            return value
        try:
            return parse_duration(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


class ByteSize(click.ParamType[int]):
    """A byte size (``1024``, ``1KiB``, ``64KiB``, ``1MiB``) as an int."""

    name = "size"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


class Endpoint(click.ParamType[tuple[str, int | None]]):
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port or None)."""

    name = "endpoint"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "HOST[:PORT]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_endpoint(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


class Boolean(click.types.BoolParamType):
    """true or false, and the usual spellings of them, for flags set from the environment.

    click's own type lists its spellings, an empty one first, when it refuses a value."""

    name = "boolean"
    _TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
    _FALSE = frozenset({"0", "false", "f", "no", "n", "off"})

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in self._TRUE:
            return True
        if text in self._FALSE:
            return False
        self.fail(f"{value!r} is not true or false (1/0, yes/no and on/off work too)", param, ctx)


BOOLEAN = Boolean()


class LazyChoice(click.Choice[str]):
    """A choice whose names come from a module that is imported only when they are needed:
    ``tcpecho --help`` does not pay for the lab to list its faults and profiles."""

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self._names = names
        self.case_sensitive = True

    @functools.cached_property
    def choices(self) -> Sequence[str]:  # type: ignore[override]
        return tuple(self._names())
