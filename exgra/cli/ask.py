"""``exgra ask``: one answer about one image on the terminal."""

from __future__ import annotations

from pathlib import Path

import typer

from exgra.cli.options import Device, Dtype, Template


def ask(
    question: str = typer.Argument(..., help="The question to ask about the image."),
    model: Path = typer.Option(..., "--model", help="Directory of a saved exgra model."),
    image: Path = typer.Option(..., "--image", help="Image file (PNG, JPEG, ...)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest answer in tokens."),
    template: Template = None,
    dtype: Dtype = "auto",
    device: Device = "auto",
    raw: bool = typer.Option(False, "--raw", help="Print the text as generated (role prefix kept)."),
) -> None:
    """Ask a model one question about one image (greedy decoding). Research use only."""
    from exgra.eval.generate import ask_model

    answer = ask_model(
        model, image, question, max_new_tokens=max_new_tokens, template=template, dtype=dtype, device=device
    )
    typer.echo(answer.raw_text if raw else answer.text)


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
