"""The ``exgra`` command line: one typer app, one module per command.

Each module in this package that defines ``register(app)`` adds its command(s); a module that
is not here adds nothing, so only commands that work are ever listed. Command modules import
heavy libraries (torch, transformers) inside the command function so ``exgra --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

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


def _register_commands() -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def report_error(message: str) -> None:
    """Print one red error line on stderr (the message is not parsed as rich markup)."""
    # soft_wrap: one error stays one line, also in piped logs.
    error_console.print(f"error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point: user errors become one red line and exit code 1."""
    debug = "--debug" in sys.argv[1:]
    try:
        app()
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
        report_error("interrupted")
        sys.exit(130)
