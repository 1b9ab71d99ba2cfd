"""Score VQA answers against ground truth: file loading, id matching, scorers, the metrics JSON.

Scorers (see docs/scoring.md):

- ``legacy``: the ExGra-Med reference scorer (REFERENCE §7.2), numbers identical to it.
- ``llava-med``: as ``legacy`` but closed accuracy is LLaVA-Med's yes/no-gated one (after its PR #35).
- ``llava-med-pre35``: LLaVA-Med before PR #35: wrong gated closed answers are left out of the mean.
- ``strict``: normalised exact match for open questions; closed answers read as whole words.

Every metric is a percentage (unrounded); a mean over no items is ``None``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import Field

from exgra import __version__
from exgra.choices import ScorerName, choices
from exgra.config import Section
from exgra.errors import DataError, ExgraError
from exgra.eval.metrics import (
    LegacyCandidateMatcher,
    StrictCandidateMatcher,
    bleu_scores,
    choose_closed_option,
    closed_options,
    legacy_closed_hit,
    legacy_exact_match,
    legacy_f1,
    legacy_normalize,
    llava_med_closed_gate,
    strict_exact_match,
    strict_normalize,
    token_f1,
)
from exgra.io import read_json, read_jsonl_lines, write_json_atomic, write_text_atomic
from exgra.vocabulary import conversation_value

SCORERS: tuple[str, ...] = choices(ScorerName)
# Bump a scorer's version whenever its numbers could change.
SCORER_VERSIONS: dict[str, str] = {"legacy": "1", "strict": "1", "llava-med": "1", "llava-med-pre35": "1"}
OPEN_METRICS: tuple[str, ...] = (
    "exact_match",
    "f1",
    "precision",
    "recall",
    "bleu",
    "bleu_1",
    "bleu_2",
    "bleu_3",
)
METRIC_KEYS: tuple[str, ...] = (*OPEN_METRICS, "open_accuracy", "closed_accuracy", "num_open", "num_closed")
ANSWER_TYPES: tuple[str, ...] = ("OPEN", "CLOSED")
_SHOWN_IDS = 5


@dataclass
class ScoreItem:
    """One question to score: raw prediction text, raw gold answer, OPEN or CLOSED, the question."""

    prediction: str
    ground_truth: str
    answer_type: str
    question: str = ""
    id: str | int | None = None


@dataclass
class ItemResult:
    """Per-question outcome: the normalised texts and the item's scores (fractions, not percent)."""

    id: str | int | None
    answer_type: str
    prediction: str
    ground_truth: str
    scores: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreReport:
    """What :func:`score_answers` returns: the metrics dict, per-item results, the resolved arguments."""

    metrics: dict[str, Any]
    items: list[ItemResult]
    arguments: dict[str, Any]
    left_out_ids: list[str] = field(default_factory=list)

    @property
    def num_left_out(self) -> int:
        return len(self.left_out_ids)

    def to_dict(self) -> dict[str, Any]:
        """The metrics JSON: the metric keys, ``scorer`` and the resolved ``arguments``."""
        return {**self.metrics, "arguments": self.arguments}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the metrics JSON atomically; refuse to replace an existing file unless ``overwrite``."""
        return write_json_atomic(path, self.to_dict(), overwrite=overwrite)

    def save_items(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write one JSON line per scored question (normalised texts and scores)."""
        lines = [json.dumps(item.__dict__, ensure_ascii=False) for item in self.items]
        return write_text_atomic(path, "\n".join(lines) + "\n", overwrite=overwrite)


# ----------------------------------------------------------------------------------------------
# Scoring in memory
# ----------------------------------------------------------------------------------------------


def _mean_percent(values: list[float]) -> float | None:
    # Same expression as the reference (sum in item order, divide, times 100) for identical floats.
    return sum(values) / len(values) * 100 if values else None


def _as_item(item: ScoreItem | Sequence[Any]) -> ScoreItem:
    if isinstance(item, ScoreItem):
        result = item
    else:
        result = ScoreItem(*item)
    answer_type = str(result.answer_type).upper()
    if answer_type not in ANSWER_TYPES:
        raise DataError(
            f"Question {result.id!r} has answer_type {result.answer_type!r}; expected OPEN or CLOSED."
        )
    result.answer_type = answer_type
    return result


