"""``exgra score``: score an answers JSONL against a VQA test JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from exgra.choices import ScorerName
from exgra.cli.options import JudgeBaseUrl, JudgeModel, hidden_alias, pick

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
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol",
            help="Score under a protocol: exgra-med, llava-med, medevalkit, tokenized-f1, strict "
            "(refuses answers generated with another prompt).",
        ),
    ] = None,
    force_protocol: Annotated[
        bool, typer.Option("--force-protocol", help="Score under --protocol even if asked another way.")
    ] = False,
    judge_model: JudgeModel = None,
    judge_base_url: JudgeBaseUrl = None,
    judge_concurrency: Annotated[
        int, typer.Option("--judge-concurrency", min=1, help="Judge requests in flight.")
    ] = 8,
    judge_journal: Annotated[
        Path | None,
        typer.Option("--judge-journal", help="Verdicts JSONL (default: <answers stem>.judge.jsonl)."),
    ] = None,
    judge_prompt: Annotated[
        str, typer.Option("--judge-prompt", help="Judge prompt name or .txt file.")
    ] = "vqa_judge",
) -> None:
    """Score VQA answers: open recall/F1/BLEU/exact match, candidate open accuracy, closed accuracy."""
    from rich.console import Console

    from exgra.config import validate_config
    from exgra.errors import ExgraError
    from exgra.eval.scoring import ScoreConfig, run_score

    if protocol is None and (judge_model is not None or force_protocol):
        raise ExgraError("--judge-model and --force-protocol need --protocol (e.g. --protocol medevalkit)")
    if protocol is not None:
        report = _score_protocol(
            pick(data, gt, "--data", "--gt"), pick(answers, pred, "--answers", "--pred"), candidates,
            None if scorer == "legacy" else scorer, protocol, allow_partial, force_protocol, judge_model,
            judge_base_url, judge_concurrency, judge_journal, judge_prompt, overwrite, output, per_item,
        )  # fmt: skip
    else:
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
    output: Path | None,
    per_item: Path | None,
) -> Any:
    from exgra.cli.eval_commands.vqa import print_metrics_table
    from exgra.eval.protocol_scoring import score_protocol
    from exgra.eval.vqa import sidecar_path
    from exgra.io import check_output_file

    for path in (output, per_item):  # refuse before the work, not after it
        if path is not None:
            check_output_file(path, overwrite)

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
    if output is not None:
        report.save(output, overwrite=overwrite)
    if per_item is not None:
        report.save_items(per_item, overwrite=overwrite)
    return report


def register(app: typer.Typer) -> None:
    app.command("score")(score)
