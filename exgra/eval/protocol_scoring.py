"""Score answers under a protocol (:mod:`exgra.eval.protocols`): its scorer, its headline numbers.

``exgra-med``, ``llava-med`` and ``strict`` use the scorers of :mod:`exgra.eval.scoring`;
``medevalkit`` and ``tokenized-f1`` are scored here. Every item gets one ``score`` in [0, 1] (the
protocol's per-question number: recall or closed hit, exact match, F1, correct), which the image
reliance report compares across controls. The metrics dict names the protocol and its version and
adds the headline keys (``mean_open_closed``, ``accuracy``, ``f1``...).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from exgra.errors import ExgraError
from exgra.eval.protocol_metrics import (
    medevalkit_closed_correct,
    medevalkit_extract,
    medevalkit_is_closed,
    medevalkit_normalize,
    medevalkit_open_correct,
    medevalkit_parse,
    squad_normalize,
    tokenized_f1,
)
from exgra.eval.protocols import Protocol, ask, get_protocol, strip_options_suffix
from exgra.eval.scoring import (
    SCORER_VERSIONS,
    ItemResult,
    ScoreItem,
    ScoreReport,
    _score,
    load_candidates,
    load_ground_truth,
    load_predictions,
    match_records,
    score_arguments,
)

__all__ = ["check_prompt", "protocol_scorer", "score_protocol", "score_protocol_items"]

# The scorers of exgra.eval.scoring a prompt-"data" protocol may be combined with (exgra-med only).
LEGACY_SCORERS = ("legacy", "llava-med", "llava-med-pre35", "strict")


def _percent(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) * 100 if values else None


def protocol_scorer(protocol: Protocol, scorer: str | None) -> str:
    """The scorer to use: the protocol's, or a legacy variant chosen with ``--scorer`` (exgra-med only)."""
    if scorer is None or scorer == protocol.scorer:
        return protocol.scorer
    if protocol.name == "exgra-med" and scorer in LEGACY_SCORERS:
        return scorer
    raise ExgraError(
        f"--scorer {scorer} does not combine with --protocol {protocol.name} (it has its own scorer, "
        f"{protocol.scorer}); --scorer picks a variant for the exgra-med protocol only"
    )


def _medevalkit(
    items: list[ScoreItem], verdicts: dict[str, bool] | None
) -> tuple[dict[str, Any], list[ItemResult]]:
    results, closed, open_exact, open_final = [], [], [], []
    for item in items:
        parsed = medevalkit_parse(medevalkit_normalize(medevalkit_extract(item.prediction)))
        gold = medevalkit_normalize(item.ground_truth)
        if medevalkit_is_closed(item.ground_truth):
            hit = float(medevalkit_closed_correct(parsed, gold))
            closed.append(hit)
            scores: dict[str, Any] = {"closed_accuracy": hit, "score": hit}
            kind = "CLOSED"
        else:
            exact = float(medevalkit_open_correct(parsed, gold))
            open_exact.append(exact)
            scores = {"open_exact_match": exact}
            judged = None if verdicts is None else verdicts.get(str(item.id))
            if judged is not None:
                scores["judge_correct"] = judged
            final = exact if judged is None else float(judged)
            open_final.append(final)
            scores["score"] = final
            kind = "OPEN"
        # The type MedEvalKit assigns (from the gold answer); the data's answer_type is kept beside it.
        scores["data_answer_type"] = item.answer_type
        results.append(ItemResult(item.id, kind, parsed, gold, scores))
    metrics = {
        "accuracy": _percent(closed + open_final),
        "closed_accuracy": _percent(closed),
        "open_exact_match": _percent(open_exact),
        "open_accuracy": _percent(open_final),
        "num_open": len(open_exact),
        "num_closed": len(closed),
        "open_scoring": "exact-match" if verdicts is None else "llm-judge",
    }
    return metrics, results


