"""The run config of ``exgra train stage1|stage2`` and ``exgra finetune``.

One :class:`TrainConfig` composes the sections of every area it touches: ``model`` (what to start
from), ``data``, ``alignment`` (the multi-graph loss and how the step feeds it), ``train`` (the
optimisation), ``log``. Stage presets (:data:`STAGE_DEFAULTS`) sit under the YAML file, so a recipe
only states what differs from its stage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from exgra.alignment.config import AlignmentConfig
from exgra.config import Section, merge_dicts
from exgra.errors import ConfigError, ExgraError
from exgra.models.config import ModelConfig

__all__ = [
    "STAGE_DEFAULTS",
    "DataSection",
    "LogSection",
    "LoraSection",
    "TrainAlignmentSection",
    "TrainConfig",
    "TrainSection",
    "load_train_config",
    "resolve_model_section",
    "shipped_recipe",
]


class DataSection(Section):
    """Where the records and images are, and how they become batches."""

    train_json: str | None = Field(None, description="Training records (JSON list).")
    image_folder: str | None = Field(None, description="Folder the records' image paths are relative to.")
    val_json: str | None = Field(None, description="Validation records for model selection (fine-tuning).")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="Seeded subset of the training records.")
    fraction_seed: int = 0
    max_length: int = Field(2048, ge=8, description="Tokens per training sequence (truncated beyond).")
    max_bad_records: int = Field(0, ge=0, description="Unreadable images tolerated before stopping.")
    num_workers: int = Field(0, ge=0)
    human_turn_masking: Literal["full", "reference"] = Field(
        "full",
        description="'full' masks human turns entirely; 'reference' keeps LLaVA-v0's off-by-one "
        "(the first two tokens of every human turn are LM targets).",
    )
    tokenization: Literal["auto", "reference", "segments"] = Field(
        "auto",
        description="'reference' tokenises training strings as the reference's slow LLaMA tokenizer did "
        "(the default under the legacy template); 'segments' encodes each turn on its own.",
    )


class TrainAlignmentSection(AlignmentConfig):
    """The multi-graph alignment module's config plus how the training step uses it."""

    enabled: bool = False
    alpha: float = Field(1.0, ge=0.0, description="loss = lm_loss + alpha * align_loss")
    text_source: Literal["llm_output", "embeddings"] = Field(
        "llm_output", description="Text features from the LLM's last hidden state or the token embeddings."
    )
    pack_text_passes: bool = Field(
        False, description="Run the response and caption text passes as one forward (same maths)."
    )


class LoraSection(Section):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainSection(Section):
    """Optimisation, checkpointing and model selection."""

    stage: Literal["stage1", "stage2", "finetune"] = "stage2"
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    per_device_batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-5, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping; null turns it off.")
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    gradient_checkpointing: bool = False
    seed: int = 42
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N optimizer steps.")
    keep_last: int = Field(2, ge=1)
    eval_every: int | None = Field(None, ge=1, description="Validate every M steps (fine-tuning).")
    eval_batch_size: int = Field(8, ge=1)
    eval_max_new_tokens: int = Field(64, ge=1)
    eval_max_items: int | None = Field(None, ge=1)
    metric_for_best: Literal["average", "open_recall", "closed_accuracy"] = "average"
    find_unused_parameters: bool = False
    lora: LoraSection = Field(default_factory=LoraSection)


class LogSection(Section):
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    log_every: int = Field(1, ge=1)
    project: str = "exgra"
    run_name: str | None = None


class TrainConfig(Section):
    """A complete, validated training run."""

    model: ModelConfig
    data: DataSection = Field(default_factory=DataSection)
    alignment: TrainAlignmentSection = Field(default_factory=TrainAlignmentSection)
    train: TrainSection = Field(default_factory=TrainSection)
    log: LogSection = Field(default_factory=LogSection)
    output_dir: str | None = None

    @field_validator("output_dir")
    @classmethod
    def _no_empty(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _stage_rules(self) -> TrainConfig:
        if self.alignment.enabled and self.train.stage != "stage2":
            raise ValueError(
                "the alignment loss is a stage-2 objective; "
                f"set alignment.enabled=false for {self.train.stage}"
            )
        if self.train.stage == "stage1" and self.train.lora.enabled:
            raise ValueError("stage 1 trains only the projector; LoRA applies to stage2 and finetune")
        return self


# Presets under every recipe: REFERENCE §3.2 values that are specific to a stage.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "stage1": {
        "alignment": {"enabled": False},
        "train": {"stage": "stage1", "lr": 2e-3, "epochs": 1, "per_device_batch_size": 16, "grad_accum": 2},
    },
    "stage2": {
        "alignment": {"enabled": True, "alpha": 1.0},
        "train": {"stage": "stage2", "lr": 2e-5, "epochs": 3, "per_device_batch_size": 16},
    },
    "finetune": {
        "alignment": {"enabled": False},
        "train": {"stage": "finetune", "lr": 2e-5, "epochs": 15, "per_device_batch_size": 32, "seed": 2802},
    },
}


def resolve_model_section(model: dict[str, Any]) -> dict[str, Any]:
    """Fill a ``model`` mapping with its registry entry's preset (unless it loads ``path``)."""
    from exgra.models import get_model_spec

    if model.get("path"):
        return model
    spec = get_model_spec(str(model.get("name", "tiny")))
    return spec.config(**{k: v for k, v in model.items() if k != "name"}).model_dump(mode="json")


RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"


def shipped_recipe(path: str | Path) -> Path:
    """``path`` itself when it exists, else the shipped recipe of that name (``stage1`` ->
    ``exgra/configs/stage1.yaml``), so installed users can run ``--config stage2``."""
    path = Path(path)
    if path.exists() or path.parent != Path("."):
        return path
    candidate = RECIPES_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return candidate if candidate.is_file() else path


def load_train_config(
    stage: str,
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    output_dir: str | Path | None = None,
) -> TrainConfig:
    """Stage preset < YAML file < ``key=value`` overrides, with the model's registry preset filled in.

    A recipe written for another stage is refused (it would silently train the wrong parameters).
    """
    from exgra.config import parse_overrides, read_yaml, validate_config

    if stage not in STAGE_DEFAULTS:
        raise ConfigError(f"unknown stage '{stage}'; choose one of {', '.join(STAGE_DEFAULTS)}")
    data: dict[str, Any] = json.loads(json.dumps(STAGE_DEFAULTS[stage]))
    sources = ["defaults"]
    user: dict[str, Any] = {}
    if path is not None:
        path = shipped_recipe(path)
        user = read_yaml(path)
        sources = [str(path)]
    overrides = list(overrides)
    if overrides:
        user = merge_dicts(user, parse_overrides(overrides))
        sources.append("overrides " + " ".join(overrides))
    wanted = (user.get("train") or {}).get("stage") if isinstance(user.get("train"), dict) else None
    if wanted and wanted != stage:
        command = "exgra finetune" if wanted == "finetune" else f"exgra train {wanted}"
        raise ConfigError(f"{path or 'the config'} is a {wanted} recipe; run it with `{command}`")
    data = merge_dicts(data, user)
    if output_dir is not None:
        data["output_dir"] = str(output_dir)
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("config key 'model' must be a mapping (e.g. model: {name: tiny})")
    try:
        data["model"] = resolve_model_section(model)
    except ExgraError as exc:
        raise ConfigError(f"invalid model section in {' with '.join(sources)}: {exc}") from exc
    return validate_config(TrainConfig, data, " with ".join(sources))
