"""What one ``exgra demo`` run does: the arms, the data fractions, the seeds and the tiny recipes."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator

from exgra.config import Section, validate_config

__all__ = ["ARMS", "ARM_DESCRIPTIONS", "DemoSettings", "demo_settings", "fraction_name"]

# Arm key -> short label. The only difference between the two is the alignment loss in stage 2.
ARMS: dict[str, str] = {"autoregressive": "autoregressive", "exgra": "ExGra-Med"}
ARM_DESCRIPTIONS: dict[str, str] = {
    "autoregressive": "stage 2 with the language-model loss only, LLaVA-Med style",
    "exgra": "stage 2 with the language-model loss plus the multi-graph alignment loss",
}


class DemoSettings(Section):
    """Settings of a demo run; stored in ``<output_dir>/demo.json`` and compared when resuming.

    The defaults are tuned so that one seed takes about a minute on a 2-core CPU with the ``tiny``
    model. ``steps_scale`` multiplies every epoch and step count (tests use a small value).
    """

    model: str = Field("tiny", description="registry entry every arm starts from (random weights)")
    seeds: int = Field(3, ge=1, le=20, description="seeds 0..N-1; each seed runs every arm and fraction")
    fractions: list[float] = Field(
        default_factory=lambda: [0.1, 1.0], description="pre-training data fractions (stages 1 and 2)"
    )
    num_samples: int = Field(400, ge=10, description="VQA questions in the demo dataset (70/15/15 % split)")
    image_size: int = Field(64, ge=16, description="side of the demo images in pixels")
    data_seed: int = Field(0, description="seed of the demo dataset (the same for every run seed)")
    steps_scale: float = Field(1.0, gt=0.0, le=10.0, description="multiplies every epoch and step count")
    max_length: int = Field(256, ge=32, description="tokens per training sequence")
    stage1_epochs: float = Field(2.0, gt=0.0)
    stage1_batch_size: int = Field(8, ge=1)
    stage1_lr: float = Field(1e-3, gt=0.0)
    stage2_epochs: float = Field(2.0, gt=0.0)
    stage2_batch_size: int = Field(8, ge=2, description="the alignment graphs are built over a batch")
    stage2_lr: float = Field(1e-3, gt=0.0)
    alignment_alpha: float = Field(1.0, gt=0.0, description="loss = lm_loss + alpha * align_loss (ExGra arm)")
    finetune_steps: int = Field(100, ge=1)
    finetune_batch_size: int = Field(8, ge=1)
    finetune_lr: float = Field(1e-3, gt=0.0)
    eval_batch_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(10, ge=1, description="demo answers are one to three words")
    scorer: str = Field("legacy", description="exgra score scorer")

    @field_validator("fractions")
    @classmethod
    def _check_fractions(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one data fraction")
        if any(not 0.0 < fraction <= 1.0 for fraction in value):
            raise ValueError("every data fraction must be in (0, 1]")
        if len({fraction_name(f) for f in value}) != len(value):
            raise ValueError("the data fractions must differ")
        return sorted(value)

    @field_validator("scorer")
    @classmethod
    def _check_scorer(cls, value: str) -> str:
        from exgra.eval.scoring import SCORERS

        if value not in SCORERS:
            raise ValueError(f"choose one of {', '.join(SCORERS)}")
        return value

    def epochs(self, stage: str) -> float:
        """Epochs over the (fraction of the) pre-training records: fewer data means fewer steps."""
        return {"stage1": self.stage1_epochs, "stage2": self.stage2_epochs}[stage] * self.steps_scale

    def scaled_finetune_steps(self) -> int:
        return max(1, math.ceil(self.finetune_steps * self.steps_scale))


def fraction_name(fraction: float) -> str:
    """Folder name of a data fraction: 0.1 -> ``10pct``, 0.125 -> ``12.5pct``."""
    return f"{round(fraction * 100, 4):g}pct"


def demo_settings(
    quick: bool = False, seeds: int | None = None, fractions: list[float] | None = None, **advanced: Any
) -> DemoSettings:
    """The settings of ``exgra demo``: three seeds, or one with ``quick``; ``seeds`` wins over both."""
    data: dict[str, Any] = {"seeds": seeds if seeds is not None else (1 if quick else 3)}
    if fractions is not None:
        data["fractions"] = fractions
    data.update({key: value for key, value in advanced.items() if value is not None})
    return validate_config(DemoSettings, data, "demo options")
