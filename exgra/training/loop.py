"""The one training loop behind ``exgra train stage1|stage2`` and ``exgra finetune`` (accelerate).

Three parts, read top to bottom (the shape of litgpt's ``finetune/lora.py`` and nanochat's
``base_train.py``):

- :func:`prepare_run` turns a validated :class:`TrainConfig` into a :class:`Run`: the accelerator,
  the output folder (owned through :mod:`exgra.outputs`), the training module, the data, the
  optimiser and scheduler, and the state restored from the latest checkpoint on ``resume``;
- :func:`fit` is the loop, cut into labelled blocks: micro-steps, optimiser step, logging,
  validation, save. The training module returns a dict of every ``*_loss`` and diagnostic, and the
  loop logs whatever arrives;
- :func:`finish` writes the final model and returns a :class:`TrainResult`.

AdamW, a warmup + cosine (or linear/constant) schedule, gradient accumulation, clipping,
fp32/bf16/fp16, gradient checkpointing, optional LoRA; complete checkpoints every ``save_every``
steps and at the end; ``resume`` continues bit-for-bit from the latest one (seeded epoch shuffling,
saved data position and RNG states); Ctrl-C saves a checkpoint and returns; a non-finite loss or
gradient stops the run (or skips the step); fine-tuning validates every ``eval_every`` steps and
keeps the best model.
"""

from __future__ import annotations

import contextlib
import math
import os
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
    CONFIG_FILE,
    TrainerState,
    checkpoint_dir_name,
    exportable_module,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
    save_final,
)
from exgra.training.config import TrainConfig
from exgra.training.logging import MetricsLog, prepare_tracker_environment, tracker_name
from exgra.training.run_dir import (
    BEST_DIR,
    FINAL_DIR,
    METRICS_FILE,
    OUTPUT_COMMAND,
    RUN_ENTRIES,
    discard_failed_output,
    prepare_output_dir,
)

__all__ = [
    "Run",
    "StepInfo",
    "TrainResult",
    "build_model_bundle",
    "epoch_batches",
    "finish",
    "fit",
    "prepare_output_dir",
    "prepare_run",
    "run_training",
]


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


@dataclass
class Run:
    """Everything :func:`fit` and :func:`finish` work on, built by :func:`prepare_run`."""

    config: TrainConfig
    output_dir: Path
    accelerator: Any
    bundle: Any  # the ModelBundle the run started from (tokenizer, processor, template)
    module: Any  # TrainingModule, prepared by accelerate
    optimizer: Any
    scheduler: Any
    dataset: Any
    collator: Any
    tracker: Any  # BadRecordTracker
    state: TrainerState
    total_steps: int
    metrics_log: MetricsLog
    validator: Any = None
    callbacks: Sequence[Callable[[StepInfo], None]] = ()
    show_progress: bool = True
    created_output: bool = False  # the run created the output folder (removed again if it fails at once)
    last_saved: Path | None = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)


# ------------------------------------------------------------------------------------------- helpers


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


def _apply_lora(model: Any, config: TrainConfig, language_model_pattern: str = "language_model") -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("train.lora.enabled needs peft: pip install 'exgra[lora]'") from exc
    lora = config.train.lora
    # A regex so that only the language model's linear layers get adapters, not the vision tower's.
    targets = rf".*{language_model_pattern}.*\.({'|'.join(lora.target_modules)})"
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


def _check_launch(config: TrainConfig) -> None:
    """Launch settings that cannot work here, named before accelerate fails with a misleading message."""
    if torch.cuda.is_available():
        return
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "false").lower() in ("1", "true"):
            raise ConfigError(
                f"{name} shards the model over accelerators (GPUs) and this machine has none; on a CPU "
                "machine launch with --config_file exgra/configs/accelerate/ddp_cpu.yaml (DDP over gloo) "
                "or run without accelerate launch"
            )


