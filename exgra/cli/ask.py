"""``exgra ask``: one answer about one image on the terminal, or a multi-turn chat with ``--chat``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from exgra.cli.options import Device, Dtype, Template


def ask(
    question: str | None = typer.Argument(None, help="The question to ask about the image."),
    model: Path = typer.Option(..., "--model", help="Directory of a saved exgra model."),
    image: Path = typer.Option(..., "--image", help="Image file (PNG, JPEG, ...)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest answer in tokens."),
    template: Template = None,
    dtype: Dtype = "auto",
    device: Device = "auto",
    raw: bool = typer.Option(False, "--raw", help="Print the text as generated (role prefix kept)."),
    chat: bool = typer.Option(
        False,
        "--chat",
        help="Multi-turn chat: then one question per line on stdin; an empty line or EOF ends.",
    ),
    system: str | None = typer.Option(
        None, "--system", help="System message for --chat (default: the template's)."
    ),
) -> None:
    """Ask a model about one image (greedy decoding). Research use only."""
    if not chat:
        if question is None:
            raise typer.BadParameter(
                "pass the question as the last argument (or use --chat)", param_hint="QUESTION"
            )
        from exgra.eval.generate import ask_model

        answer = ask_model(_config(model, image, question, max_new_tokens, template, dtype, device))
        typer.echo(answer.raw_text if raw else answer.text)
        return
    from exgra.eval.chat_session import ChatSession
    from exgra.eval.generate import ask_generator, open_image_file

    picture = open_image_file(image)
    generator = ask_generator(_config(model, image, "", max_new_tokens, template, dtype, device))
    session = ChatSession(generator, picture, system=system)
    interactive = sys.stdin.isatty()
    pending = [question] if question and question.strip() else []
    while True:
        if pending:
            line = pending.pop()
        else:
            if interactive:
                typer.echo("you> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line or not line.strip():
                return
        answer = session.ask(line.strip())
        typer.echo(answer.raw_text if raw else answer.text)


def _config(model, image, question, max_new_tokens, template, dtype, device):  # noqa: ANN001, ANN202
    from exgra.config import validate_config
    from exgra.eval.generate import AskConfig

    return validate_config(
        AskConfig,
        {
            "model_dir": model,
            "image_path": image,
            "question": question or "",
            "max_new_tokens": max_new_tokens,
            "template": template,
            "dtype": dtype,
            "device": device,
        },
    )


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
