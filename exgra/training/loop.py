"""The one training loop behind ``exgra train stage1|stage2`` and ``exgra finetune`` (accelerate).

AdamW, a warmup + cosine (or linear/constant) schedule, gradient accumulation, clipping,
fp32/bf16/fp16, gradient checkpointing, optional LoRA; complete checkpoints every ``save_every``
steps and at the end; ``resume`` continues bit-for-bit from the latest one (seeded epoch shuffling,
saved data position and RNG states); Ctrl-C saves a checkpoint and returns; fine-tuning validates
every ``eval_every`` steps and keeps the best model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exgra.config import dump_config
from exgra.errors import ConfigError, DataError, ExgraError
from exgra.training.checkpoint import (
    CHECKPOINTS,
    TrainerState,
    checkpoint_dir_name,
    finalize_checkpoint,
    latest_checkpoint,
    load_trainer_state,
    prune_checkpoints,
    save_trainer_state,
    temporary_dir,
)
from exgra.training.config import TrainConfig
from exgra.training.logging import MetricsLog, make_progress, prepare_tracker_environment, tracker_name

__all__ = ["TrainResult", "build_model_bundle", "epoch_batches", "run_training"]

FINAL_DIR = "final"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
# Files and folders a run writes; --overwrite removes exactly these, nothing else.
RUN_ENTRIES = (CHECKPOINTS, FINAL_DIR, BEST_DIR, METRICS_FILE, CONFIG_FILE, "logs", "validation")
# Keys that may change between a run and its resumption.
_RESUME_FREE_KEYS = ("output_dir", "log", "data.num_workers", "train.eval_batch_size")


@dataclass
class TrainResult:
    """What a run produced. ``final_dir`` is None when the run was interrupted."""

    output_dir: Path
    step: int
    total_steps: int
    interrupted: bool
    final_dir: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    best_dir: Path | None = None
    best_metric: float | None = None
    bad_records: list[dict[str, str]] = field(default_factory=list)


@dataclass
class StepInfo:
    """Passed to callbacks after every optimizer step; set ``stop = True`` to save and stop."""

    step: int
    total_steps: int
    epoch: int
    metrics: dict[str, float]
    stop: bool = False


# --------------------------------------------------------------------------------------------- helpers


def _config_digest(config: TrainConfig) -> str:
    data = _comparable(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


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


def prepare_output_dir(output_dir: Path, config: TrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """Check (and with ``overwrite`` clear) the output folder; return the checkpoint to resume from."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output dir {output_dir} exists and is not a folder")
    checkpoint = latest_checkpoint(output_dir) if output_dir.is_dir() else None
    non_empty = output_dir.is_dir() and any(output_dir.iterdir())
    if overwrite:
        for name in RUN_ENTRIES:
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        if output_dir.is_dir() and any(output_dir.iterdir()):
            raise ConfigError(
                f"--overwrite only removes what a training run writes, but {output_dir} holds other files; "
                "choose an empty output dir"
            )
        return None
    if resume and checkpoint is not None:
        from exgra.config import read_yaml

        saved = _comparable(read_yaml(checkpoint / CONFIG_FILE))
        changed = _differences(saved, _comparable(config))
        if changed:
            raise ConfigError(
                f"cannot resume {output_dir}: its config differs in {', '.join(changed[:6])}; use the same "
                "config, or --overwrite to start a new run there"
            )
        return checkpoint
    if resume and non_empty and all(entry.name in RUN_ENTRIES for entry in output_dir.iterdir()):
        # A run that stopped before its first checkpoint: nothing to continue, start it again.
        for entry in output_dir.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return None
    if non_empty:
        what = f"a run with checkpoints up to {checkpoint.name}" if checkpoint else "files"
        hint = "pass --resume to continue it or --overwrite" if checkpoint else "pass --overwrite"
        raise ConfigError(f"output dir {output_dir} is not empty (it holds {what}); {hint} to replace it")
    return None


def build_model_bundle(config: TrainConfig) -> Any:
    """The model bundle a run starts from: a saved checkpoint (``model.path``) or a registry build."""
    from exgra.models import build_model

    return build_model(config.model)


