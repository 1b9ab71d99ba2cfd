"""``exgra extend-captions``: LLM-extended answers for stage-2 pre-training (REFERENCE §5)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("extend-captions")
    def extend_captions_command(
        input_path: Path = typer.Argument(..., help="LLaVA-Med-style JSON list of records."),
        output: Path = typer.Option(..., "--output", "-o", help="Training JSON to write."),
        model: str = typer.Option("openai/gpt-4o-mini", help="Model id at the endpoint."),
        base_url: str = typer.Option(
            None, help="OpenAI-compatible endpoint (default: OPENROUTER_ENDPOINT / OPENAI_BASE_URL)."
        ),
        concurrency: int = typer.Option(8, help="Requests in flight at once."),
        max_retries: int = typer.Option(6, help="Retries per request for 429, 5xx and network errors."),
        max_reasks: int = typer.Option(3, help="Re-asks per request when the reply is not usable JSON."),
        timeout: float = typer.Option(120.0, help="Seconds per request before it counts as failed."),
        prompt: str = typer.Option("extend_caption", help="Prompt name in prompts/ or a .txt file."),
        on_failure: str = typer.Option(
            "skip", help="Records that still fail: 'skip' leaves them out, 'keep-original' keeps answers."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue from the journal beside --output."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Start over, replacing output and journal."
        ),
        limit: int = typer.Option(None, help="Only the first N records."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Count requests and tokens; send nothing."),
        env_file: Path = typer.Option(None, help="A .env file with the API key (default: ./.env)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    ) -> None:
        """Ask an LLM for a detailed version of every answer; write records with conversations_long."""
        from rich.console import Console

        from exgra.data.captions import ExtendCaptionsOptions, extend_captions, print_report
        from exgra.errors import ExgraError
        from exgra.llm import LLMSettings

        if on_failure not in ("skip", "keep-original"):
            raise ExgraError(f"--on-failure must be 'skip' or 'keep-original', got '{on_failure}'")
        settings = LLMSettings(
            model=model,
            base_url=base_url,
            concurrency=concurrency,
            max_retries=max_retries,
            max_reasks=max_reasks,
            timeout=timeout,
        )
        options = ExtendCaptionsOptions(
            input_path=input_path,
            output_path=output,
            settings=settings,
            prompt=prompt,
            on_failure=on_failure,  # type: ignore[arg-type]
            resume=resume,
            overwrite=overwrite,
            limit=limit,
            dry_run=dry_run,
            env_file=env_file,
            show_progress=not no_progress,
        )
        report = extend_captions(options, console=Console(stderr=True))
        print_report(report, dry_run=dry_run, console=Console())
