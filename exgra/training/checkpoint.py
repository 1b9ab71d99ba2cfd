"""Complete, atomically written training checkpoints.

Layout: ``<output_dir>/checkpoints/step-000020/`` holds what :meth:`Accelerator.save_state` writes
(model weights as safetensors, optimizer and scheduler state, one RNG file per process; accelerate
loads all of them with ``torch.load(weights_only=True)``) plus ``trainer_state.json`` (step, epoch,
data position, best metric) and ``config.yaml`` (the resolved run config). A checkpoint is written
under a temporary name and renamed when complete, so a crash (even ``kill -9``) never leaves a
half-written ``step-*`` directory: at most the work since the last checkpoint is lost.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exgra.errors import ExgraError

__all__ = [
    "TrainerState",
    "checkpoint_dir_name",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainer_state",
    "prune_checkpoints",
    "save_trainer_state",
]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Where a run is: enough, with the model/optimizer/RNG state, to continue bit-for-bit."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed on every process
    samples_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_records: list[dict[str, str]] = field(default_factory=list)
    config_digest: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary ``.tmp-*`` directories are ignored)."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_trainer_state(state: TrainerState, directory: str | Path) -> None:
    path = Path(directory) / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2), encoding="utf-8")
    tmp.replace(path)


def load_trainer_state(directory: str | Path) -> TrainerState:
    path = Path(directory) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainerState(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise ExgraError(
            f"checkpoint {directory} has no readable {STATE_FILE} ({exc}); "
            "delete it to resume from an earlier one"
        ) from exc


def temporary_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f".tmp-{checkpoint_dir_name(step)}"


def finalize_checkpoint(tmp_dir: Path) -> Path:
    """Rename a completely written temporary checkpoint to its final ``step-*`` name."""
    final = tmp_dir.with_name(tmp_dir.name.removeprefix(".tmp-"))
    if final.exists():
        # Re-saving the same step (e.g. the end of a run that just checkpointed): replace it.
        shutil.rmtree(final)
    tmp_dir.replace(final)
    return final


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints and stale temporary directories."""
    root = Path(output_dir) / CHECKPOINTS
    removed: list[Path] = []
    if root.is_dir():
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    checkpoints = list_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed
