"""``--help`` of every command and sub-command works and names the command's options."""

from __future__ import annotations

from typing import Any

import pytest
import typer


def _commands() -> list[tuple[str, ...]]:
    from exgra.cli import app

    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append(path)
        if hasattr(command, "commands"):  # a group (typer may bring its own click)
            for name, sub in command.commands.items():
                if not sub.hidden:
                    walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = _commands()


def test_the_command_tree_is_found():
    names = {path[0] for path in COMMANDS if path}
    assert {"train", "finetune", "eval", "score", "demo"} <= names
    assert ("train", "stage1") in COMMANDS and ("train", "stage2") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "exgra")
def test_help_of_every_command(path, run_exgra):
    result = run_exgra(*path, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage:" in result.stdout and "--help" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