def _create_accelerator(config: TrainConfig, out: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from exgra.distributed import use_cpu_processes

    train_cfg = config.train
    _check_launch(config)
    try:
        accelerator = Accelerator(
            mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[train_cfg.precision],
            log_with=tracker_name(config.log.report_to),
            project_dir=str(out / "logs"),
            step_scheduler_with_optimizer=False,
            # Launched as several processes on a machine without GPUs: accelerate's gloo CPU mode.
            cpu=use_cpu_processes(),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=train_cfg.find_unused_parameters)
            ],
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"train.precision={train_cfg.precision} is not usable here: {exc}") from exc
    sharded = accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")
    if sharded and train_cfg.lora.enabled:
        raise ConfigError("LoRA runs with DDP or one process; use the ddp/single accelerate config for LoRA")
    if accelerator.distributed_type.value == "DEEPSPEED" and train_cfg.grad_accum != 1:
        raise ConfigError(
            "with DeepSpeed set train.grad_accum=1 (DeepSpeed steps the optimizer on every backward); "
            "raise per_device_batch_size or the number of processes instead"
        )
    return accelerator


def _check_alignment_batch(config: TrainConfig, processes: int, say: Callable[[str], None]) -> None:
    """The graphs of the alignment loss are built over a batch: refuse one node, note a clamped k."""
    align_cfg = config.alignment
    if not align_cfg.enabled:
        return
    nodes = config.train.per_device_batch_size
    if align_cfg.graph_scope == "global":
        nodes *= processes
        if nodes < 2:
            raise ConfigError(
                "alignment.graph_scope=global builds graphs over the batch of all processes, which is "
                f"{nodes} node here; a graph over one node cannot be matched: raise "
                "train.per_device_batch_size or the number of processes"
            )
    if align_cfg.k > nodes - 1:
        say(
            f"note: alignment.k={align_cfg.k} is clamped to {nodes - 1}: a graph over a batch of {nodes} "
            f"nodes has at most {nodes - 1} neighbours per node"
        )


def _checked_records(records: list[Any], image_folder: str, tracker: Any) -> list[Any]:
    """The records whose image path exists inside the image folder (checked cheaply: no decoding).

    A missing or escaping image counts as a bad record now, before the first step, instead of when
    its batch comes up (a short run would otherwise never look at it).
    """
    from exgra.data.images import safe_image_path

    folder = Path(image_folder)
    if not folder.is_dir():
        found = "a file" if folder.exists() else "nothing"
        raise DataError(f"data.image_folder {folder} is not a folder (found {found} there)")
    kept = []
    for record in records:
        try:
            path = safe_image_path(folder, record.image)
            if not path.is_file():
                raise DataError(f"image not found: {path} (record image '{record.image}' in folder {folder})")
        except DataError as exc:
            tracker.add(record.id, str(exc))
            continue
        kept.append(record)
    return kept


def tracker_records(tracker: Any) -> list[dict[str, str]]:
    return [{"id": str(i), "reason": str(r)} for i, r in tracker.bad]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


# ------------------------------------------------------------------------------------------ prepare


def prepare_run(
    config: TrainConfig,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    show_progress: bool = True,
) -> Run:
    """Everything a run needs, in the order that makes it reproducible (seed, model, alignment module,
    data, optimiser), with the output folder claimed and the state of the latest checkpoint loaded."""
    from exgra.outputs import claim_folder

    out_text = str(output_dir or config.output_dir or "")
    if not out_text:
        raise ConfigError("no output dir: pass --output-dir or set output_dir in the config")
    out = Path(out_text)
    config.require_data()
    note = prepare_tracker_environment(config.log.report_to)

    # ---- accelerator and output folder
    accelerator = _create_accelerator(config, out)
    main = accelerator.is_main_process
    resume_from: Path | None = None
    created = not out.exists()
    if main:
        resume_from = prepare_output_dir(out, config, resume, overwrite)
        claim_folder(out, OUTPUT_COMMAND, owned=RUN_ENTRIES)
    accelerator.wait_for_everyone()
    if not main:
        resume_from = latest_checkpoint(out) if resume else None
    try:
        run = _build_run(config, out, accelerator, resume_from, note)
    except BaseException:
        if main:
            discard_failed_output(out, created)
        raise
    run.callbacks, run.show_progress, run.created_output = callbacks, show_progress, created
    return run


