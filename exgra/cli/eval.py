"""``exgra eval ...``: a sub-app whose subcommands live in :mod:`exgra.cli.eval_commands`.

Each module there that defines ``register(eval_app)`` adds its subcommand(s).
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from exgra.cli import eval_commands

eval_app = typer.Typer(
    help="Evaluate a model: batched VQA answers, zero-shot classification, chatbot judging.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    modules = sorted(pkgutil.iter_modules(eval_commands.__path__), key=lambda m: m.name)
    registered = 0
    for module_info in modules:
        module = importlib.import_module(f"{eval_commands.__name__}.{module_info.name}")
        if hasattr(module, "register"):
            module.register(eval_app)
            registered += 1
    if registered:
        app.add_typer(eval_app, name="eval")
