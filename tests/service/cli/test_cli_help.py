"""`service CMD --help` shows each option's default and ends with an example of the command."""

from __future__ import annotations

import pytest

from service.cli import main, parser
from service.cli.options import EXAMPLES


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_command_has_an_example(command: str, capsys) -> None:
    out = help_of(command, capsys)
    assert "example:" in out
    assert EXAMPLES[command].splitlines()[0] in out
    assert f"service {command}" in out.split("example:")[1]


def test_help_shows_defaults(capsys) -> None:
    out = help_of("build-index", capsys)
    assert "--epochs EPOCHS       default: 4" in out and "--seed SEED           default: 0" in out
    assert "(default: auto)" in out and "(default: None)" not in out
    subcommands = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(EXAMPLES) == set(subcommands)  # no command without an example
