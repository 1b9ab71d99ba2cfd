"""``exgra eval chatbot``: LLM-as-judge scoring of medical visual chat answers (REFERENCE §7.4)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from exgra.eval.chatbot import ChatbotEvalReport

from exgra.cli.options import (
    EnvFile,
    LLMBaseUrl,
    LLMConcurrency,
    LLMMaxReasks,
    LLMMaxRetries,
    LLMTimeout,
    NoProgress,
    Overwrite,
    llm_settings,
)


def chatbot_command(
    questions: Annotated[
        Path, typer.Option("--questions", help="Question JSONL (LLaVA-Med llava_med_eval_qa50_qa.jsonl).")
    ],
    answers: Annotated[
        Path, typer.Option("--answers", help="Model answers JSONL with question_id and text.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Reviews JSONL to write.")],
    summary: Annotated[
        Path | None, typer.Option("--summary", help="Summary JSON (default: <output stem>.summary.json).")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="Judge model id at the endpoint.")] = "openai/gpt-4o",
    base_url: LLMBaseUrl = None,
    concurrency: LLMConcurrency = 4,
    max_retries: LLMMaxRetries = 6,
    max_reasks: LLMMaxReasks = 3,
    timeout: LLMTimeout = 120.0,
    prompt: Annotated[
        str, typer.Option("--prompt", help="Judge instruction: prompt name or .txt file.")
    ] = "chatbot_judge",
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep existing reviews, judge the rest (same judge and prompt).")
    ] = False,
    overwrite: Overwrite = False,
    env_file: EnvFile = None,
    no_progress: NoProgress = False,
) -> None:
    """Judge model answers against GPT-4 answers; print relative scores per category."""
    from rich.console import Console

    from exgra.cli import set_interrupt_hint
    from exgra.config import validate_config
    from exgra.eval.chatbot import ChatbotEvalConfig, evaluate_chatbot

    config = validate_config(
        ChatbotEvalConfig,
        {
            "questions_path": questions,
            "answers_path": answers,
            "output_path": output,
            "summary_path": summary,
            # the reference judges at temperature 0
            "settings": llm_settings(
                model, base_url, concurrency, max_retries, max_reasks, timeout, temperature=0.0
            ),
            "prompt": prompt,
            "resume": resume,
            "overwrite": overwrite,
            "env_file": env_file,
            "show_progress": not no_progress,
        },
        "command-line options",
    )
    set_interrupt_hint("finished reviews are kept: rerun with --resume to continue")
    print_summary(evaluate_chatbot(config, console=Console(stderr=True)), console=Console())


def print_summary(report: ChatbotEvalReport, console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"chatbot judge: {report.summary['judge_model']}")
    for column in ("category", "n", "gpt4_score", "pred_score", "relative_score"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for name, row in report.summary["scores"].items():
        table.add_row(
            name, str(row["n"]), f"{row['gpt4_score']:.2f}", f"{row['pred_score']:.2f}",
            f"{row['relative_score']:.1f}",
        )  # fmt: skip
    console.print(table)
    if report.failed_ids:
        console.print(
            f"{len(report.failed_ids)} questions could not be judged ({', '.join(report.failed_ids[:10])}); "
            "rerun with --resume to retry them",
            markup=False,
        )
    console.print(f"wrote {report.reviews_path} and {report.summary_path}", markup=False)


def register(eval_app: typer.Typer) -> None:
    eval_app.command("chatbot")(chatbot_command)