def _build_run(
    config: TrainConfig, out: Path, accelerator: Any, resume_from: Path | None, note: str | None
) -> Run:
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from exgra.data.collate import TrainingCollator
    from exgra.data.datasets import SupervisedDataset, select_fraction
    from exgra.data.records import BadRecordTracker, load_pretrain_records, load_vqa_records
    from exgra.training.stages import apply_stage, stage_preset
    from exgra.training.steps import TrainingModule

    data_cfg, train_cfg, align_cfg = config.data, config.train, config.alignment
    say = accelerator.print
    main = accelerator.is_main_process
    processes = accelerator.num_processes
    if note:
        say(note)
    _check_alignment_batch(config, processes, say)
    set_seed(train_cfg.seed)

    # ---- model, stage preset, alignment module
    if config.model.quantization != "none" and not train_cfg.lora.enabled:
        raise ConfigError("model.quantization=4bit trains through adapters only: set train.lora.enabled=true")
    bundle = build_model_bundle(config)
    family = bundle.family
    model = bundle.model
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train_cfg.lora.enabled:
        if config.model.quantization != "none":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=train_cfg.gradient_checkpointing
            )
        model = _apply_lora(model, config, family.language_model_pattern)
    counts = apply_stage(model, train_cfg.stage, lora=train_cfg.lora.enabled, group_of=family.parameter_group)
    alignment = None
    if align_cfg.enabled:
        from exgra.alignment import MultiGraphAlignment
        from exgra.alignment.config import AlignmentConfig

        alignment_config = AlignmentConfig(**align_cfg.model_dump(include=set(AlignmentConfig.model_fields)))
        alignment = MultiGraphAlignment(alignment_config, feature_dim=family.hidden_size(bundle.model))
    tokenizer = bundle.tokenizer
    module = TrainingModule(
        model,
        alignment,
        alpha=align_cfg.alpha,
        text_source=align_cfg.text_source,
        text_pooling=config.model.text_pooling,
        pack_text_passes=align_cfg.pack_text_passes,
        pad_token_id=tokenizer.pad_token_id,
        family=family,
    )

    # ---- data: records (every image path checked now), dataset, collator
    tracker = BadRecordTracker(data_cfg.max_bad_records, source=str(data_cfg.train_json))
    if stage_preset(train_cfg.stage).records == "vqa":
        records = load_vqa_records(data_cfg.train_json, tracker=tracker)
    else:
        records = load_pretrain_records(data_cfg.train_json, require_long=align_cfg.enabled, tracker=tracker)
    records = [records[i] for i in select_fraction(len(records), data_cfg.fraction, data_cfg.fraction_seed)]
    records = _checked_records(records, data_cfg.image_folder, tracker)
    if not records:
        raise DataError(f"{data_cfg.train_json} holds no training records")
    dataset = SupervisedDataset(
        records,
        data_cfg.image_folder,
        tokenizer,
        None,  # the family's encoder below replaces template, image processor and image-token count
        None,
        0,
        data_cfg.max_length,
        alignment_texts=alignment is not None,
        encoder=family.sample_encoder(
            bundle,
            data_cfg.max_length,
            data_cfg.human_turn_masking,
            config.model.use_im_start_end,
            tokenization=data_cfg.tokenization,
        ),
    )
    collator = TrainingCollator(tokenizer.pad_token_id, family.collate_vision)
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

    # ---- state: fresh, or the latest checkpoint's
    state = TrainerState()
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = load_trainer_state(resume_from)
        say(f"resumed from {resume_from} (step {state.step})")
        # The records' own validation ran again above; add the image failures seen before the resume.
        known = {record_id for record_id, _ in tracker.bad}
        for bad in state.bad_records:
            if bad["id"] not in known:
                tracker.add(bad["id"], bad["reason"])

    # ---- logs
    metrics_log = MetricsLog(out / METRICS_FILE, enabled=main)
    if main:
        dump_config(config, out / CONFIG_FILE)
        if resume_from is not None:
            # Steps logged after the checkpoint (before a kill) are trained again: log them once.
            metrics_log.truncate_after(state.step)
    if config.log.report_to != "none":
        accelerator.init_trackers(
            config.log.project,
            config=_flat(config.model_dump(mode="json")),
            init_kwargs={"wandb": {"name": config.log.run_name}} if config.log.report_to == "wandb" else {},
        )
    validator = None
    if train_cfg.stage == "finetune" and data_cfg.val_json and train_cfg.eval_every:
        from exgra.training.validation import Validator

        validator = Validator(config, bundle, accelerator, out)
        validator.attach(module)

    say(
        f"{train_cfg.stage}: {len(dataset)} records, {total_steps} steps, "
        f"{counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters, {processes} process(es)"
    )
    return Run(
        config=config,
        output_dir=out,
        accelerator=accelerator,
        bundle=bundle,
        module=module,
        optimizer=optimizer,
        scheduler=scheduler,
        dataset=dataset,
        collator=collator,
        tracker=tracker,
        state=state,
        total_steps=total_steps,
        metrics_log=metrics_log,
        validator=validator,
        last_saved=resume_from,
    )


