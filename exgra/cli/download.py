"""``exgra download``: released checkpoints, data JSONs and the CLIP vision tower from the hub."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.table import Table


def registry_table() -> Table:
    """The download registry as a table readable from 80 columns up (names never wrap: they are typed)."""
    from rich.table import Table
    from rich.text import Text

    from exgra.data import download as hub

    table = Table(title="exgra download --list", show_lines=True)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("kind", no_wrap=True)
    table.add_column("description", ratio=1, overflow="fold")
    for entry in hub.list_entries():
        repo = entry.repo_id + (" (dataset)" if entry.repo_type == "dataset" else "")
        description = Text(entry.description)
        description.append(f"\n{repo} · {entry.license}", style="dim")
        table.add_row(entry.name, entry.kind, description)
    return table


def register(app: typer.Typer) -> None:
    @app.command("download")
    def download_command(
        names: list[str] = typer.Argument(None, help="Registry names or repo ids (see --list)."),
        directory: Path = typer.Option(
            Path("checkpoints"),
            "--output",
            "-o",
            "--dir",
            help="Folder to download into (one sub-folder per name).",
        ),
        revision: str = typer.Option(
            None, help="Branch, tag or commit to fetch (pin a commit to reproduce)."
        ),
        list_entries: bool = typer.Option(False, "--list", help="Print the registry and exit."),
    ) -> None:
        """Download released ExGra-Med checkpoints and data (resumable; HF_ENDPOINT, HF_TOKEN honoured)."""
        from rich.console import Console

        from exgra.data import download as hub
        from exgra.errors import ExgraError
        from exgra.io import check_output_dir

        console = Console()
        if list_entries:
            console.print(registry_table())
            return
        if not names:
            raise ExgraError("name what to download (exgra download --list shows the choices)")
        entries = [hub.resolve_entry(name) for name in names]  # every name checked before any download
        # A partial download in the folder is resumed, so an existing folder is fine; a file is not.
        check_output_dir(directory, overwrite=True)
        for entry in entries:
            console.print(f"downloading {entry.repo_id} ({entry.license}) ...", markup=False)
            path = hub.download(entry.name, directory, revision=revision)
            console.print(f"{entry.name}: {path}", markup=False)
