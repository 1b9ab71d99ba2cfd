"""``exgra eval zero-shot``: multiple-choice classification on OmniMedVQA-format question files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from exgra.choices import ZeroShotMethod
from exgra.cli.options import Device, Dtype, Limit, ModelDir, Overwrite, Template


def print_accuracy_table(rows: list[dict[str, Any]], title: str) -> None:
    """Per-dataset accuracy rows as a rich table (accuracy counts missing images as wrong)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("dataset", "questions", "missing images", "correct", "accuracy %", "answered %"):
        table.add_column(column, justify="left" if column == "dataset" else "right")
    for row in rows:
        table.add_row(
            row["dataset"],
            str(row["questions"]),
            str(row["missing_images"]),
            str(row["correct"]),
            "-" if row["accuracy"] is None else f"{row['accuracy']:.2f}",
            "-" if row["accuracy_answered"] is None else f"{row['accuracy_answered']:.2f}",
        )
    Console().print(table)


def zero_shot(
    model: ModelDir,
    data: Annotated[
        list[Path], typer.Option("--data", help="OmniMedVQA QA JSON file or folder (repeatable).")
    ],
    images: Annotated[Path, typer.Option("--images", help="OmniMedVQA root; image_path is relative to it.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Predictions JSONL (results JSON beside it).")
    ],
    method: Annotated[
        ZeroShotMethod | None,
        typer.Option("--method", help="likelihood (deterministic; the default) or legacy."),
    ] = None,
    legacy: Annotated[
        bool, typer.Option("--legacy", help="Same as --method legacy: sampling + difflib (the reference).")
    ] = False,
    normalization: Annotated[
        Literal["mean", "sum"],
        typer.Option("--length-normalization", help="Option score: mean (per token) or sum of log-probs."),
    ] = "mean",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Questions per forward pass.")] = 8,
    template: Template = None,
    dtype: Dtype = "auto",
    device: Device = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the legacy sampling.")] = 2802,
    temperature: Annotated[float, typer.Option("--temperature", help="Legacy sampling temperature.")] = 0.7,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Legacy answer length.")
    ] = 256,
    limit: Limit = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep the output; classify missing ids (same settings).")
    ] = False,
    overwrite: Overwrite = False,
) -> None:
    """Zero-shot multiple-choice accuracy per dataset; options scored by log-likelihood by default."""
    from exgra.cli import set_interrupt_hint
    from exgra.config import validate_config
    from exgra.eval.zero_shot import ZeroShotConfig, run_zero_shot

    if legacy and method not in (None, "legacy"):  # issue #12.8: conflicting flags are refused
        raise typer.BadParameter(f"--legacy means --method legacy; it conflicts with --method {method}")
    config = validate_config(
        ZeroShotConfig,
        {
            "model": model,
            "data": data,
            "images": images,
            "output": output,
            "method": "legacy" if legacy else (method or "likelihood"),
            "length_normalization": normalization,
            "batch_size": batch_size,
            "template": template,
            "dtype": dtype,
            "device": device,
            "seed": seed,
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
            "limit": limit,
            "resume": resume,
            "overwrite": overwrite,
        },
        "command-line options",
    )
    set_interrupt_hint("finished predictions are kept: rerun with --resume to continue")
    result = run_zero_shot(config)
    how = "legacy sampling + difflib" if config.method == "legacy" else f"log-likelihood ({normalization})"
    print_accuracy_table(result.rows, f"zero-shot accuracy — {how}")
    typer.echo(f"predictions: {result.predictions_path}")
    typer.echo(f"results: {result.results_path}")


def register(eval_app: typer.Typer) -> None:
    eval_app.command("zero-shot")(zero_shot)
