"""``exgra train stage1|stage2``: pre-training stages with the shared options of every training command."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from exgra.cli.options import recipe_help

train_app = typer.Typer(
    help="Pre-train a model: stage 1 (projector) and stage 2 (instruction tuning + multi-graph alignment).",
    no_args_is_help=True,
)

CONFIG = typer.Option(None, "--config", "-c", help=recipe_help())
OVERRIDES = typer.Argument(
    None, help="key=value overrides, e.g. train.lr=1e-4 data.fraction=0.1", show_default=False
)
OUTPUT_DIR = typer.Option(None, "--output-dir", "-o", help="Where checkpoints, logs and the final model go.")
RESUME = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the output dir.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an earlier run in the output dir.")


def run_stage(
    stage: str,
    config: Path | None,
    overrides: list[str] | None,
    output_dir: Path | None,
    resume: bool,
    overwrite: bool,
) -> None:
    """Build the config, train, and report where the results are (exit 130 after Ctrl-C)."""
    from exgra.training import load_train_config, run_training

    train_config = load_train_config(stage, config, overrides or [], output_dir=output_dir)
    import torch

    from exgra.training.loop import describe_error

    try:
        result = run_training(train_config, resume=resume, overwrite=overwrite)
    except torch.OutOfMemoryError as exc:
        raise describe_error(exc) from exc
    if result.interrupted:
        raise typer.Exit(130)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    typer.echo(f"final model: {result.final_dir}")
    if result.best_dir is not None:
        typer.echo(
            f"best model (validation {train_config.train.metric_for_best}={result.best_metric:.2f}): "
            f"{result.best_dir}"
        )


@train_app.command("stage1")
def stage1(
    overrides: list[str] = OVERRIDES,
    config: Path = CONFIG,
    output_dir: Path = OUTPUT_DIR,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
) -> None:
    """Stage 1: train the projector on image-caption pairs (LLM and vision tower frozen)."""
    run_stage("stage1", config, overrides, output_dir, resume, overwrite)


@train_app.command("stage2")
def stage2(
    overrides: list[str] = OVERRIDES,
    config: Path = CONFIG,
    output_dir: Path = OUTPUT_DIR,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
) -> None:
    """Stage 2: train LLM + projector (+ GNN) with lm_loss + alpha * multi-graph alignment loss."""
    run_stage("stage2", config, overrides, output_dir, resume, overwrite)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
