"""``exgra download``: released checkpoints, data JSONs and the CLIP vision tower from the hub."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("download")
    def download_command(
        names: list[str] = typer.Argument(None, help="Registry names or repo ids (see --list)."),
        directory: Path = typer.Option(Path("checkpoints"), "--dir", help="Folder to download into."),
        revision: str = typer.Option(
            None, help="Branch, tag or commit to fetch (pin a commit to reproduce)."
        ),
        list_entries: bool = typer.Option(False, "--list", help="Print the registry and exit."),
    ) -> None:
        """Download released ExGra-Med checkpoints and data (resumable; HF_ENDPOINT, HF_TOKEN honoured)."""
        from rich.console import Console
        from rich.table import Table

        from exgra.data import download as hub
        from exgra.errors import ExgraError

        console = Console()
        if list_entries:
            table = Table(title="exgra download --list")
            for column in ("name", "repository", "kind", "license", "description"):
                table.add_column(column)
            for entry in hub.list_entries():
                repo = entry.repo_id + (" (dataset)" if entry.repo_type == "dataset" else "")
                table.add_row(entry.name, repo, entry.kind, entry.license, entry.description)
            console.print(table)
            return
        if not names:
            raise ExgraError("name what to download (exgra download --list shows the choices)")
        entries = [hub.resolve_entry(name) for name in names]  # every name checked before any download
        for entry in entries:
            console.print(f"downloading {entry.repo_id} ({entry.license}) ...", markup=False)
            path = hub.download(entry.name, directory, revision=revision)
            console.print(f"{entry.name}: {path}", markup=False)
