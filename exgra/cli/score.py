"""``exgra score``: score an answers JSONL against a VQA test JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from exgra.choices import ScorerName
from exgra.cli.options import hidden_alias, pick

_SCORER_HELP = (
    "legacy: the ExGra-Med reference numbers; strict: normalised exact match and whole-word closed "
    "answers; llava-med: LLaVA-Med's yes/no-gated closed accuracy; llava-med-pre35: the same before "
    "its PR #35 (wrong yes/no answers not counted)."
)

_ROWS: tuple[tuple[str, str], ...] = (
    ("exact_match", "exact match"),
    ("f1", "F1"),
    ("precision", "precision"),
    ("recall", 'recall (papers\' "open")'),
    ("bleu", "BLEU-4"),
    ("bleu_1", "BLEU-1"),
    ("bleu_2", "BLEU-2"),
    ("bleu_3", "BLEU-3"),
    ("open_accuracy", "open accuracy (candidates)"),
    ("closed_accuracy", "closed accuracy"),
)


def _print_table(metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    scorer = metrics["scorer"]
    table = Table(title=f"VQA scores — {scorer['name']} scorer v{scorer['version']}")
    table.add_column("metric")
    table.add_column("%", justify="right")
    for key, label in _ROWS:
        value = metrics[key]
        table.add_row(label, "n/a" if value is None else f"{value:.2f}")
    table.add_row("open questions", str(metrics["num_open"]))
    table.add_row("closed questions", str(metrics["num_closed"]))
    Console().print(table)


def score(
    data: Annotated[
        Path | None, typer.Option("--data", help="VQA test JSON (list of records with conversations).")
    ] = None,
    answers: Annotated[
        Path | None, typer.Option("--answers", help="Answers JSONL (question_id, text per line).")
    ] = None,
    candidates: Annotated[
        Path | None,
        typer.Option("--candidates", help='Candidate open answers {"0": [...]} for open accuracy.'),
    ] = None,
    scorer: Annotated[ScorerName, typer.Option("--scorer", help=_SCORER_HELP)] = "legacy",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the metrics JSON here.")
    ] = None,
    per_item: Annotated[
        Path | None, typer.Option("--per-item", help="Write per-question results (JSONL) here.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    allow_partial: Annotated[
        bool,
        typer.Option("--allow-partial", help="Score only the ids present in both files instead of failing."),
    ] = False,
    gt: Annotated[Path | None, hidden_alias("--gt")] = None,
    pred: Annotated[Path | None, hidden_alias("--pred")] = None,
) -> None:
    """Score VQA answers: open recall/F1/BLEU/exact match, candidate open accuracy, closed accuracy."""
    from rich.console import Console

    from exgra.config import validate_config
    from exgra.eval.scoring import ScoreConfig, run_score

    config = validate_config(
        ScoreConfig,
        {
            "data": pick(data, gt, "--data", "--gt"),
            "answers": pick(answers, pred, "--answers", "--pred"),
            "candidates": candidates,
            "scorer": scorer,
            "allow_partial": allow_partial,
            "output": output,
            "per_item": per_item,
            "overwrite": overwrite,
        },
        "command-line options",
    )
    report = run_score(config)
    _print_table(report.metrics)
    console = Console(stderr=True)
    if report.num_left_out:
        console.print(
            f"Scored {report.arguments['num_scored']} questions; left out {report.num_left_out} ids that are "
            "not in both files.",
            style="yellow",
            markup=False,
        )
    for path, what in ((output, "Metrics"), (per_item, "Per-question results")):
        if path is not None:
            console.print(f"{what} written to {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