def _tokenized_f1(items: list[ScoreItem]) -> tuple[dict[str, Any], list[ItemResult]]:
    results, by_type = [], {"OPEN": [], "CLOSED": []}
    exact = []
    for item in items:
        f1 = tokenized_f1(item.prediction, item.ground_truth)
        pred, gold = squad_normalize(item.prediction), squad_normalize(item.ground_truth)
        exact.append(float(pred == gold))
        by_type[item.answer_type].append(f1)
        results.append(ItemResult(item.id, item.answer_type, pred, gold, {"f1": f1, "score": f1}))
    metrics = {
        "f1": _percent(by_type["OPEN"] + by_type["CLOSED"]),
        "f1_open": _percent(by_type["OPEN"]),
        "f1_closed": _percent(by_type["CLOSED"]),
        "exact_match": _percent(exact),
        "num_open": len(by_type["OPEN"]),
        "num_closed": len(by_type["CLOSED"]),
    }
    return metrics, results


def _legacy(
    items: list[ScoreItem], scorer: str, candidates: Sequence[str | int] | None
) -> tuple[dict[str, Any], list[ItemResult]]:
    metrics, results = _score(items, scorer, candidates)
    open_key = "exact_match" if scorer == "strict" else "recall"
    scores = []
    for result in results:
        value = result.scores.get(open_key if result.answer_type == "OPEN" else "closed_accuracy")
        result.scores["score"] = None if value is None else float(value)
        if value is not None:
            scores.append(float(value))
    opened, closed = metrics[open_key], metrics["closed_accuracy"]
    both = [value for value in (opened, closed) if value is not None]
    metrics["mean_open_closed"] = sum(both) / len(both) if both else None
    metrics["accuracy"] = _percent(scores)
    return metrics, results


def score_protocol_items(
    items: Sequence[ScoreItem | Sequence[Any]],
    protocol: str | Protocol,
    candidates: Sequence[str | int] | None = None,
    scorer: str | None = None,
    verdicts: dict[str, bool] | None = None,
) -> tuple[dict[str, Any], list[ItemResult]]:
    """Score in-memory answers under ``protocol``; return the metrics dict and per-item results.

    ``verdicts`` (item id -> correct) are LLM-judge verdicts for open questions (``medevalkit``);
    open items without a verdict are scored by exact match.
    """
    from exgra.eval.scoring import _as_item

    spec = get_protocol(protocol) if isinstance(protocol, str) else protocol
    chosen = protocol_scorer(spec, scorer)
    prepared = [_as_item(item) for item in items]
    if verdicts is not None and chosen != "medevalkit":
        raise ExgraError(f"an LLM judge applies to the medevalkit protocol, not to {spec.name}")
    if chosen == "medevalkit":
        metrics, results = _medevalkit(prepared, verdicts)
        version = spec.version
    elif chosen == "tokenized-f1":
        metrics, results = _tokenized_f1(prepared)
        version = spec.version
    else:
        metrics, results = _legacy(prepared, chosen, candidates)
        version = SCORER_VERSIONS[chosen]
    metrics["scorer"] = {"name": chosen, "version": version}
    metrics["protocol"] = {**spec.to_dict(), "scorer": chosen}
    metrics["headline"] = dict(zip(("open", "closed", "overall"), spec.headline, strict=True))
    return metrics, results


# ----------------------------------------------------------------------------------------------
# Which prompt were the answers generated with?
# ----------------------------------------------------------------------------------------------


def _recorded_prompt_style(pred_path: Path) -> tuple[str | None, str]:
    """The prompt style named in the ``run.json`` beside the answers (None when there is none)."""
    from exgra.eval.vqa import sidecar_path

    info_path = sidecar_path(pred_path, "run.json")
    if not info_path.is_file():
        return None, ""
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None, ""
    # exgra eval wrote no "prompt" before protocols existed: it always asked the data's question.
    return str(info.get("prompt", "data")), str(info_path)


def check_prompt(
    protocol: Protocol, pred_path: Path, asked: dict[str, str], expected: dict[str, str]
) -> str | None:
    """None when the answers were asked the protocol's way, else a sentence saying how they differ.

    The ``run.json`` beside the answers decides when there is one; otherwise each answer line's
    ``prompt`` (the question as asked, reference schema) is compared with what the protocol asks.
    """
    style, where = _recorded_prompt_style(pred_path)
    if style is not None:
        if style == protocol.prompt:
            return None
        return (
            f"the answers were generated with the {style!r} prompt ({where}) but protocol {protocol.name} "
            f"asks with the {protocol.prompt!r} prompt"
        )
    differing = [key for key, text in asked.items() if key in expected and text != expected[key]]
    if not differing:
        return None
    return (
        f"{len(differing)} of {len(asked)} answers were asked another question than protocol "
        f"{protocol.name} asks (first: question {differing[0]}: {asked[differing[0]]!r})"
    )


