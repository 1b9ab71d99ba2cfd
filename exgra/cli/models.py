"""``exgra models``: list the model registry."""

from __future__ import annotations

import typer


def models_command() -> None:
    """List the registered model architectures."""
    from rich.console import Console
    from rich.table import Table

    from exgra.models import list_models

    table = Table(title="exgra models", show_lines=False)
    table.add_column("name", no_wrap=True, style="bold")
    for column in ("parameters", "vision", "connector", "projector", "template", "weights", "description"):
        table.add_column(column)
    for spec in list_models():
        config = spec.config()
        vision = config.vision_tower or f"random CLIP {config.vision_config.get('image_size', '?')} px"
        weights = "random, offline" if spec.offline else "path=DIR or llm=..."
        table.add_row(
            spec.name,
            spec.parameters,
            vision,
            config.dense_connector,
            config.projector_type,
            config.template,
            weights,
            spec.description,
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
