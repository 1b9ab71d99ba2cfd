"""``exgra models``: list the model registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.table import Table


def models_table() -> Table:
    """The registry as a three-column table that stays readable from 80 columns up.

    Short fields (name, parameters) never wrap; the architecture is one dimmed line under the description
    instead of five narrow columns, so only the description column wraps, at word boundaries.
    """
    from rich.table import Table
    from rich.text import Text

    from exgra.model_specs import list_models  # torch-free: the table is static data

    table = Table(title="exgra models", show_lines=True, expand=False)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("parameters", no_wrap=True, justify="right")
    table.add_column("description", ratio=1, overflow="fold")
    for spec in list_models():
        config = spec.config()
        weights = "random, offline" if spec.offline else "path=DIR or llm=..."
        if config.family == "llava":
            tower = "SigLIP" if config.vision_type == "siglip" else "CLIP"
            vision = config.vision_tower or f"random {tower} {config.vision_config.get('image_size', '?')} px"
            details = (
                f"vision: {vision} · connector: {config.dense_connector} · projector: {config.projector_type}"
                f" · template: {config.template} · weights: {weights}"
            )
        else:
            details = f"family: {config.family} · template: its own chat template · weights: {weights}"
        description = Text(spec.description)
        description.append("\n" + details, style="dim")
        table.add_row(spec.name, spec.parameters, description)
    return table


def models_command() -> None:
    """List the registered model architectures (build one with create_model(name) in Python)."""
    from rich.console import Console

    Console().print(models_table())


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
