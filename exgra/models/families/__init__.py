"""Model families: one adapter per VLM family, the only code that knows a family's internals.

Adding a family = one module with a :class:`~exgra.models.families.base.ModelFamily` subclass and one
line in :data:`_FAMILIES` (plus its ``tiny-*`` registry entry and its tiny test).
"""

from __future__ import annotations

from typing import Any

from exgra.errors import ConfigError, ExgraError
from exgra.models.families.base import ChatFamily, ModelFamily
from exgra.models.families.gemma3 import Gemma3Family
from exgra.models.families.llava import LlavaFamily
from exgra.models.families.qwen import Qwen2_5_VLFamily, Qwen3VLFamily
from exgra.models.families.smolvlm import SmolVLMFamily

__all__ = ["ChatFamily", "ModelFamily", "family_for_model_type", "family_of", "get_family", "list_families"]

_FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        LlavaFamily(),
        Qwen2_5_VLFamily(),
        Qwen3VLFamily(),
        Gemma3Family(),
        SmolVLMFamily(),
    )
}


def list_families() -> list[ModelFamily]:
    return list(_FAMILIES.values())


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; a :class:`ConfigError` naming the valid ones otherwise."""
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family '{name}'; families: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_for_model_type(model_type: str, where: str = "checkpoint") -> ModelFamily:
    """The family that loads transformers ``model_type``."""
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    types = ", ".join(t for f in _FAMILIES.values() for t in f.model_types)
    raise ExgraError(
        f"{where} holds a '{model_type}' model; exgra loads {types} "
        "(convert legacy LLaVA-Med checkpoints with `exgra convert`)"
    )


def family_of(bundle_or_config: Any) -> ModelFamily:
    """The family of a :class:`~exgra.models.ModelBundle` or a ``ModelConfig``."""
    config = getattr(bundle_or_config, "config", bundle_or_config)
    return get_family(getattr(config, "family", "llava"))
