"""``exgra convert``: legacy LLaVA-Med / ExGra-Med checkpoint -> HF-native safetensors checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exgra.choices import WeightsDtype
from exgra.cli.options import Overwrite


def convert_command(
    source: Path = typer.Argument(
        ..., help="Legacy checkpoint directory (config.json + weights + tokenizer)."
    ),
    destination: Path = typer.Argument(..., help="Directory to write the converted checkpoint to."),
    vision_tower: str | None = typer.Option(
        None,
        "--vision-tower",
        help="Local CLIP directory (or hub name) instead of the config's mm_vision_tower.",
    ),
    dtype: Annotated[
        WeightsDtype | None, typer.Option("--dtype", help="Weights dtype (default: the checkpoint's own).")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Convert a released LLaVA-Med / ExGra-Med checkpoint so exgra (and transformers) can load it."""
    from rich.console import Console

    from exgra.config import validate_config
    from exgra.models.legacy import ConvertConfig, run_convert

    config = validate_config(
        ConvertConfig,
        {
            "source": source,
            "destination": destination,
            "vision_tower": vision_tower,
            "overwrite": overwrite,
            "dtype": dtype,
        },
        "command-line options",
    )
    result = run_convert(config)
    console = Console()
    console.print(
        f"converted {result.num_tensors} tensors ({result.projector_type} projector, "
        f"dense connector {result.dense_connector}, vision tower {result.vision_tower}) -> {result.path}"
    )
    if result.ignored:
        shown = ", ".join(result.ignored[:5]) + (" ..." if len(result.ignored) > 5 else "")
        console.print(f"ignored {len(result.ignored)} tensors not used by the model: {shown}")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
