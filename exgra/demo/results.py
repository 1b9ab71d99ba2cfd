"""Collect the metrics JSON files the scorer wrote and summarise them per arm and data fraction."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exgra.demo.settings import ARMS, DemoSettings
from exgra.errors import ExgraError

__all__ = ["GroupSummary", "RunScore", "Stat", "collect_scores", "summarize"]

# What the results table shows: (key, label). "average" is (open recall + closed accuracy) / 2, the
# single score of the paper's data-efficiency figure (REFERENCE §8).
SCORE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("open_recall", "open recall"),
    ("closed_accuracy", "closed accuracy"),
    ("average", "average"),
)


@dataclass(frozen=True)
class RunScore:
    """The scores of one (fraction, seed, arm), in percent, read from its ``metrics.json``."""

    fraction: float
    seed: int
    arm: str
    open_recall: float | None
    closed_accuracy: float | None
    average: float | None
    num_open: int
    num_closed: int
    metrics_path: str


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (``std`` is None for fewer than two values)."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> Stat:
        present = [v for v in values if v is not None]
        if not present:
            return cls(None, None, 0)
        std = statistics.stdev(present) if len(present) > 1 else None
        return cls(statistics.fmean(present), std, len(present))

    def format(self, digits: int = 2) -> str:
        """``61.25 ± 3.10`` (or ``61.25`` for one seed, ``-`` for none)."""
        if self.mean is None:
            return "-"
        text = f"{self.mean:.{digits}f}"
        return text if self.std is None else f"{text} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class GroupSummary:
    """One row of the results table: an arm at a data fraction, summarised over its seeds."""

    fraction: float
    arm: str
    open_recall: Stat
    closed_accuracy: Stat
    average: Stat
    seeds: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _average(recall: float | None, closed: float | None) -> float | None:
    if recall is None or closed is None:
        return recall if closed is None else closed
    return (recall + closed) / 2


def read_run_score(path: Path, fraction: float, seed: int, arm: str) -> RunScore:
    """Read one ``metrics.json`` written by :func:`exgra.eval.scoring.score_answers`."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExgraError(
            f"cannot read the scores in {path} ({exc}); delete it and rerun to score again"
        ) from exc
    recall, closed = metrics.get("recall"), metrics.get("closed_accuracy")
    return RunScore(
        fraction,
        seed,
        arm,
        recall,
        closed,
        _average(recall, closed),
        int(metrics.get("num_open", 0)),
        int(metrics.get("num_closed", 0)),
        str(path),
    )


def collect_scores(output_dir: str | Path, settings: DemoSettings) -> list[RunScore]:
    """Every finished run's scores, in (fraction, seed, arm) order; unfinished runs are left out."""
    from exgra.demo.pipeline import run_dir

    output_dir = Path(output_dir)
    scores = []
    for fraction in settings.fractions:
        for seed in range(settings.seeds):
            for arm in ARMS:
                path = run_dir(output_dir, fraction, seed) / arm / "metrics.json"
                if path.is_file():
                    scores.append(read_run_score(path, fraction, seed, arm))
    return scores


def summarize(scores: list[RunScore]) -> list[GroupSummary]:
    """Mean ± spread over seeds per (fraction, arm), fractions ascending, arms in :data:`ARMS` order."""
    groups: dict[tuple[float, str], list[RunScore]] = {}
    for score in scores:
        groups.setdefault((score.fraction, score.arm), []).append(score)
    arm_order = list(ARMS)
    rows = []
    for (fraction, arm), members in sorted(
        groups.items(), key=lambda item: (item[0][0], arm_order.index(item[0][1]))
    ):
        rows.append(
            GroupSummary(
                fraction,
                arm,
                Stat.of([m.open_recall for m in members]),
                Stat.of([m.closed_accuracy for m in members]),
                Stat.of([m.average for m in members]),
                [m.seed for m in members],
            )
        )
    return rows