def _check_scorer(scorer: str) -> None:
    if scorer not in SCORERS:
        raise ExgraError(f"Unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}.")


def _score(
    items: Iterable[ScoreItem | Sequence[Any]], scorer: str, candidates: Sequence[str | int] | None
) -> tuple[dict[str, Any], list[ItemResult]]:
    _check_scorer(scorer)
    strict = scorer == "strict"
    matcher: LegacyCandidateMatcher | StrictCandidateMatcher | None = None
    if candidates is not None:
        if len(candidates) == 0:
            raise DataError("The candidate answer list is empty; give at least one candidate.")
        matcher = StrictCandidateMatcher(candidates) if strict else LegacyCandidateMatcher(candidates)

    columns: dict[str, list[float]] = {key: [] for key in (*OPEN_METRICS, "open_accuracy", "closed_accuracy")}
    results: list[ItemResult] = []
    num_open = num_closed = 0
    normalize = strict_normalize if strict else lambda text: legacy_normalize(text.lower())
    for raw in items:
        item = _as_item(raw)
        gt = normalize(item.ground_truth)
        pred = normalize(item.prediction)
        scores: dict[str, Any] = {}
        if item.answer_type == "OPEN":
            num_open += 1
            if strict:
                scores["exact_match"] = strict_exact_match(pred, gt)
                scores["f1"], scores["precision"], scores["recall"] = token_f1(pred, gt)
                gt_again, pred_again = gt, pred
            else:
                # The reference's metric functions normalise their (already normalised) inputs again.
                gt_again, pred_again = legacy_normalize(gt), legacy_normalize(pred)
                scores["exact_match"] = legacy_exact_match(pred_again, gt_again)
                scores["f1"], scores["precision"], scores["recall"] = legacy_f1(pred_again, gt_again)
            # BLEU sees the once-normalised texts.
            scores.update(bleu_scores(gt.lower().split(), pred.lower().split()))
            if matcher is not None:
                chosen = matcher.best(pred_again)
                scores["chosen_candidate"] = chosen
                scores["open_accuracy"] = 1.0 if chosen == gt_again else 0.0
            for key in OPEN_METRICS:
                columns[key].append(scores[key])
            if "open_accuracy" in scores:
                columns["open_accuracy"].append(scores["open_accuracy"])
        else:
            num_closed += 1
            if strict:
                chosen = choose_closed_option(pred, closed_options(item.question, gt))
                scores["chosen_option"] = chosen
                hit: int | None = int(chosen == gt)
            elif scorer == "legacy":
                hit = int(legacy_closed_hit(pred, gt))
            elif scorer == "llava-med":
                hit = int(llava_med_closed_gate(pred) and legacy_closed_hit(pred, gt))
            else:  # llava-med-pre35: a gated but wrong answer was not counted at all
                gated = llava_med_closed_gate(pred)
                hit = (1 if legacy_closed_hit(pred, gt) else None) if gated else 0
            scores["closed_accuracy"] = hit
            if hit is not None:
                columns["closed_accuracy"].append(hit)
        results.append(ItemResult(item.id, item.answer_type, pred, gt, scores))

    metrics: dict[str, Any] = {key: _mean_percent(columns[key]) for key in OPEN_METRICS}
    metrics["open_accuracy"] = _mean_percent(columns["open_accuracy"]) if matcher is not None else None
    metrics["closed_accuracy"] = _mean_percent(columns["closed_accuracy"])
    metrics["num_open"] = num_open
    metrics["num_closed"] = num_closed
    metrics["scorer"] = {"name": scorer, "version": SCORER_VERSIONS[scorer]}
    return metrics, results


def score_items(
    items: Iterable[ScoreItem | Sequence[Any]],
    scorer: str = "legacy",
    candidates: Sequence[str | int] | None = None,
) -> dict[str, Any]:
    """Score in-memory answers; return the metrics dict (percentages, ``None`` for an empty mean).

    ``items`` holds :class:`ScoreItem` objects or tuples ``(prediction, ground_truth, answer_type)``
    (optionally followed by the question, needed by ``strict`` to read closed options, and an id).
    ``candidates`` is the open-answer list for ``open_accuracy`` (``None``: not computed).
    """
    return _score(items, scorer, candidates)[0]


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


