"""The README is a front page and docs/ the reference: both kept whole against the code.

Every event and its fields, every failure name, every option with its environment variable
is documented; every relative link leads somewhere; the README opens with its two commands.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest

from tcpecho import events
from tcpecho.cli import ENVVAR_PREFIX, main
from tcpecho.tcp.options import OPTIONS as TCP_OPTIONS
from tcpecho.tcp.options import SocketOption

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMAND_PAGES = {
    "client": "client.md",
    "server": "server.md",
    "explain": "explain.md",
    "watch": "watch.md",
    "lab": "lab.md",
    "bench": "performance.md",
}
TCP_SETTINGS = {option.setting for option in TCP_OPTIONS}


def _param_names(command: str) -> set[str]:
    return {param.name for param in main.commands[command].params if param.name}


FAILURE_NAMES = (
    *events.CLIENT_FAILURES,
    *("EOF", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET", "ENETUNREACH", "EAI_NONAME"),
)


def test_the_readme_is_a_front_page_that_opens_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220
    commands = [line for line in lines[:8] if line.startswith("scripts/nox")]
    assert [line.split("#")[0].strip() for line in commands] == [
        "scripts/nox -s demo",
        "scripts/nox",
    ]
    quick_start = "\n".join(lines[:80])
    assert "tcpecho server" in quick_start
    assert "tcpecho client --server 127.0.0.1" in quick_start


@pytest.mark.parametrize("name", sorted(events.EVENTS))
def test_every_event_is_documented_with_its_fields(name: str) -> None:
    page = (DOCS / "events.md").read_text()
    section = _section_about(page, name)
    for field in dataclasses.fields(events.EVENTS[name]):  # type: ignore[arg-type]
        assert f"`{field.name}`" in section, f"{name}: field {field.name} is not documented"


def _section_about(page: str, name: str) -> str:
    """The text from the heading naming ``name`` to the next heading of any level."""
    match = re.search(rf"^#+ .*`{name}`.*$", page, flags=re.MULTILINE)
    assert match, f"no heading names `{name}` in docs/events.md"
    rest = page[match.end() :]
    following = re.search(r"^#+ ", rest, flags=re.MULTILINE)
    return rest[: following.start()] if following else rest


@pytest.mark.parametrize("name", FAILURE_NAMES)
def test_every_failure_name_is_documented(name: str) -> None:
    assert f"`{name}`" in (DOCS / "events.md").read_text()


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (command, option)
        for command in COMMAND_PAGES
        for option in main.commands[command].params
        if isinstance(option, click.Option) and option.name not in TCP_SETTINGS
    ],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_every_option_is_documented_with_its_variable(command: str, option: click.Option) -> None:
    page = (DOCS / COMMAND_PAGES[command]).read_text()
    flag = next(opt for opt in option.opts if opt.startswith("--"))
    assert flag in page, f"{flag} of tcpecho {command} is not in docs/{COMMAND_PAGES[command]}"
    variable = f"{ENVVAR_PREFIX}_{command.upper()}_{flag[2:].replace('-', '_').upper()}"
    assert variable in page, f"{variable} is not in docs/{COMMAND_PAGES[command]}"


@pytest.mark.parametrize("option", TCP_OPTIONS, ids=lambda option: option.field)
def test_every_tcp_option_has_one_line_in_the_docs(option: SocketOption) -> None:
    """Its row in docs/tcp-options.md, with its flag, variable, socket option and the key the
    logs write it under; and no command's page declares it again (a row with its flag and a
    variable): each links there."""
    rows = _table_rows((DOCS / "tcp-options.md").read_text())
    mine = [row for row in rows if f"`{option.constant.name}`" in row]
    assert len(mine) == 1, f"{option.constant.name} has {len(mine)} rows in docs/tcp-options.md"
    assert f"`{option.field}`" in mine[0], f"the row does not say it is logged as {option.field}"
    if option.command_line:
        variable = f"{ENVVAR_PREFIX}_<COMMAND>_{option.setting.upper()}"
        assert mine[0].startswith(f"| `{option.flag}"), mine[0]
        assert f"`{variable}`" in mine[0], mine[0]
    for page in COMMAND_PAGES.values():
        rows = _table_rows((DOCS / page).read_text())
        declared = [row for row in rows if row.startswith(f"| `{option.flag} ")]
        assert not [row for row in declared if f"`{ENVVAR_PREFIX}_" in row], page


@pytest.mark.parametrize(
    "command",
    [command for command in COMMAND_PAGES if "user_timeout" in _param_names(command)],
)
def test_each_command_with_tcp_options_links_their_page(command: str) -> None:
    page = (DOCS / COMMAND_PAGES[command]).read_text()
    assert "(tcp-options.md)" in page
    assert f"`{ENVVAR_PREFIX}_{command.upper()}_<OPTION>`" in page


def _table_rows(page: str) -> list[str]:
    return [line for line in page.splitlines() if line.startswith("| ")]


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda path: path.name
)
def test_every_relative_link_leads_to_a_file(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
