"""A training run's output folder: who owns it, what ``--overwrite`` and ``--resume`` may do with it.

The folder is a run's only if exgra's marker is in it (:mod:`exgra.outputs`): ``--overwrite`` removes
only what a run wrote and refuses, deleting nothing, when anything else is there; ``--resume`` needs
a complete checkpoint written with the same settings (a different setting is refused by name); a run
that fails before its first checkpoint leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from exgra.errors import ConfigError
from exgra.training.checkpoint import CHECKPOINTS, CONFIG_FILE, latest_checkpoint
from exgra.training.config import TrainConfig

__all__ = ["OUTPUT_COMMAND", "RUN_ENTRIES", "discard_failed_output", "prepare_output_dir"]

FINAL_DIR = "final"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
OUTPUT_COMMAND = "train"  # the command named in the output folder's marker (exgra.outputs)
# Files and folders a run writes; --overwrite removes exactly these, nothing else.
RUN_ENTRIES = (CHECKPOINTS, FINAL_DIR, BEST_DIR, METRICS_FILE, CONFIG_FILE, "logs", "validation")
# Keys that may change between a run and its resumption.
_RESUME_FREE_KEYS = ("output_dir", "log", "data.num_workers", "train.eval_batch_size")


def _comparable(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    data = (
        config.model_dump(mode="json") if isinstance(config, TrainConfig) else json.loads(json.dumps(config))
    )
    for dotted in _RESUME_FREE_KEYS:
        cursor = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            cursor = cursor.get(part, {})
        cursor.pop(parts[-1], None)
    return data


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _inputs(config: TrainConfig) -> dict[str, str | None]:
    return {
        "data.train_json": config.data.train_json,
        "data.image_folder": config.data.image_folder,
        "data.val_json": config.data.val_json,
        "model.path": config.model.path,
    }


def prepare_output_dir(output_dir: Path, config: TrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """Check the output folder (changing nothing when it refuses); return the checkpoint to resume from.

    The folder is the run's only if exgra's marker is in it (:mod:`exgra.outputs`): ``--overwrite``
    removes only what a run wrote and refuses, deleting nothing, when anything else is there;
    ``--resume`` needs a complete checkpoint written with the same settings.
    """
    from exgra.outputs import check_output_folder, foreign_entries, read_marker, remove_owned

    marker = read_marker(output_dir) if output_dir.is_dir() else None
    if marker is not None and marker.command == OUTPUT_COMMAND and not (overwrite or resume):
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is not None and not foreign_entries(output_dir, marker):
            raise ConfigError(
                f"output dir {output_dir} is not empty (it holds a run with checkpoints up to "
                f"{checkpoint.name}); pass --resume to continue it or --overwrite to replace it"
            )
    found = check_output_folder(
        output_dir,
        OUTPUT_COMMAND,
        overwrite=overwrite,
        resume=resume,
        inputs=_inputs(config),
        option="output dir",
    )
    if found == "owned" and overwrite:
        remove_owned(output_dir)
        return None
    checkpoint = latest_checkpoint(output_dir) if found == "owned" else None
    if resume and checkpoint is None:
        what = "no complete checkpoint" if found == "owned" else "no training run"
        hint = "pass --overwrite to start it again" if found == "owned" else "drop --resume to start one"
        raise ConfigError(f"cannot resume {output_dir}: it holds {what}; {hint}")
    if checkpoint is not None:
        from exgra.config import read_yaml

        saved = _comparable(read_yaml(checkpoint / CONFIG_FILE))
        changed = _differences(saved, _comparable(config))
        if changed:
            raise ConfigError(
                f"cannot resume {output_dir}: its config differs in {', '.join(changed[:6])}; use the same "
                "config, or --overwrite to start a new run there"
            )
    return checkpoint


def discard_failed_output(run_dir: Path, created: bool) -> None:
    """A run that failed before its first checkpoint leaves nothing behind (no empty output folder)."""
    from exgra.outputs import MARKER_NAME, foreign_entries, remove_owned

    if not run_dir.is_dir() or latest_checkpoint(run_dir) is not None:
        return
    remove_owned(run_dir)
    (run_dir / MARKER_NAME).unlink(missing_ok=True)
    if created and not foreign_entries(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
