"""``exgra download``: released checkpoints, data JSONs and the CLIP vision tower from the hub."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from exgra.cli.options import hidden_alias, pick

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


def _run_interruptibly(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a helper thread so Ctrl-C ends the command at once (issue #12.12).

    huggingface_hub downloads in a thread pool whose shutdown waits for every file in flight (minutes
    for a multi-GB shard). Files resume on the next run, so nothing is lost by not waiting: the
    "interrupted" line is printed and the process exits with 130 straight away.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="exgra-download", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        from exgra.cli import report_error

        report_error("interrupted; rerun the same command to resume the download (finished files are kept)")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # not sys.exit: that would wait for the pool's threads to finish their files
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def download_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="Registry names or repo ids (see --list).")
    ] = None,
    directory: Annotated[
        Path,
        typer.Option("--output", "-o", help="Folder to download into (one sub-folder per name)."),
    ] = Path("checkpoints"),
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Branch, tag or commit to fetch (pin a commit to reproduce)."),
    ] = None,
    list_entries: Annotated[bool, typer.Option("--list", help="Print the registry and exit.")] = False,
    old_dir: Annotated[Path | None, hidden_alias("--dir")] = None,
) -> None:
    """Download released ExGra-Med checkpoints and data (resumable; HF_ENDPOINT, HF_TOKEN honoured)."""
    from rich.console import Console

    from exgra.config import validate_config
    from exgra.data.download import DownloadConfig, run_download
    from exgra.errors import ExgraError

    console = Console()
    if list_entries:
        console.print(registry_table())
        return
    if not names:
        raise ExgraError("name what to download (exgra download --list shows the choices)")
    if old_dir is not None:
        directory = pick(
            None if directory == Path("checkpoints") else directory, old_dir, "--output", "--dir"
        )
    config = validate_config(
        DownloadConfig, {"names": names, "directory": directory, "revision": revision}, "command-line options"
    )

    def started(entry: Any) -> None:
        console.print(f"downloading {entry.repo_id} ({entry.license}) ...", markup=False)

    paths = _run_interruptibly(lambda: run_download(config, on_start=started))
    for name, path in zip(config.names, paths, strict=True):
        console.print(f"{name}: {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("download")(download_command)
