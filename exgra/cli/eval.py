"""``exgra eval ...``: a sub-app whose subcommands live in :mod:`exgra.cli.eval_commands`.

The subcommand modules are listed in :data:`EVAL_COMMAND_MODULES`; each defines ``register(eval_app)``.
"""

from __future__ import annotations

import importlib

import typer

eval_app = typer.Typer(
    help="Evaluate a model: batched VQA answers, zero-shot classification, chatbot judging.",
    no_args_is_help=True,
)

EVAL_COMMAND_MODULES: tuple[str, ...] = ("vqa", "zero_shot", "chatbot")


def register(app: typer.Typer) -> None:
    for name in EVAL_COMMAND_MODULES:
        importlib.import_module(f"exgra.cli.eval_commands.{name}").register(eval_app)
    app.add_typer(eval_app, name="eval")
