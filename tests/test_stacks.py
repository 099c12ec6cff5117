"""The client libraries' own words (``tcpecho.stacks``): the same as the cookbook's measured
recipes, read back into the options they render, and taken by ``explain --stack``."""

from __future__ import annotations

import json
import subprocess

import pytest

from cookbook.recipes import RECIPES, Recipe
from tcpecho.settings import Deadlines
from tcpecho.stacks import STACKS, StackSyntaxError, read
from tcpecho.tcp.options import TcpOptions
from tests.support import tcpecho_executable

MEASURED = [recipe for recipe in RECIPES if recipe.stack in STACKS]


@pytest.mark.parametrize("recipe", MEASURED, ids=lambda r: f"{r.stack}-{r.settings}")
def test_each_stack_says_what_the_cookbook_measured(recipe: Recipe) -> None:
    """The recommended settings render as the recipe the lab ran; the defaults are the
    options its client's socket carried, with the library's own deadlines."""
    stack = STACKS[recipe.stack]
    if recipe.settings == "recommended":
        assert stack.render(recipe.socket, recipe.deadlines) == recipe.options
    if recipe.settings == "defaults":
        assert (stack.defaults, stack.default_deadlines) == (recipe.socket, recipe.deadlines)


def test_every_measured_stack_has_both_recipes() -> None:
    covered = {(recipe.stack, recipe.settings) for recipe in MEASURED}
    for name in STACKS:
        if name != "tcpecho":
            assert {(name, "defaults"), (name, "recommended")} <= covered, name


TUNED = TcpOptions(
    user_timeout_ms=27_000,
    keepalive=True,
    keepalive_idle_s=16,
    keepalive_interval_s=2,
    keepalive_count=5,
)


@pytest.mark.parametrize("name", [name for name in STACKS if name != "tcpecho"])
def test_a_rendering_reads_back_as_the_same_options(name: str) -> None:
    stack = STACKS[name]
    tcp, deadlines = read(stack, stack.render(TUNED, Deadlines()))
    assert tcp == TUNED
    assert deadlines == (Deadlines() if name == "redis-py" else stack.default_deadlines)


def test_settings_over_a_librarys_defaults() -> None:
    tcp, _ = read(STACKS["libpq"], "keepalives_idle=10 tcp_user_timeout=5000")
    # libpq keeps keepalive on, and the kernel's interval and count, unless told otherwise.
    assert (tcp.keepalive, tcp.keepalive_idle_s, tcp.keepalive_count) == (True, 10, 9)
    assert tcp.user_timeout_ms == 5000
    assert read(STACKS["libpq"], None) == (STACKS["libpq"].defaults, Deadlines())
    with pytest.raises(StackSyntaxError, match="keepalive_idle is not a libpq TCP parameter"):
        read(STACKS["libpq"], "keepalive_idle=10")


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tcpecho_executable(), "explain", *args], capture_output=True, text=True, timeout=60
    )


def test_explain_takes_a_librarys_settings_in_its_own_syntax() -> None:
    shown = _explain(
        "--stack", "libpq", "--stack-options", "keepalives_idle=10 tcp_user_timeout=5000", "--json"
    )
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["stack"]["name"] == "libpq"
    assert "--user-timeout" in document["settings"]["flags"]
    busy = next(s for s in document["scenarios"] if s["name"] == "busy")
    assert busy["mechanism"] == "user_timeout"
    defaults = _explain("--stack", "libpq")
    assert defaults.returncode == 0
    assert defaults.stdout.startswith("stack: libpq")
    assert "keepalives=1 keepalives_idle=7200" in defaults.stdout


def test_recommend_answers_in_the_librarys_words() -> None:
    shown = _explain(
        "--recommend",
        "--detect-within",
        "30s",
        "--path",
        "aws-nlb",
        "--stack",
        "redis-py",
        "--json",
    )
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    settings = document["stack"]["settings"]
    tcp, _ = read(STACKS["redis-py"], settings)
    flags = document["settings"]["flags"]
    assert tcp.as_flags() == tuple(flags)


@pytest.mark.parametrize(
    "args",
    [
        ("--stack", "libpq", "--stack-options", "keepalive_idle=10"),
        ("--stack-options", "keepalives_idle=10"),
        ("--stack", "libpq", "--user-timeout", "5s"),
        ("--stack", "nowhere"),
        (
            "--recommend",
            "--detect-within",
            "30s",
            "--stack",
            "libpq",
            "--stack-options",
            "keepalives=1",
        ),
    ],
)
def test_bad_stack_input_is_a_usage_error(args: tuple[str, ...]) -> None:
    result = _explain(*args)
    assert result.returncode == 2, args
    assert "Traceback" not in result.stderr
