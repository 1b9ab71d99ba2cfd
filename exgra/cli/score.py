"""``exgra score``: score an answers JSONL against a VQA test JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

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
    gt: Path = typer.Option(..., "--gt", help="VQA test JSON (list of records with conversations)."),
    pred: Path = typer.Option(..., "--pred", help="Answers JSONL (question_id, text per line)."),
    candidates: Path | None = typer.Option(
        None, "--candidates", help='Candidate open answers {"0": [...]} for open accuracy.'
    ),
    scorer: str | None = typer.Option(None, "--scorer", help=_SCORER_HELP + " Default: legacy."),
    protocol: str | None = typer.Option(
        None,
        "--protocol",
        help="Score under a protocol: exgra-med, llava-med, medevalkit, tokenized-f1, strict "
        "(refuses answers generated with another prompt).",
    ),
    force_protocol: bool = typer.Option(
        False, "--force-protocol", help="Score under --protocol even if the answers were asked another way."
    ),
    judge_model: str | None = typer.Option(
        None, "--judge-model", help="LLM judge for open answers (medevalkit), any OpenAI-compatible model id."
    ),
    judge_base_url: str | None = typer.Option(None, "--judge-base-url", help="Endpoint of the judge."),
    judge_concurrency: int = typer.Option(8, "--judge-concurrency", min=1, help="Judge requests in flight."),
    judge_journal: Path | None = typer.Option(
        None, "--judge-journal", help="Verdicts JSONL (default: <pred stem>.judge.jsonl); resumed when rerun."
    ),
    judge_prompt: str = typer.Option("vqa_judge", "--judge-prompt", help="Judge prompt name or .txt file."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the metrics JSON here."),
    per_item: Path | None = typer.Option(None, "--per-item", help="Write per-question results (JSONL) here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Score only the ids present in both files instead of failing."
    ),
) -> None:
    """Score VQA answers: open recall/F1/BLEU/exact match, candidate open accuracy, closed accuracy."""
    from rich.console import Console

    from exgra.errors import ExgraError
    from exgra.eval.scoring import SCORERS, score_answers
    from exgra.io import check_output_file

    if scorer is not None and scorer not in SCORERS:
        raise ExgraError(f"Unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}.")
    if protocol is None and (judge_model is not None or force_protocol):
        raise ExgraError("--judge-model and --force-protocol need --protocol (e.g. --protocol medevalkit)")
    # Refuse before the work, not after it.
    for path in (output, per_item):
        if path is not None:
            check_output_file(path, overwrite)
    if output is not None and per_item is not None and output.resolve() == per_item.resolve():
        raise ExgraError(f"--output and --per-item must be different files (both are {output})")
    if protocol is None:
        report = score_answers(gt, pred, candidates, scorer=scorer or "legacy", allow_partial=allow_partial)
        _print_table(report.metrics)
    else:
        report = _score_protocol(
            gt, pred, candidates, scorer, protocol, allow_partial, force_protocol, judge_model,
            judge_base_url, judge_concurrency, judge_journal, judge_prompt, overwrite,
        )  # fmt: skip
    console = Console(stderr=True)
    if report.num_left_out:
        console.print(
            f"Scored {report.arguments['num_scored']} questions; left out {report.num_left_out} ids that are "
            "not in both files.",
            style="yellow",
            markup=False,
        )
    if output is not None:
        report.save(output, overwrite=overwrite)
        console.print(f"Metrics written to {output}", markup=False)
    if per_item is not None:
        report.save_items(per_item, overwrite=overwrite)
        console.print(f"Per-question results written to {per_item}", markup=False)


def _score_protocol(
    gt: Path,
    pred: Path,
    candidates: Path | None,
    scorer: str | None,
    protocol: str,
    allow_partial: bool,
    force: bool,
    judge_model: str | None,
    judge_base_url: str | None,
    judge_concurrency: int,
    judge_journal: Path | None,
    judge_prompt: str,
    overwrite: bool,
) -> Any:
    from exgra.cli.eval_commands.vqa import print_metrics_table
    from exgra.eval.protocol_scoring import score_protocol
    from exgra.eval.vqa import sidecar_path

    judge = None
    if judge_model is not None:
        from exgra.eval.judge import judge_settings

        journal = judge_journal or sidecar_path(pred, "judge.jsonl")
        judge = judge_settings(
            judge_model, judge_base_url, journal, judge_concurrency, judge_prompt, overwrite=overwrite
        )
    report = score_protocol(
        gt, pred, protocol, candidates, scorer=scorer, allow_partial=allow_partial, judge=judge, force=force
    )
    metrics = report.metrics
    print_metrics_table(metrics, f"VQA scores — protocol {protocol} v{metrics['protocol']['version']}")
    if "judge" in metrics:
        judged = metrics["judge"]
        typer.echo(
            f"judge {judged['model']}: {judged['judged']} verdicts ({judged['reused_from_journal']} reused "
            f"from {judge.journal if judge else ''}), {judged['failed']} failed (scored by exact match; "
            "rerun to retry them)"
        )
    return report


def register(app: typer.Typer) -> None:
    app.command("score")(score)
