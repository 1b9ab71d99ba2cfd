"""The ``exgra`` command line: one typer app, one module per command.

The commands are listed explicitly in :data:`COMMAND_MODULES` (in the order ``exgra --help`` shows
them); each module defines ``register(app)``. Add a command by adding a module and naming it there.
Command modules import heavy libraries (torch, transformers) inside the command function so
``exgra --help`` stays fast; shared options live in :mod:`exgra.cli.options`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from rich.console import Console

from exgra import __version__
from exgra.errors import ExgraError

app = typer.Typer(
    name="exgra",
    help="Train and evaluate medical vision-language models with ExGra-Med multi-graph alignment.\n\n"
    "Research use only: no clinical use. Released checkpoints and data are CC BY-NC 4.0.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

error_console = Console(stderr=True)
_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"exgra {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _state["debug"] = debug


# Every command, explicitly (no package scan): exgra.cli.<name> defines register(app).
COMMAND_MODULES: tuple[str, ...] = (
    "train",
    "finetune",
    "eval",
    "score",
    "report",
    "ask",
    "serve",
    "prepare",
    "extend_captions",
    "download",
    "convert",
    "models",
    "demo",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)

# Said after an interrupted run, per command, by commands that can be resumed (set in the command).
_interrupt_hint: dict[str, str] = {}


def set_interrupt_hint(hint: str) -> None:
    """What the "interrupted" line tells the user to do next (e.g. "rerun with --resume to continue")."""
    _interrupt_hint["hint"] = hint


def _hide_flag_types(command: Any) -> None:
    """Show on/off flags as ``--quick``, not ``--quick <bool>`` (typer prints a type for every option)."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    original = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = original(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_types(sub)


def build_command() -> Any:
    """The click command behind ``exgra`` (what :func:`main` runs; ``--help`` tests use it too)."""
    command = typer.main.get_command(app)
    _hide_flag_types(command)
    return command


def _was_interrupted(exc: BaseException) -> bool:
    # typer turns Ctrl-C into Exit(130) raised from the KeyboardInterrupt, then into SystemExit.
    inner: Any = exc.__context__
    return isinstance(inner, typer.Exit) and isinstance(inner.__cause__, KeyboardInterrupt)


def report_error(message: str) -> None:
    """Print one red error line on stderr (the message is not parsed as rich markup)."""
    # soft_wrap: one error stays one line, also in piped logs.
    error_console.print(f"error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point: user errors become one red line and exit code 1."""
    debug = "--debug" in sys.argv[1:]
    _interrupt_hint.clear()
    try:
        try:
            build_command()()
        except SystemExit as exc:
            if exc.code == 130 and _was_interrupted(exc):
                raise KeyboardInterrupt from None
            raise
    except ExgraError as exc:
        if debug:
            raise
        report_error(str(exc))
        sys.exit(1)
    except OSError as exc:
        # A full disk, a permission error or a vanished folder is the user's to fix, not a crash.
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        report_error(f"{exc.strerror or exc}{where}")
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = _interrupt_hint.get("hint")
        report_error(f"interrupted; {hint}" if hint else "interrupted")
        sys.exit(130)
