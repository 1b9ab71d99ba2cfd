"""``exgra finetune``: fine-tune LLM + projector on VQA data, keeping the best validation checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from exgra.cli.train import CONFIG, OUTPUT_DIR, OVERRIDES, OVERWRITE, RESUME, run_stage


def finetune(
    overrides: list[str] = OVERRIDES,
    config: Path = CONFIG,
    output_dir: Path = OUTPUT_DIR,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
) -> None:
    """Fine-tune on a VQA training split; with data.val_json and train.eval_every, keep the best model."""
    run_stage("finetune", config, overrides, output_dir, resume, overwrite)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
