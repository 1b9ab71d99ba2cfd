"""Progress and metrics: a rich progress bar, a JSONL metrics log, optional TensorBoard / W&B.

Trackers are used only when ``log.report_to`` asks for them, and never prompt: W&B without an API
key in the environment runs in offline mode.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from exgra.errors import ConfigError

__all__ = ["MetricsLog", "make_progress", "prepare_tracker_environment", "tracker_name"]


class MetricsLog:
    """Append-only JSONL metrics file (one object per logged step), flushed on every write."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL metrics log."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def make_progress(enabled: bool, console: Console | None = None) -> Progress:
    """Progress bar with loss, lm_loss, align_loss, learning rate, speed and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "loss {task.fields[loss]} lm {task.fields[lm_loss]} align {task.fields[align_loss]} "
            "lr {task.fields[lr]} {task.fields[speed]}"
        ),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def tracker_name(report_to: str) -> str | None:
    """The accelerate tracker for ``log.report_to`` (None for "none")."""
    return None if report_to == "none" else report_to


def prepare_tracker_environment(report_to: str) -> str | None:
    """Check the tracker is installed and make it non-interactive; returns a note for the user when
    behaviour changed. Raises :class:`ConfigError` when the tracker's package is missing."""
    if report_to == "none":
        return None
    package, extra = {"tensorboard": ("tensorboard", "logging"), "wandb": ("wandb", "")}[report_to]
    if importlib.util.find_spec(package) is None:
        how = f"pip install 'exgra[{extra}]'" if extra else f"pip install {package}"
        raise ConfigError(
            f"log.report_to={report_to} needs the {package} package: {how}, or set log.report_to=none"
        )
    if report_to != "wandb":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
        return "WANDB_API_KEY is not set: Weights & Biases logs offline (sync later with `wandb sync`)"
    return None