def _asked_prompts(pred_path: Path) -> dict[str, str]:
    from exgra.io import read_jsonl

    rows = read_jsonl(pred_path, "prediction file", required_key="question_id")
    return {
        str(row["question_id"]): row["prompt"].replace("<image>", "").strip()
        for row in rows
        if isinstance(row.get("prompt"), str)
    }


def score_protocol(
    gt_path: str | Path,
    pred_path: str | Path,
    protocol: str,
    candidates_path: str | Path | None = None,
    scorer: str | None = None,
    allow_partial: bool = False,
    judge: Any = None,
    force: bool = False,
    console: Console | None = None,
) -> ScoreReport:
    """Score an answers JSONL under ``protocol``; refuse answers asked with another prompt.

    ``judge`` (a :class:`exgra.eval.judge.JudgeSettings`) judges the open answers of ``medevalkit``;
    without it they are scored by exact match. ``force`` scores mismatched prompts anyway (with a
    warning, recorded as ``prompt_mismatch`` in the metrics).
    """
    spec = get_protocol(protocol)
    chosen = protocol_scorer(spec, scorer)
    if judge is not None and chosen != "medevalkit":
        raise ExgraError(f"--judge-model applies to the medevalkit protocol, not to {spec.name}")
    pred_path = Path(pred_path)
    ground_truth = load_ground_truth(gt_path)
    predictions = load_predictions(pred_path)
    pairs, left_out = match_records(ground_truth, predictions, allow_partial)
    expected = {
        str(gt.id): ask(spec.prompt, gt.question.replace("<image>", "").strip(), gt.answer) for gt, _ in pairs
    }
    mismatch = check_prompt(spec, pred_path, _asked_prompts(pred_path), expected)
    if mismatch and not force:
        raise ExgraError(
            f"{mismatch}; a protocol that changes the prompt must be chosen at eval time "
            f"(exgra eval ... --protocol {spec.name}), or pass --force-protocol to score anyway"
        )
    if mismatch:
        (console or Console(stderr=True)).print(
            f"warning: {mismatch}; scoring anyway (--force-protocol)", style="yellow", markup=False
        )
    items = [ScoreItem(pred.text, gt.answer, gt.answer_type, gt.question, gt.id) for gt, pred in pairs]
    verdicts, judge_summary = None, None
    if judge is not None:
        verdicts, judge_summary = _judge(items, judge)
    candidates = load_candidates(candidates_path) if candidates_path is not None else None
    metrics, results = score_protocol_items(items, spec, candidates, chosen, verdicts)
    if judge_summary is not None:
        metrics["judge"] = judge_summary
    metrics["prompt_mismatch"] = bool(mismatch)
    arguments = score_arguments(gt_path, pred_path, candidates_path, allow_partial, len(pairs), left_out)
    arguments.update(scorer=chosen, scorer_version=metrics["scorer"]["version"], protocol=spec.name)
    return ScoreReport(metrics, results, arguments, left_out)


def _judge(items: list[ScoreItem], settings: Any) -> tuple[dict[str, bool], dict[str, Any]]:
    from exgra.eval.judge import JudgeItem, judge_answers

    to_judge = [
        JudgeItem(
            str(item.id),
            strip_options_suffix(item.question.replace("<image>", "")),
            item.ground_truth.strip(),
            medevalkit_extract(item.prediction).strip(),
        )
        for item in items
        if not medevalkit_is_closed(item.ground_truth)
    ]
    outcome = judge_answers(to_judge, settings)
    summary = outcome.summary()
    # Deterministic fallback, per question: what the judge could not judge is scored by exact match.
    summary["fallback"] = "exact match for the failed ones" if outcome.failed else None
    return outcome.verdicts, summary