# ---------------------------------------------------------------------------------------------- fit


class _Window:
    """Running sums of the step values between two log lines (any keys the module returns)."""

    def __init__(self) -> None:
        self.keys: list[str] = []  # every key seen so far, "loss" first: the same on every process
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = self.samples = 0
        self.start = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            if key not in self.keys:
                self.keys.insert(0, key) if key == "loss" else self.keys.append(key)
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def means(self, accelerator: Any) -> dict[str, float]:
        """Window means over the steps (and, with several processes, over the processes)."""
        averaged = torch.tensor([self.sums.get(k, 0.0) / max(1, self.steps) for k in self.keys])
        if accelerator.num_processes > 1:
            averaged = accelerator.reduce(averaged.to(accelerator.device), reduction="mean").cpu()
        return {key: float(value) for key, value in zip(self.keys, averaged, strict=True)}


def _progress_detail(metrics: dict[str, Any]) -> str:
    # Keys with "/" are per-pair details: the metrics log has them, the bar keeps to the summaries.
    shown = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and "/" not in k]
    return " ".join(shown)


def _grad_norm(run: Run, trainable: list[torch.nn.Parameter]) -> float | None:
    """Clip to ``train.max_grad_norm`` (when set) and return the total gradient norm before clipping."""
    max_norm = run.config.train.max_grad_norm
    if not trainable:
        return None
    if max_norm is not None:
        return float(run.accelerator.clip_grad_norm_(trainable, max_norm))
    grads = [p.grad for p in trainable if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def _all_finite(run: Run, loss: float, grad_norm: float | None) -> bool:
    finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
    if run.accelerator.num_processes > 1:  # every process must take the same decision
        flag = torch.tensor([0.0 if finite else 1.0], device=run.accelerator.device)
        finite = float(run.accelerator.reduce(flag, reduction="sum").cpu()[0]) == 0.0
    return finite


def _nonfinite_error(run: Run, values: dict[str, float], grad_norm: float | None) -> ExgraError:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k.endswith("loss"))
    kept = (
        f"the last checkpoint {run.last_saved} is intact" if run.last_saved else "no checkpoint was written"
    )
    return ExgraError(
        f"step {run.state.step + 1}: the loss or gradient is not finite ({shown}, grad_norm={grad_norm}); "
        f"stopped before the optimizer step, nothing broken was saved ({kept}): lower train.lr, check the "
        "data, or set train.on_nonfinite=skip to skip such steps"
    )


