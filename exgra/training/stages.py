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

from collections.abc import Callable, Iterable
from typing import Literal

from torch import nn

from exgra.errors import ConfigError

Stage = Literal["stage1", "stage2", "finetune"]
STAGES: tuple[str, ...] = ("stage1", "stage2", "finetune")

__all__ = ["STAGES", "Stage", "apply_stage", "parameter_group", "trainable_groups"]

_VISION_MARKERS = ("vision_tower",)
_PROJECTOR_MARKERS = ("multi_modal_projector", "mm_projector", "projector")


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
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage '{stage}'; choose one of {', '.join(STAGES)}")
    if stage == "stage1":
        return {"projector"}
    llm = {"lora"} if lora else {"llm"}
    return {"projector", *llm}


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


def named_trainable(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    """The parameters that will receive gradient, with their names."""
    return ((name, p) for name, p in model.named_parameters() if p.requires_grad)
