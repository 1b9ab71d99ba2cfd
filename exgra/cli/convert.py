"""``exgra convert``: legacy LLaVA-Med / ExGra-Med checkpoint -> HF-native safetensors checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer


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
    dtype: str | None = typer.Option(None, help="float32 | bfloat16 | float16; default: the checkpoint's."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DESTINATION if it exists."),
) -> None:
    """Convert a released LLaVA-Med / ExGra-Med checkpoint so exgra (and transformers) can load it."""
    from rich.console import Console

    from exgra.errors import ConfigError
    from exgra.models.legacy import convert_legacy_checkpoint

    if dtype not in (None, "float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be float32, bfloat16 or float16, got '{dtype}'")
    result = convert_legacy_checkpoint(source, destination, vision_tower, overwrite=overwrite, dtype=dtype)
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