@dataclass
class GroundTruthRecord:
    id: str | int
    question: str
    answer: str
    answer_type: str


@dataclass
class PredictionRecord:
    id: str | int
    text: str
    line: int


def load_ground_truth(path: str | Path) -> list[GroundTruthRecord]:
    """Read a VQA test JSON (a list of ``{id, answer_type, conversations: [human, gpt]}``).

    The ``conversatons`` typo key of some released files is accepted, as the reference does.
    """
    path = Path(path)
    data = read_json(path, "ground-truth file")
    if not isinstance(data, list):
        raise DataError(f"Ground-truth file {path} must hold a JSON list of question records.")
    if not data:
        raise DataError(f"Ground-truth file {path} holds no question records.")
    records = []
    for index, record in enumerate(data):
        if not isinstance(record, dict) or "id" not in record:
            raise DataError(f"Record {index} of {path} is not an object with an 'id'.")
        record_id = record["id"]
        turns = conversation_value(record)
        if (
            not isinstance(turns, list)
            or len(turns) < 2
            or not all(isinstance(turn, dict) and isinstance(turn.get("value"), str) for turn in turns[:2])
        ):
            raise DataError(
                f"Record {record_id!r} of {path} has no answer: it needs 'conversations' with a question "
                "turn and an answer turn, each with a text 'value'."
            )
        answer_type = str(record.get("answer_type", "")).upper()
        if answer_type not in ANSWER_TYPES:
            raise DataError(
                f"Record {record_id!r} of {path} has answer_type {record.get('answer_type')!r}; "
                "expected OPEN or CLOSED."
            )
        records.append(GroundTruthRecord(record_id, turns[0]["value"], turns[1]["value"], answer_type))
    return records


def load_predictions(path: str | Path) -> list[PredictionRecord]:
    """Read an answers JSONL (one ``{question_id, text, ...}`` object per line; blank lines skipped)."""
    path = Path(path)
    records = []
    for line_number, record in read_jsonl_lines(path, "prediction file", required_key="question_id"):
        if not isinstance(record.get("text"), str):
            raise DataError(
                f"Line {line_number} of {path} (question {record['question_id']!r}) has no text answer."
            )
        records.append(PredictionRecord(record["question_id"], record["text"], line_number))
    return records


def load_candidates(path: str | Path) -> list[str | int]:
    """Read a candidate-answer file: ``{"0": [answers...]}`` as the reference writes it, or a plain list."""
    path = Path(path)
    data = read_json(path, "candidate file")
    candidates = data.get("0") if isinstance(data, dict) else data
    if not isinstance(candidates, list) or not all(
        isinstance(c, (str, int)) and not isinstance(c, bool) for c in candidates
    ):
        raise DataError(f'Candidate file {path} must be {{"0": [answer, ...]}} with text or integer answers.')
    if not candidates:
        raise DataError(f"Candidate file {path} lists no answers.")
    return candidates


def _first(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOWN_IDS])
    return shown + (", ..." if len(ids) > _SHOWN_IDS else "")


def _duplicates(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    duplicates = []
    for value in ids:
        if value in seen and value not in duplicates:
            duplicates.append(value)
        seen.add(value)
    return duplicates


def match_records(
    ground_truth: list[GroundTruthRecord], predictions: list[PredictionRecord], allow_partial: bool = False
) -> tuple[list[tuple[GroundTruthRecord, PredictionRecord]], list[str]]:
    """Pair records by id (as text), in ground-truth order; return the pairs and the left-out ids.

    Duplicate ids are always an error; missing or extra ids are an error unless ``allow_partial``.
    """
    gt_ids = [str(record.id) for record in ground_truth]
    pred_ids = [str(record.id) for record in predictions]
    for ids, what in ((gt_ids, "ground truth"), (pred_ids, "predictions")):
        duplicates = _duplicates(ids)
        if duplicates:
            raise DataError(f"The {what} contain duplicate ids: {_first(duplicates)}.")
    by_id = dict(zip(pred_ids, predictions, strict=False))
    gt_set = set(gt_ids)
    missing = [value for value in gt_ids if value not in by_id]
    extra = [value for value in pred_ids if value not in gt_set]
    shared = len(gt_ids) - len(missing)
    if (missing or extra) and (not allow_partial or shared == 0):
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} ground-truth id(s) have no prediction (first: {_first(missing)})"
            )
        if extra:
            problems.append(
                f"{len(extra)} prediction id(s) are not in the ground truth (first: {_first(extra)})"
            )
        advice = (
            f"pass --allow-partial to score the {shared} shared id(s)"
            if shared
            else "no id is shared, check the files"
        )
        raise DataError(f"Predictions and ground truth do not match: {'; '.join(problems)}; {advice}.")
    pairs = [
        (record, by_id[value]) for record, value in zip(ground_truth, gt_ids, strict=False) if value in by_id
    ]
    return pairs, missing + extra


