"""``exgra report RUN...``: metrics files side by side, in the terminal, as Markdown, CSV and a plot."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    runs: list[Path] = typer.Argument(..., help="Metrics JSON files, or folders holding *.metrics.json."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Write the table as Markdown here."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write the table as CSV here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a bar plot here (.png, .pdf or .svg)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Compare metrics files (models x protocols x datasets): each protocol's open, closed and overall."""
    from rich.console import Console

    from exgra.eval.compare import load_rows, rich_table, write_report

    rows = load_rows(runs)
    Console().print(rich_table(rows))
    for path in write_report(rows, markdown=markdown, csv_path=csv_path, plot=plot, overwrite=overwrite):
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
