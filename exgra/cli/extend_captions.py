"""``exgra extend-captions``: LLM-extended answers for stage-2 pre-training (REFERENCE §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    from exgra.data.captions import ExtendCaptionsConfig, extend_captions, print_report

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


def register(app: typer.Typer) -> None:
    app.command("extend-captions")(extend_captions_command)
