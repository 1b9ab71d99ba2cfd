"""``exgra eval zero-shot``: multiple-choice classification on OmniMedVQA-format question files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


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
    model: Path = typer.Option(..., "--model", help="Directory of a saved exgra model."),
    data: list[Path] = typer.Option(..., "--data", help="OmniMedVQA QA JSON file or folder (repeatable)."),
    images: Path = typer.Option(..., "--images", help="OmniMedVQA root; image_path is relative to it."),
    output: Path = typer.Option(..., "--output", "-o", help="Predictions JSONL (results JSON beside it)."),
    method: str = typer.Option("likelihood", "--method", help="likelihood (deterministic) or legacy."),
    legacy: bool = typer.Option(False, "--legacy", help="Reference protocol: sampling + difflib."),
    normalization: str = typer.Option(
        "mean", "--length-normalization", help="Option score: mean (per token) or sum of log-probs."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Questions per forward pass."),
    template: str | None = typer.Option(None, "--template", help="legacy or chat (default: the model's)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp32 CPU, bf16 GPU) or a dtype."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    seed: int = typer.Option(2802, "--seed", help="Seed of the legacy sampling."),
    temperature: float = typer.Option(0.7, "--temperature", help="Legacy sampling temperature."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Legacy answer length."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N questions."),
    resume: bool = typer.Option(False, "--resume", help="Keep the output; classify missing ids."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Zero-shot multiple-choice accuracy per dataset; options scored by log-likelihood by default."""
    from exgra.config import validate_config
    from exgra.eval.zero_shot import ZeroShotConfig, run_zero_shot

    config = validate_config(
        ZeroShotConfig,
        {
            "model": model,
            "data": data,
            "images": images,
            "output": output,
            "method": "legacy" if legacy else method,
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
    result = run_zero_shot(config)
    how = "legacy sampling + difflib" if config.method == "legacy" else f"log-likelihood ({normalization})"
    print_accuracy_table(result.rows, f"zero-shot accuracy — {how}")
    typer.echo(f"predictions: {result.predictions_path}")
    typer.echo(f"results: {result.results_path}")


def register(eval_app: typer.Typer) -> None:
    eval_app.command("zero-shot")(zero_shot)
