"""``exgra prepare``: turn a downloaded Med-VQA release (or the offline demo images) into VQA JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from exgra.cli.options import Overwrite


def register(app: typer.Typer) -> None:
    @app.command("prepare")
    def prepare(
        dataset: str = typer.Argument(..., help="vqa-rad, slake, pathvqa or demo.", show_default=False),
        output: Path = typer.Option(
            ..., "--output", "-o", help="Folder to write (must not exist or be empty)."
        ),
        source: Path | None = typer.Option(
            None, "--source", "-s", help="Folder of the downloaded hub release (not needed for demo)."
        ),
        seed: int = typer.Option(0, help="Seed of the VQA-RAD validation split and of the demo dataset."),
        val_size: int | None = typer.Option(
            None, "--val-size", help="VQA-RAD only: training questions moved to validation (default 451)."
        ),
        num_samples: int = typer.Option(400, "--num-samples", help="demo only: number of VQA questions."),
        image_size: int = typer.Option(64, "--image-size", help="demo only: image side in pixels."),
        overwrite: Overwrite = False,
    ) -> None:
        """Convert VQA-RAD, SLAKE or PathVQA (hub layout) into train/val/test JSON, or build the demo set."""
        from exgra.config import validate_config
        from exgra.data.prepare import DATASETS, PrepareConfig, run_prepare
        from exgra.errors import ExgraError

        name = {"path-vqa": "pathvqa"}.get(dataset.lower(), dataset.lower())
        if name not in DATASETS:
            raise ExgraError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
        config = validate_config(
            PrepareConfig,
            {
                "dataset": name,
                "output": output,
                "source": source,
                "seed": seed,
                "val_size": val_size,
                "overwrite": overwrite,
                "num_samples": num_samples,
                "image_size": image_size,
            },
            "command-line options",
        )
        result = run_prepare(config)
        counts = ", ".join(f"{split} {count}" for split, count in result.counts.items())
        typer.echo(f"wrote {result.root} ({counts} questions); checksums in {result.checksums.name}")
