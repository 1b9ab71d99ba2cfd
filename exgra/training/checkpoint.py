"""Complete, atomically written training checkpoints.

Layout: ``<output_dir>/checkpoints/step-000020/`` holds what :meth:`Accelerator.save_state` writes
(model weights as safetensors, optimizer and scheduler state, one RNG file per process; accelerate
loads all of them with ``torch.load(weights_only=True)``) plus ``trainer_state.json`` (step, epoch,
data position, best metric) and ``config.yaml`` (the resolved run config). A checkpoint is written
under a temporary name and renamed when complete, so a crash (even ``kill -9``) never leaves a
half-written ``step-*`` directory: at most the work since the last checkpoint is lost.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exgra.config import dump_config
from exgra.errors import ExgraError
from exgra.io import write_json_atomic

__all__ = [
    "TrainerState",
    "checkpoint_dir_name",
    "exportable_module",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainer_state",
    "module_from_state_dict",
    "prune_checkpoints",
    "save_checkpoint",
    "save_final",
    "save_model_dir",
    "save_trainer_state",
]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
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
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient

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
    write_json_atomic(Path(directory) / STATE_FILE, state.to_json())


def load_trainer_state(directory: str | Path) -> TrainerState:
    path = Path(directory) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("config_digest", None)  # written by earlier versions, never read
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


def _disk_message(exc: BaseException) -> str:
    """The reason of a failed write in words; exgra's writers wrap the OSError (its ``__cause__``)."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(cause, OSError):
        return "the disk is full" if cause.errno == errno.ENOSPC else (cause.strerror or str(cause))
    return str(exc)


def save_checkpoint(
    accelerator: Any, output_dir: Path, state: TrainerState, config: Any, keep_last: int
) -> Path:
    """Write a complete checkpoint of ``state.step`` (every process joins); return its folder.

    Written under ``.tmp-step-*`` and renamed when complete; when writing fails (a full disk, a
    read-only file system) the temporary folder is removed and one :class:`ExgraError` names the
    last complete checkpoint, which is untouched.
    """
    main = accelerator.is_main_process
    tmp = temporary_dir(output_dir, state.step)
    final = tmp.with_name(checkpoint_dir_name(state.step))
    try:
        if main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if main:
            save_trainer_state(state, tmp)
            dump_config(config, tmp / CONFIG_FILE)
            final = finalize_checkpoint(tmp)
            prune_checkpoints(output_dir, keep_last)
    except (OSError, ExgraError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(output_dir)
        kept = f"the last complete checkpoint is {previous}" if previous else "no checkpoint was written yet"
        raise ExgraError(
            f"cannot save the checkpoint of step {state.step} in {output_dir}: {_disk_message(exc)}; "
            f"{kept}: free space and continue with --resume"
        ) from exc
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------------------------- export


def _sharded(accelerator: Any) -> bool:
    return accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")


def exportable_module(accelerator: Any, module: Any, config: Any) -> Any:
    """The training module with complete weights on the main process.

    Under FSDP / DeepSpeed the parameters are sharded: every process joins the gather, and the main
    process gets a copy built on the meta device and filled with the gathered full weights.
    """
    if not _sharded(accelerator):
        return accelerator.unwrap_model(module)
    state = accelerator.get_state_dict(module)  # collective: every process must call it
    if not accelerator.is_main_process:
        return None
    return module_from_state_dict(state, config)


def module_from_state_dict(state: dict[str, Any], config: Any) -> Any:
    """A CPU :class:`TrainingModule` (model + alignment) holding the weights of a full state dict."""
    import torch

    from exgra.models import build_model
    from exgra.training.steps import TrainingModule

    bundle = build_model(config.model, device="meta")
    model = bundle.model
    model_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(model_state, assign=True)
    alignment = None
    align_state = {k.removeprefix("alignment."): v for k, v in state.items() if k.startswith("alignment.")}
    if align_state:
        from exgra.alignment import MultiGraphAlignment
        from exgra.alignment.config import AlignmentConfig

        fields = config.alignment.model_dump(include=set(AlignmentConfig.model_fields))
        with torch.device("meta"):
            alignment = MultiGraphAlignment(AlignmentConfig(**fields), bundle.family.hidden_size(model))
        alignment.load_state_dict(align_state, assign=True)
    return TrainingModule(model, alignment, family=bundle.family)


def save_model_dir(module: Any, bundle: Any, directory: Path) -> None:
    """Write the trained VLM as an HF-native safetensors checkpoint (LoRA merged) via ``ModelBundle.save``,
    plus the alignment module's weights (for continued stage-2 training) beside it."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    tmp = directory.with_name(f".tmp-{directory.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    original = bundle.model
    # ModelBundle.save merges LoRA adapters (and dequantises QLoRA's 4-bit base) in a copy of it.
    bundle.model = module.model
    hf_logging.disable_progress_bar()  # our own progress bar is on screen
    try:
        bundle.save(tmp)
        if module.alignment is not None:
            tensors = {k: v.detach().cpu().contiguous() for k, v in module.alignment.state_dict().items()}
            save_file(tensors, str(tmp / "alignment.safetensors"))
    except (OSError, ExgraError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExgraError(f"cannot write the model {directory}: {_disk_message(exc)}") from exc
    finally:
        bundle.model = original
        hf_logging.enable_progress_bar()
    if directory.exists():
        shutil.rmtree(directory)
    tmp.replace(directory)


def save_final(
    module: Any, bundle: Any, final_dir: Path, config: Any, metrics: dict[str, Any], state: TrainerState
) -> None:
    """The run's final model with its training config and a summary of the run beside it."""
    save_model_dir(module, bundle, final_dir)
    dump_config(config, final_dir / "train_config.yaml")
    summary = {
        "step": state.step,
        "samples_seen": state.samples_seen,
        "final": metrics,
        "best_metric": state.best_metric,
        "best_step": state.best_step,
        "bad_records": state.bad_records,
    }
    write_json_atomic(final_dir / "training_metrics.json", summary)