def fit(run: Run) -> bool:
    """The training loop; returns True when it stopped early (Ctrl-C or a callback) after saving."""
    from torch.utils.data import DataLoader

    from exgra.progress import make_progress

    config, accelerator, state, module = run.config, run.accelerator, run.state, run.module
    train_cfg, data_cfg = config.train, config.data
    process, processes = accelerator.process_index, accelerator.num_processes
    trainable = [p for p in accelerator.unwrap_model(module).parameters() if p.requires_grad]
    window = _Window()
    progress = make_progress(enabled=run.main and run.show_progress, elapsed=True)
    with _InterruptFlag() as interrupt, progress:
        task = progress.add_task(train_cfg.stage, total=run.total_steps, completed=state.step, detail="")
        module.train()
        while state.step < run.total_steps:
            batches = epoch_batches(
                len(run.dataset),
                train_cfg.per_device_batch_size,
                state.epoch,
                train_cfg.seed,
                process,
                processes,
            )
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                continue
            loader = DataLoader(
                run.dataset,
                batch_sampler=batches[state.batch_in_epoch :],
                collate_fn=run.collator,
                num_workers=data_cfg.num_workers,
                # Its own generator: creating an iterator must not draw from the global RNG, or a
                # resumed run (a new iterator mid-epoch) would see different dropout / Gumbel noise.
                generator=torch.Generator().manual_seed(train_cfg.seed + state.epoch),
            )
            iterator = iter(loader)
            while state.step < run.total_steps and state.batch_in_epoch < len(batches):
                # ---- micro-steps: forward + backward of each micro-batch of one optimizer step
                group = min(train_cfg.grad_accum, len(batches) - state.batch_in_epoch)
                values: dict[str, float] = {}
                data_error = None
                for micro in range(group):
                    batch = next(iterator)
                    state.batch_in_epoch += 1
                    for bad in batch["bad_records"]:
                        try:
                            run.tracker.add(bad["id"], bad["reason"])
                        except DataError as exc:
                            data_error = exc
                        if run.main or processes > 1:
                            accelerator.print(f"skipped record {bad['id']}: {bad['reason']}")
                    if "input_ids" not in batch:
                        continue
                    batch = {
                        k: (v.to(accelerator.device) if torch.is_tensor(v) else v) for k, v in batch.items()
                    }
                    sync = micro == group - 1
                    no_sync = not sync and processes > 1
                    context = accelerator.no_sync(module) if no_sync else contextlib.nullcontext()
                    with context, accelerator.autocast():
                        losses = module(batch)
                        accelerator.backward(losses["loss"] / group)
                    for key, value in losses.items():
                        number = float(value.detach()) if torch.is_tensor(value) else float(value)
                        values[key] = values.get(key, 0.0) + number / group
                    state.samples_seen += len(batch["ids"]) * processes
                    window.samples += len(batch["ids"]) * processes

                # ---- optimizer step (a non-finite loss or gradient stops the run or skips the step)
                grad_norm = _grad_norm(run, trainable)
                if _all_finite(run, values.get("loss", 0.0), grad_norm):
                    run.optimizer.step()
                    window.add(values)
                elif train_cfg.on_nonfinite == "skip":
                    state.skipped_steps += 1
                    accelerator.print(f"step {state.step + 1} skipped: the loss or gradient is not finite")
                else:
                    raise _nonfinite_error(run, values, grad_norm)
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
                state.step += 1

                # ---- logging: whatever the module returned, averaged over the window
                lr = run.scheduler.get_last_lr()[0]
                if state.step % config.log.log_every == 0 or state.step == run.total_steps:
                    elapsed = time.perf_counter() - window.start
                    steps = max(1, window.steps)
                    means = window.means(accelerator)
                    run.last_metrics = {
                        "step": state.step,
                        "epoch": round(state.epoch + state.batch_in_epoch / len(batches), 4),
                        **means,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "samples_per_second": window.samples / elapsed if elapsed > 0 else None,
                        "seconds_per_step": elapsed / steps,
                        "bad_records": run.tracker.count,
                    }
                    if state.skipped_steps:
                        run.last_metrics["skipped_steps"] = state.skipped_steps
                    run.metrics_log.write(run.last_metrics)
                    if config.log.report_to != "none":
                        accelerator.log(
                            {k: v for k, v in run.last_metrics.items() if v is not None}, step=state.step
                        )
                    detail = _progress_detail(means)
                    progress.update(task, detail=f"{detail} lr {lr:.2e} {elapsed / steps:.2f}s/step")
                    window.reset()
                progress.update(task, completed=state.step)

                # ---- validation (fine-tuning): score the validation split, keep the best model
                if run.validator is not None and (
                    state.step % train_cfg.eval_every == 0 or state.step == run.total_steps
                ):
                    _validate(run)

                # ---- stop (Ctrl-C, a callback, too many bad records) and save
                info = StepInfo(state.step, run.total_steps, state.epoch, dict(run.last_metrics))
                for callback in run.callbacks:
                    callback(info)
                # Every process must agree on stopping.
                flags = torch.tensor([float(interrupt.requested or info.stop), float(data_error is not None)])
                if processes > 1:
                    flags = accelerator.reduce(flags.to(accelerator.device), reduction="sum").cpu()
                if flags[1] > 0:
                    if data_error is not None:
                        raise data_error
                    raise DataError("another process exceeded data.max_bad_records; see its error above")
                if flags[0] > 0:
                    _save(run)
                    run.interrupted = True
                    return True
                if (
                    train_cfg.save_every
                    and state.step % train_cfg.save_every == 0
                    and state.step < run.total_steps
                ):
                    _save(run)
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return False


