"""Command-line options declared once, as typer ``Annotated`` types, and shared by every command.

A new command takes its common options from here (``model: ModelDir``, ``overwrite: Overwrite``, the
LLM endpoint group ...) so one option has one name, one help text and one set of choices everywhere.
Choices are the ``Literal`` types of the library configs (:mod:`exgra.config`), so the CLI and a
Python caller are validated by the same definition. A renamed option keeps its old spelling as a
hidden alias (:func:`hidden_alias` + :func:`pick`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from exgra.choices import DtypeName, TemplateName

OVERWRITE_HELP = "Replace an earlier exgra output of this command (never files exgra did not write)."

ModelDir = Annotated[Path, typer.Option("--model", help="Directory of a saved exgra model.")]
Images = Annotated[Path, typer.Option("--images", help="Folder the records' image paths are relative to.")]
Dtype = Annotated[
    DtypeName,
    typer.Option(
        "--dtype", help="auto (fp32 CPU; GPU: fp16 under legacy like the reference, else bf16) or a dtype."
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Template = Annotated[
    TemplateName | None, typer.Option("--template", help="Conversation template (default: the model's own).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N items.")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bar.")]


def resume_option(what: str) -> Any:
    """``--resume`` with a command-specific sentence about what is kept."""
    return typer.Option("--resume", help=f"Continue an interrupted run: {what}.")


# The LLM endpoint group shared by `exgra extend-captions` and `exgra eval chatbot`.
LLMBaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url", help="OpenAI-compatible endpoint (default: OPENROUTER_ENDPOINT / OPENAI_BASE_URL)."
    ),
]
LLMConcurrency = Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight at once.")]
LLMMaxRetries = Annotated[
    int, typer.Option("--max-retries", min=0, help="Retries per request for 429, 5xx and network errors.")
]
LLMMaxReasks = Annotated[
    int, typer.Option("--max-reasks", min=0, help="Re-asks per request when the reply is not usable.")
]


# The LLM judge of open answers, shared by `exgra eval vqa*` and `exgra score`.
JudgeModel = Annotated[
    str | None, typer.Option("--judge-model", help="LLM judge for open answers (medevalkit).")
]
JudgeBaseUrl = Annotated[str | None, typer.Option("--judge-base-url", help="Endpoint of the judge.")]


def _positive(value: float) -> float:
    if value <= 0:
        raise typer.BadParameter(f"must be more than 0 seconds, got {value:g}")
    return value


LLMTimeout = Annotated[
    float, typer.Option("--timeout", callback=_positive, help="Seconds per request (more than 0).")
]
EnvFile = Annotated[
    Path | None, typer.Option("--env-file", help="A .env file with the API key (default: ./.env).")
]


def llm_settings(
    model: str,
    base_url: str | None,
    concurrency: int,
    max_retries: int,
    max_reasks: int,
    timeout: float,
    **extra: object,
) -> dict[str, object]:
    """The LLM endpoint option group as the ``settings`` mapping of a validated config."""
    return {
        "model": model,
        "base_url": base_url,
        "concurrency": concurrency,
        "max_retries": max_retries,
        "max_reasks": max_reasks,
        "timeout": timeout,
        **extra,
    }


def hidden_alias(spelling: str) -> Any:
    """An old spelling of a renamed option: accepted, not shown in ``--help``."""
    return typer.Option(spelling, hidden=True)


def pick(value: Any, alias_value: Any, name: str, alias: str, required: bool = True) -> Any:
    """The value given as ``name`` or as its old spelling ``alias``; both, or (if required) neither, is a
    usage error (exit code 2)."""
    if value is not None and alias_value is not None:
        raise typer.BadParameter(f"give {name} once ({alias} is its old spelling)")
    chosen = value if value is not None else alias_value
    if chosen is None and required:
        raise typer.BadParameter("missing: this option is required", param_hint=f"'{name}'")
    return chosen


def recipe_help() -> str:
    """``--config`` help naming the shipped recipes (read from exgra/configs/ without importing anything)."""
    folder = Path(__file__).resolve().parent.parent / "configs"
    names = sorted(path.stem for path in folder.glob("*.yaml"))
    return "YAML recipe: a file path or a shipped recipe name (" + ", ".join(names) + ")."