def epoch_batches(
    num_records: int, batch_size: int, epoch: int, seed: int, process_index: int = 0, num_processes: int = 1
) -> list[list[int]]:
    """This process's micro-batches (record indices) for ``epoch``.

    A permutation seeded by ``(seed, epoch)`` is padded by wrapping around to a multiple of
    ``num_processes`` and dealt out round-robin, so every process has the same number of batches
    and the order depends on nothing but the seed (resume needs only the batch index).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_records, generator=generator).tolist()
    padded = math.ceil(num_records / num_processes) * num_processes
    order = (order * math.ceil(padded / max(1, num_records)))[:padded]
    mine = order[process_index::num_processes]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def _optimizer_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Like HF Trainer: no decay on biases and norm weights (1-D parameters).
    decay, no_decay = [], []
    for _, parameter in module.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _apply_lora(model: Any, config: TrainConfig) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("train.lora.enabled needs peft: pip install 'exgra[lora]'") from exc
    lora = config.train.lora
    # A regex so that only the language model's linear layers get adapters, not the vision tower's.
    targets = rf".*language_model.*\.({'|'.join(lora.target_modules)})"
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets
    )
    return get_peft_model(model, peft_config)


class _InterruptFlag:
    """SIGINT sets a flag checked at the next step boundary; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ------------------------------------------------------------------------------------------------ run