def _validate(run: Run) -> None:
    state = run.state
    run.module.eval()
    scores = run.validator.evaluate(state.step)
    run.module.train()
    run.last_metrics.update({f"val_{k}": v for k, v in scores.items()})
    run.metrics_log.write({"step": state.step, **{f"val_{k}": v for k, v in scores.items()}})
    value = scores[run.config.train.metric_for_best]
    if state.best_metric is None or value > state.best_metric:
        state.best_metric, state.best_step = value, state.step
        run.validator.save_best(run.module, state.step, scores)


def _save(run: Run) -> None:
    run.state.bad_records = tracker_records(run.tracker)
    run.last_saved = save_checkpoint(
        run.accelerator, run.output_dir, run.state, run.config, run.config.train.keep_last
    )


# ------------------------------------------------------------------------------------------- finish


def finish(run: Run) -> TrainResult:
    """Save the final checkpoint and model (unless interrupted), close the trackers, report."""
    accelerator, state, out = run.accelerator, run.state, run.output_dir
    if run.interrupted:
        accelerator.print(
            f"stopped at step {state.step}; checkpoint saved to {run.last_saved}; continue with --resume"
        )
        accelerator.end_training()
        return TrainResult(
            out,
            state.step,
            run.total_steps,
            True,
            None,
            run.last_saved,
            run.last_metrics,
            best_metric=state.best_metric,
            bad_records=tracker_records(run.tracker),
        )
    if run.last_saved is None or run.last_saved.name != checkpoint_dir_name(state.step):
        _save(run)
    final_dir = out / FINAL_DIR
    export = exportable_module(accelerator, run.module, run.config)
    if run.main:
        save_final(export, run.bundle, final_dir, run.config, run.last_metrics, state)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    best_dir = out / BEST_DIR if (out / BEST_DIR).is_dir() else None
    return TrainResult(
        out,
        state.step,
        run.total_steps,
        False,
        final_dir,
        run.last_saved,
        run.last_metrics,
        best_dir,
        state.best_metric,
        tracker_records(run.tracker),
    )


def run_training(
    config: TrainConfig,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    show_progress: bool = True,
) -> TrainResult:
    """Train as ``config`` says; returns where the final model, checkpoints and metrics are.

    ``resume`` continues from the latest checkpoint in ``output_dir``; ``overwrite`` replaces an
    earlier run there. Each callback gets a :class:`StepInfo` after every optimizer step.
    """
    run = prepare_run(config, output_dir, resume, overwrite, callbacks, show_progress)
    try:
        fit(run)
        return finish(run)
    except BaseException:
        if run.main:
            discard_failed_output(run.output_dir, run.created_output)
        raise


def describe_error(exc: Exception) -> ExgraError:
    """Wrap unexpected failures that are user-caused (e.g. out of memory) in one clear message."""
    if isinstance(exc, torch.OutOfMemoryError):
        return ExgraError(
            "out of memory: lower train.per_device_batch_size (raise train.grad_accum to keep the "
            "global batch), "
            "enable train.gradient_checkpointing, or use an FSDP/DeepSpeed accelerate config"
        )
    return ExgraError(str(exc))
