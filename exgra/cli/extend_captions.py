"""``exgra extend-captions``: LLM-extended answers for stage-2 pre-training (REFERENCE §5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from exgra.data.captions import ExtendCaptionsReport

from exgra.choices import OnFailure
from exgra.cli.options import (
    EnvFile,
    Limit,
    LLMBaseUrl,
    LLMConcurrency,
    LLMMaxReasks,
    LLMMaxRetries,
    LLMTimeout,
    NoProgress,
    llm_settings,
)


def extend_captions_command(
    input_path: Annotated[Path, typer.Argument(help="LLaVA-Med-style JSON list of records.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Training JSON to write.")],
    model: Annotated[str, typer.Option("--model", help="Model id at the endpoint.")] = "openai/gpt-4o-mini",
    base_url: LLMBaseUrl = None,
    concurrency: LLMConcurrency = 8,
    max_retries: LLMMaxRetries = 6,
    max_reasks: LLMMaxReasks = 3,
    timeout: LLMTimeout = 120.0,
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt name in prompts/ or a .txt file.")] = (
        "extend_caption"
    ),
    on_failure: Annotated[
        OnFailure,
        typer.Option(
            "--on-failure", help="Records that still fail: skip leaves them out, keep-original keeps answers."
        ),
    ] = "skip",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the journal beside --output.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over, replacing output and journal.")
    ] = False,
    limit: Limit = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count requests and tokens; send nothing.")
    ] = False,
    env_file: EnvFile = None,
    no_progress: NoProgress = False,
) -> None:
    """Ask an LLM for a detailed version of every answer; write records with conversations_long."""
    from rich.console import Console

    from exgra.cli import set_interrupt_hint
    from exgra.config import validate_config
    from exgra.data.captions import ExtendCaptionsConfig, extend_captions

    config = validate_config(
        ExtendCaptionsConfig,
        {
            "input_path": input_path,
            "output_path": output,
            "settings": llm_settings(model, base_url, concurrency, max_retries, max_reasks, timeout),
            "prompt": prompt,
            "on_failure": on_failure,
            "resume": resume,
            "overwrite": overwrite,
            "limit": limit,
            "dry_run": dry_run,
            "env_file": env_file,
            "show_progress": not no_progress,
        },
        "command-line options",
    )
    set_interrupt_hint("finished records are in the journal: rerun with --resume to continue")
    report = extend_captions(config, console=Console(stderr=True))
    print_report(report, dry_run=dry_run, console=Console())


def print_report(report: ExtendCaptionsReport, console: Console, dry_run: bool = False) -> None:
    """A short table of what a run did (or, for a dry run, would do)."""
    from rich.table import Table

    stats = report.stats
    table = Table(title="extend-captions (dry run: nothing sent)" if dry_run else "extend-captions")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("records in input", str(report.records))
    if report.without_conversations:
        table.add_row("records without conversations (left out)", str(report.without_conversations))
    if report.resumed:
        table.add_row("records already done (journal)", str(report.resumed))
    if dry_run:
        table.add_row("requests to send", str(stats.requests))
        table.add_row("estimated prompt tokens", f"~{stats.prompt_tokens}")
        table.add_row("estimated completion tokens", f"~{stats.completion_tokens}")
    else:
        table.add_row("records extended", str(report.extended))
        table.add_row("records failed", str(report.failed))
        table.add_row("records written", str(report.written))
        table.add_row("requests sent", str(stats.requests))
        table.add_row("retries / re-asks", f"{stats.retries} / {stats.reasks}")
        table.add_row("tokens (prompt + completion)", f"{stats.prompt_tokens} + {stats.completion_tokens}")
        table.add_row("seconds", f"{report.seconds:.1f}")
    console.print(table)
    if report.failed_ids:
        shown = ", ".join(report.failed_ids[:10]) + (" ..." if len(report.failed_ids) > 10 else "")
        tried = report.records - report.without_conversations
        console.print(
            f"{report.failed} of {tried} records failed ({shown}); "
            "rerun the same command with --resume to retry only them",
            style="yellow",
            markup=False,
        )
    if report.output_path is not None:
        console.print(f"wrote {report.output_path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("extend-captions")(extend_captions_command)
