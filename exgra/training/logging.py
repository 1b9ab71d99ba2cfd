"""Metrics: a JSONL metrics log and optional TensorBoard / W&B (the progress bar is :mod:`exgra.progress`).

Trackers are used only when ``log.report_to`` asks for them, and never prompt: W&B without an API
key in the environment runs in offline mode.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from exgra.errors import ConfigError
from exgra.jsonl import JsonlWriter, read_records, truncate_records

__all__ = ["MetricsLog", "prepare_tracker_environment", "read_metrics", "tracker_name"]


class MetricsLog:
    """Append-only JSONL metrics file (one object per logged step) through :mod:`exgra.jsonl`."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        # Opened per line: a log line is rare next to a training step, and a kill never holds it open.
        with JsonlWriter(self.path, fsync="never").open() as writer:
            writer.append(clean)

    def truncate_after(self, step: int) -> int:
        """Drop the records of steps after ``step`` (logged before a kill, trained again on resume)."""
        return truncate_records(self.path, lambda record: int(record.get("step", 0)) <= step)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL metrics log."""
    return read_records(path)


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
