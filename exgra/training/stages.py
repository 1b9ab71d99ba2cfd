"""What each training stage trains (REFERENCE §1.6).

| stage    | trainable                                   | frozen        | loss                     |
|----------|---------------------------------------------|---------------|--------------------------|
| stage1   | projector                                   | LLM, vision   | LM                       |
| stage2   | LLM (+ embeddings, LM head), projector, GNN | vision tower  | LM + alpha * alignment   |
| finetune | LLM + projector                             | vision tower  | LM                       |

Parameters are grouped by name by the model family
(:meth:`exgra.models.families.ModelFamily.parameter_group`): the vision tower, the projector (LLaVA's
``multi_modal_projector``, Qwen's ``visual.merger``, SmolVLM's
``connector``) and everything else, which is the language model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from exgra.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

Stage = Literal["stage1", "stage2", "finetune"]

__all__ = [
    "STAGES",
    "STAGE_PRESETS",
    "Stage",
    "StagePreset",
    "apply_stage",
    "parameter_group",
    "trainable_groups",
]

_VISION_MARKERS = ("vision_tower",)
_PROJECTOR_MARKERS = ("multi_modal_projector", "mm_projector", "projector")


@dataclass(frozen=True)
class StagePreset:
    """One stage: what it trains, what it reads and the config values under every recipe of it."""

    trains: frozenset[str]  # parameter groups; with LoRA "llm" is trained through its adapters ("lora")
    records: Literal["pretrain", "vqa"]  # which record schema the training JSON holds
    command: str  # the command that runs it
    alignment: dict[str, Any] = field(default_factory=dict)  # preset of the ``alignment`` section
    train: dict[str, Any] = field(default_factory=dict)  # preset of the ``train`` section (REFERENCE §3.2)


# The one table of stages. ``alignment.enabled`` is the stage-2 objective; the train presets are the
# reference's per-stage values.
STAGE_PRESETS: dict[str, StagePreset] = {
    "stage1": StagePreset(
        trains=frozenset({"projector"}),
        records="pretrain",
        command="exgra train stage1",
        alignment={"enabled": False},
        train={"lr": 2e-3, "epochs": 1, "per_device_batch_size": 16, "grad_accum": 2},
    ),
    "stage2": StagePreset(
        trains=frozenset({"projector", "llm"}),
        records="pretrain",
        command="exgra train stage2",
        alignment={"enabled": True, "alpha": 1.0},
        train={"lr": 2e-5, "epochs": 3, "per_device_batch_size": 16},
    ),
    "finetune": StagePreset(
        trains=frozenset({"projector", "llm"}),
        records="vqa",
        command="exgra finetune",
        alignment={"enabled": False},
        train={"lr": 2e-5, "epochs": 15, "per_device_batch_size": 32, "seed": 2802},
    ),
}
STAGES: tuple[str, ...] = tuple(STAGE_PRESETS)


def stage_preset(stage: str) -> StagePreset:
    if stage not in STAGE_PRESETS:
        raise ConfigError(f"unknown training stage '{stage}'; choose one of {', '.join(STAGES)}")
    return STAGE_PRESETS[stage]


def parameter_group(name: str) -> str:
    """``"vision"``, ``"projector"``, ``"lora"`` or ``"llm"`` for a parameter name of the VLM."""
    if "lora_" in name:
        return "lora"
    if any(marker in name for marker in _VISION_MARKERS):
        return "vision"
    if any(marker in name for marker in _PROJECTOR_MARKERS):
        return "projector"
    return "llm"


def trainable_groups(stage: str, lora: bool = False) -> set[str]:
    """The parameter groups a stage trains; with LoRA the LLM is trained through its adapters only."""
    groups = set(stage_preset(stage).trains)
    if lora and "llm" in groups:
        groups = (groups - {"llm"}) | {"lora"}
    return groups


def apply_stage(
    model: nn.Module, stage: str, lora: bool = False, group_of: Callable[[str], str] | None = None
) -> dict[str, int]:
    """Set ``requires_grad`` on every parameter of ``model`` for ``stage``.

    ``group_of`` names a parameter's group (the model family's ``parameter_group``; default: LLaVA names).

    Returns the number of trainable and frozen parameters. Raises :class:`ConfigError` when the
    stage would train nothing (e.g. a model without a projector).
    """
    groups = trainable_groups(stage, lora)
    trainable = frozen = 0
    for name, parameter in model.named_parameters():
        train = (group_of or parameter_group)(name) in groups
        parameter.requires_grad_(train)
        if train:
            trainable += parameter.numel()
        else:
            frozen += parameter.numel()
    if trainable == 0:
        raise ConfigError(
            f"stage '{stage}' found no trainable parameters in the model (groups {sorted(groups)})"
        )
    return {"trainable": trainable, "frozen": frozen}