def score_answers(
    gt_path: str | Path,
    pred_path: str | Path,
    candidates_path: str | Path | None = None,
    scorer: str = "legacy",
    allow_partial: bool = False,
) -> ScoreReport:
    """Score an answers JSONL against a VQA test JSON; match by id, iterate in ground-truth order.

    With ``allow_partial`` only the shared ids are scored and the others are listed in
    ``report.left_out_ids``.
    """
    _check_scorer(scorer)
    ground_truth = load_ground_truth(gt_path)
    predictions = load_predictions(pred_path)
    candidates = load_candidates(candidates_path) if candidates_path is not None else None
    pairs, left_out = match_records(ground_truth, predictions, allow_partial)
    items = [ScoreItem(pred.text, gt.answer, gt.answer_type, gt.question, gt.id) for gt, pred in pairs]
    metrics, results = _score(items, scorer, candidates)
    arguments = score_arguments(gt_path, pred_path, candidates_path, allow_partial, len(pairs), left_out)
    arguments.update(scorer=scorer, scorer_version=SCORER_VERSIONS[scorer])
    return ScoreReport(metrics, results, arguments, left_out)


def score_arguments(
    gt_path: str | Path,
    pred_path: str | Path,
    candidates_path: str | Path | None,
    allow_partial: bool,
    num_scored: int,
    left_out: list[str],
) -> dict[str, Any]:
    """The ``arguments`` block of a metrics JSON: resolved files, counts, versions, time."""
    return {
        "gt": str(Path(gt_path).resolve()),
        "pred": str(Path(pred_path).resolve()),
        "candidates": str(Path(candidates_path).resolve()) if candidates_path is not None else None,
        "allow_partial": allow_partial,
        "num_scored": num_scored,
        "num_left_out": len(left_out),
        "exgra_version": __version__,
        "python_version": sys.version.split()[0],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class ScoreConfig(Section):
    """What ``exgra score`` does (validated): score ``answers`` against ``data``, optionally save."""

    data: Path = Field(description="VQA test JSON")
    answers: Path = Field(description="answers JSONL (question_id, text)")
    candidates: Path | None = None
    scorer: ScorerName = "legacy"
    allow_partial: bool = False
    output: Path | None = Field(None, description="metrics JSON to write")
    per_item: Path | None = Field(None, description="per-question results JSONL to write")
    overwrite: bool = False


def run_score(config: ScoreConfig) -> ScoreReport:
    """The ``exgra score`` entry point: check the outputs first (an output may never be an input), score,
    then write the metrics and per-item files that were asked for."""
    from exgra.io import check_output_file
    from exgra.outputs import check_distinct_outputs, check_not_inputs

    outputs = {"--output": config.output, "--per-item": config.per_item}
    for path in outputs.values():
        if path is not None:
            check_output_file(path, config.overwrite)
    check_not_inputs(
        outputs, {"--data": config.data, "--answers": config.answers, "--candidates": config.candidates}
    )
    check_distinct_outputs(outputs)
    report = score_answers(
        config.data,
        config.answers,
        config.candidates,
        scorer=config.scorer,
        allow_partial=config.allow_partial,
    )
    if config.output is not None:
        report.save(config.output, overwrite=config.overwrite)
    if config.per_item is not None:
        report.save_items(config.per_item, overwrite=config.overwrite)
    return report