def run_training(
    config: TrainConfig,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    show_progress: bool = True,
) -> TrainResult:
    """Train as ``config`` says; returns where the final model, checkpoints and metrics are.

    ``resume`` continues from the latest checkpoint in ``output_dir`` (starting fresh if there is
    none); ``overwrite`` replaces an earlier run there. Each callback gets a :class:`StepInfo` after
    every optimizer step.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from exgra.data.collate import TrainingCollator
    from exgra.data.datasets import SupervisedDataset, select_fraction
    from exgra.data.records import BadRecordTracker, load_pretrain_records, load_vqa_records
    from exgra.data.templates import get_template
    from exgra.training.stages import apply_stage
    from exgra.training.steps import TrainingModule

    out = Path(output_dir or config.output_dir or "")
    if not str(output_dir or config.output_dir or ""):
        raise ConfigError("no output dir: pass --output-dir or set output_dir in the config")
    data_cfg, train_cfg, align_cfg = config.data, config.train, config.alignment
    if not data_cfg.train_json or not data_cfg.image_folder:
        raise ConfigError("data.train_json and data.image_folder must be set (in the YAML or as key=value)")
    if train_cfg.stage == "finetune" and train_cfg.eval_every and not data_cfg.val_json:
        raise ConfigError("train.eval_every needs data.val_json (the validation split)")

    note = prepare_tracker_environment(config.log.report_to)
    try:
        accelerator = Accelerator(
            mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[train_cfg.precision],
            log_with=tracker_name(config.log.report_to),
            project_dir=str(out / "logs"),
            step_scheduler_with_optimizer=False,
            # Launched as several processes on a machine without GPUs: accelerate's gloo CPU mode.
            cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=train_cfg.find_unused_parameters)
            ],
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"train.precision={train_cfg.precision} is not usable here: {exc}") from exc
    main = accelerator.is_main_process
    if _sharded(accelerator) and train_cfg.lora.enabled:
        raise ConfigError("LoRA runs with DDP or one process; use the ddp/single accelerate config for LoRA")
    if accelerator.distributed_type.value == "DEEPSPEED" and train_cfg.grad_accum != 1:
        raise ConfigError(
            "with DeepSpeed set train.grad_accum=1 (DeepSpeed steps the optimizer on every backward); "
            "raise per_device_batch_size or the number of processes instead"
        )
    console_print = accelerator.print

    resume_from: Path | None = None
    if main:
        resume_from = prepare_output_dir(out, config, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if not main:
        resume_from = latest_checkpoint(out) if resume else None
    if note:
        console_print(note)
    if resume and resume_from is None:
        console_print(f"no checkpoint in {out}: starting from scratch")

    set_seed(train_cfg.seed)

    # ---- model, stage preset, alignment module
    bundle = build_model_bundle(config)
    model = bundle.model
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train_cfg.lora.enabled:
        model = _apply_lora(model, config)
    counts = apply_stage(model, train_cfg.stage, lora=train_cfg.lora.enabled)
    alignment = None
    if align_cfg.enabled:
        from exgra.alignment import MultiGraphAlignment
        from exgra.alignment.config import AlignmentConfig

        alignment_config = AlignmentConfig(**align_cfg.model_dump(include=set(AlignmentConfig.model_fields)))
        alignment = MultiGraphAlignment(
            alignment_config, feature_dim=bundle.model.config.text_config.hidden_size
        )
    tokenizer = bundle.tokenizer
    module = TrainingModule(
        model,
        alignment,
        alpha=align_cfg.alpha,
        text_source=align_cfg.text_source,
        text_pooling=config.model.text_pooling,
        pack_text_passes=align_cfg.pack_text_passes,
        pad_token_id=tokenizer.pad_token_id,
    )

    # ---- data
    tracker = BadRecordTracker(data_cfg.max_bad_records, source=str(data_cfg.train_json))
    if train_cfg.stage == "finetune":
        records = load_vqa_records(data_cfg.train_json, tracker=tracker)
    else:
        records = load_pretrain_records(data_cfg.train_json, require_long=align_cfg.enabled, tracker=tracker)
    records = [records[i] for i in select_fraction(len(records), data_cfg.fraction, data_cfg.fraction_seed)]
    if not records:
        raise DataError(f"{data_cfg.train_json} holds no training records")
    dataset = SupervisedDataset(
        records,
        data_cfg.image_folder,
        tokenizer,
        get_template(bundle.template),
        bundle.image_processor,
        bundle.num_image_tokens,
        data_cfg.max_length,
        human_turn_masking=data_cfg.human_turn_masking,
        tokenization=data_cfg.tokenization,
        alignment_texts=alignment is not None,
        use_im_start_end=config.model.use_im_start_end,
    )
    collator = TrainingCollator(tokenizer.pad_token_id)
    process, processes = accelerator.process_index, accelerator.num_processes
    batches_per_epoch = len(
        epoch_batches(len(dataset), train_cfg.per_device_batch_size, 0, train_cfg.seed, 0, processes)
    )
    steps_per_epoch = math.ceil(batches_per_epoch / train_cfg.grad_accum)
    total_steps = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * steps_per_epoch))

    # ---- optimisation
    optimizer = torch.optim.AdamW(
        _optimizer_groups(module, train_cfg.weight_decay),
        lr=train_cfg.lr,
        betas=train_cfg.adam_betas,
        eps=train_cfg.adam_eps,
    )
    scheduler = get_scheduler(
        train_cfg.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(train_cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)

    state = TrainerState(config_digest=_config_digest(config))
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = load_trainer_state(resume_from)
        console_print(f"resumed from {resume_from} (step {state.step})")
    if resume_from is not None:
        # The records' own validation ran again above; add the image failures seen before the resume.
        known = {record_id for record_id, _ in tracker.bad}
        for bad in state.bad_records:
            if bad["id"] not in known:
                tracker.add(bad["id"], bad["reason"])

    if main:
        dump_config(config, out / CONFIG_FILE)
    if config.log.report_to != "none":
        accelerator.init_trackers(
            config.log.project,
            config=_flat(config.model_dump(mode="json")),
            init_kwargs={"wandb": {"name": config.log.run_name}} if config.log.report_to == "wandb" else {},
        )
    metrics_log = MetricsLog(out / METRICS_FILE, enabled=main)
    validator = None
    if train_cfg.stage == "finetune" and data_cfg.val_json and train_cfg.eval_every:
        from exgra.training.validation import Validator

        validator = Validator(config, bundle, accelerator, out)
        validator.attach(module)

    console_print(
        f"{train_cfg.stage}: {len(dataset)} records, {total_steps} steps, "
        f"{counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters, {processes} process(es)"
    )

    def save(tag_step: int) -> Path:
        tmp = temporary_dir(out, tag_step)
        if main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        final = tmp.with_name(checkpoint_dir_name(tag_step))
        if main:
            state.bad_records = tracker_records(tracker)
            save_trainer_state(state, tmp)
            dump_config(config, tmp / CONFIG_FILE)
            final = finalize_checkpoint(tmp)
            prune_checkpoints(out, train_cfg.keep_last)
        accelerator.wait_for_everyone()
        return final

    # ---- the loop
    interrupted = False
    last_saved: Path | None = resume_from
    last_metrics: dict[str, float] = {}
    window: dict[str, float] = {"loss": 0.0, "lm_loss": 0.0, "align_loss": 0.0}
    window_steps, window_samples, window_start = 0, 0, time.perf_counter()
    unwrapped = accelerator.unwrap_model(module)
    trainable = [p for p in unwrapped.parameters() if p.requires_grad]
    progress = make_progress(enabled=main and show_progress)
    with _InterruptFlag() as interrupt, progress:
        task = progress.add_task(
            train_cfg.stage,
            total=total_steps,
            completed=state.step,
            loss="-",
            lm_loss="-",
            align_loss="-",
            lr="-",
            speed="",
        )
        module.train()
        while state.step < total_steps:
            batches = epoch_batches(
                len(dataset), train_cfg.per_device_batch_size, state.epoch, train_cfg.seed, process, processes
            )
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                continue
            loader = DataLoader(
                dataset,
                batch_sampler=batches[state.batch_in_epoch :],
                collate_fn=collator,
                num_workers=data_cfg.num_workers,
                # Its own generator: creating an iterator must not draw from the global RNG, or a
                # resumed run (a new iterator mid-epoch) would see different dropout / Gumbel noise.
                generator=torch.Generator().manual_seed(train_cfg.seed + state.epoch),
            )
            iterator = iter(loader)
            while state.step < total_steps and state.batch_in_epoch < len(batches):
                group = min(train_cfg.grad_accum, len(batches) - state.batch_in_epoch)
                step_losses = {"loss": 0.0, "lm_loss": 0.0, "align_loss": 0.0}
                data_error = None
                for micro in range(group):
                    batch = next(iterator)
                    state.batch_in_epoch += 1
                    for bad in batch["bad_records"]:
                        try:
                            tracker.add(bad["id"], bad["reason"])
                        except DataError as exc:
                            data_error = exc
                        if main or processes > 1:
                            console_print(f"skipped record {bad['id']}: {bad['reason']}")
                    if "input_ids" not in batch:
                        continue
                    batch = {
                        k: (v.to(accelerator.device) if torch.is_tensor(v) else v) for k, v in batch.items()
                    }
                    sync = micro == group - 1
                    context = accelerator.no_sync(module) if not sync and processes > 1 else _nullcontext()
                    with context, accelerator.autocast():
                        losses = module(batch)
                        accelerator.backward(losses["loss"] / group)
                    for key in step_losses:
                        step_losses[key] += float(losses[key].detach()) / group
                    state.samples_seen += len(batch["ids"]) * processes
                    window_samples += len(batch["ids"]) * processes
                grad_norm = None
                if train_cfg.max_grad_norm is not None and trainable:
                    grad_norm = accelerator.clip_grad_norm_(trainable, train_cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                for key in window:
                    window[key] += step_losses[key]
                window_steps += 1

                lr = scheduler.get_last_lr()[0]
                if state.step % config.log.log_every == 0 or state.step == total_steps:
                    averaged = torch.tensor(
                        [window[k] / window_steps for k in ("loss", "lm_loss", "align_loss")]
                    )
                    if processes > 1:
                        averaged = accelerator.reduce(averaged.to(accelerator.device), reduction="mean").cpu()
                    elapsed = time.perf_counter() - window_start
                    last_metrics = {
                        "step": state.step,
                        "epoch": round(state.epoch + state.batch_in_epoch / len(batches), 4),
                        "loss": float(averaged[0]),
                        "lm_loss": float(averaged[1]),
                        "align_loss": float(averaged[2]),
                        "lr": lr,
                        "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "samples_per_second": window_samples / elapsed if elapsed > 0 else None,
                        "seconds_per_step": elapsed / window_steps,
                        "bad_records": tracker_count(tracker),
                    }
                    metrics_log.write(last_metrics)
                    if config.log.report_to != "none":
                        accelerator.log(
                            {k: v for k, v in last_metrics.items() if v is not None}, step=state.step
                        )
                    progress.update(
                        task,
                        loss=f"{last_metrics['loss']:.4f}",
                        lm_loss=f"{last_metrics['lm_loss']:.4f}",
                        align_loss=f"{last_metrics['align_loss']:.4f}",
                        lr=f"{lr:.2e}",
                        speed=f"{elapsed / window_steps:.2f}s/step",
                    )
                    window = dict.fromkeys(window, 0.0)
                    window_steps, window_samples, window_start = 0, 0, time.perf_counter()
                progress.update(task, completed=state.step)

                if validator is not None and (
                    state.step % train_cfg.eval_every == 0 or state.step == total_steps
                ):
                    module.eval()
                    scores = validator.evaluate(state.step)
                    module.train()
                    last_metrics.update({f"val_{k}": v for k, v in scores.items()})
                    metrics_log.write({"step": state.step, **{f"val_{k}": v for k, v in scores.items()}})
                    value = scores[train_cfg.metric_for_best]
                    if state.best_metric is None or value > state.best_metric:
                        state.best_metric, state.best_step = value, state.step
                        validator.save_best(module, state.step, scores)

                info = StepInfo(state.step, total_steps, state.epoch, dict(last_metrics))
                for callback in callbacks:
                    callback(info)
                # Every process must agree on stopping (Ctrl-C, a callback, too many bad records).
                flags = torch.tensor([float(interrupt.requested or info.stop), float(data_error is not None)])
                if processes > 1:
                    flags = accelerator.reduce(flags.to(accelerator.device), reduction="sum").cpu()
                if flags[1] > 0:
                    if data_error is not None:
                        raise data_error
                    raise DataError("another process exceeded data.max_bad_records; see its error above")
                stop = bool(flags[0] > 0)
                if stop:
                    last_saved = save(state.step)
                    interrupted = True
                    break
                if (
                    train_cfg.save_every
                    and state.step % train_cfg.save_every == 0
                    and state.step < total_steps
                ):
                    last_saved = save(state.step)
            if interrupted:
                break
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    if interrupted:
        console_print(
            f"stopped at step {state.step}; checkpoint saved to {last_saved}; continue with --resume"
        )
        accelerator.end_training()
        return TrainResult(
            out,
            state.step,
            total_steps,
            True,
            None,
            last_saved,
            last_metrics,
            best_metric=state.best_metric,
            bad_records=tracker_records(tracker),
        )

    if last_saved is None or last_saved.name != checkpoint_dir_name(state.step):
        last_saved = save(state.step)
    final_dir = out / FINAL_DIR
    export = exportable_module(accelerator, module, config)
    if main:
        _save_final(export, bundle, final_dir, config, last_metrics, state)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    best_dir = out / BEST_DIR if (out / BEST_DIR).is_dir() else None
    return TrainResult(
        out,
        state.step,
        total_steps,
        False,
        final_dir,
        last_saved,
        last_metrics,
        best_dir,
        state.best_metric,
        tracker_records(tracker),
    )


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def tracker_records(tracker: Any) -> list[dict[str, str]]:
    return [{"id": str(i), "reason": str(r)} for i, r in tracker.bad]


def tracker_count(tracker: Any) -> int:
    return tracker.count


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _sharded(accelerator: Any) -> bool:
    return accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")


def exportable_module(accelerator: Any, module: Any, config: TrainConfig) -> Any:
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


def module_from_state_dict(state: dict[str, torch.Tensor], config: TrainConfig) -> Any:
    """A CPU :class:`TrainingModule` (model + alignment) holding the weights of a full state dict."""
    from exgra.models import build_model
    from exgra.training.steps import TrainingModule

    model = build_model(config.model, device="meta").model
    model_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(model_state, assign=True)
    alignment = None
    align_state = {k.removeprefix("alignment."): v for k, v in state.items() if k.startswith("alignment.")}
    if align_state:
        from exgra.alignment import MultiGraphAlignment
        from exgra.alignment.config import AlignmentConfig

        fields = config.alignment.model_dump(include=set(AlignmentConfig.model_fields))
        with torch.device("meta"):
            alignment = MultiGraphAlignment(AlignmentConfig(**fields), model.config.text_config.hidden_size)
        alignment.load_state_dict(align_state, assign=True)
    return TrainingModule(model, alignment)


def save_model_dir(module: Any, bundle: Any, directory: Path) -> None:
    """Write the trained VLM as an HF-native safetensors checkpoint (LoRA merged) via ``ModelBundle.save``,
    plus the alignment module's weights (for continued stage-2 training) beside it."""
    from safetensors.torch import save_file

    tmp = directory.with_name(f".tmp-{directory.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    original = bundle.model
    model = module.model
    if hasattr(model, "merge_and_unload"):
        # Merge the adapters into a copy: training (e.g. after a best-model save) continues on the original.
        model = copy.deepcopy(model).merge_and_unload()
    bundle.model = model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is on screen
    try:
        bundle.save(tmp)
    finally:
        bundle.model = original
        hf_logging.enable_progress_bar()
    if module.alignment is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.alignment.state_dict().items()}
        save_file(tensors, str(tmp / "alignment.safetensors"))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.replace(directory)


def _save_final(
    module: Any,
    bundle: Any,
    final_dir: Path,
    config: TrainConfig,
    metrics: dict[str, Any],
    state: TrainerState,
) -> None:
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
    (final_dir / "training_metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def describe_error(exc: Exception) -> ExgraError:
    """Wrap unexpected failures that are user-caused (e.g. out of memory) in one clear message."""
    if isinstance(exc, torch.OutOfMemoryError):
        return ExgraError(
            "out of memory: lower train.per_device_batch_size (raise train.grad_accum to keep the "
            "global batch), "
            "enable train.gradient_checkpointing, or use an FSDP/DeepSpeed accelerate config"
        )
    return ExgraError(str(exc))
