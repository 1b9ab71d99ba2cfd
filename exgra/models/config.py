"""The ``model`` config section: which architecture to build, where its weights come from, how it runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from exgra.config import Section

__all__ = ["ModelConfig"]


class ModelConfig(Section):
    """Everything needed to build or load a vision-language model.

    A registry entry (:func:`exgra.models.list_models`) is a preset of these fields; ``key=value``
    overrides change any of them. ``path`` loads a complete saved/converted checkpoint; otherwise the
    model is assembled from ``llm`` and ``vision_tower`` weights, or initialised randomly from
    ``llm_config`` / ``vision_config`` when those are unset (the tiny entries).
    """

    name: str = Field("tiny", description="registry entry this config started from")
    path: str | None = Field(None, description="directory of a saved or converted exgra checkpoint")
    llm: str | None = Field(None, description="LLaMA-family weights for a fresh build: local dir or hub name")
    tokenizer: str | None = Field(None, description="tokenizer source; default: `llm`, else the built-in one")
    vision_tower: str | None = Field(None, description="CLIP vision weights (dir or hub name); None = random")
    vision_type: Literal["clip"] = Field(
        "clip", description="tower family; only CLIP (BiomedCLIP was removed, see docs/models.md)"
    )
    llm_config: dict[str, Any] = Field(default_factory=dict, description="LlamaConfig fields (random init)")
    vision_config: dict[str, Any] = Field(default_factory=dict, description="CLIPVisionConfig fields")
    vision_select_layer: int = Field(-2, description="hidden-state index of the tower fed to the projector")
    dense_connector: Literal["none", "dci", "sci"] = "none"
    projector_type: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    text_pooling: Literal["mean", "masked_mean"] = Field(
        "mean",
        description="pooling of text features for alignment; 'mean' includes padding like the reference",
    )
    template: Literal["legacy", "chat", "mistral_instruct"] = "legacy"
    image_conversion: Literal["auto", "reference", "exgra"] = Field(
        "auto",
        description="non-RGB images: 'reference' drops alpha and clips 16-bit like the reference's "
        "processor, 'exgra' composites alpha on black and rescales 16-bit; auto = reference under the "
        "legacy/mistral_instruct templates, exgra otherwise",
    )
    image_aspect_ratio: Literal["square", "pad"] = Field(
        "square", description="'pad' pads images to a square with the mean colour first (LLaVA-1.5)"
    )
    use_im_start_end: bool = Field(True, description="wrap image patch tokens in <im_start> ... <im_end>")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    padding_side: Literal["left", "right"] = Field(
        "left", description="tokenizer padding side; left is required for batched generation"
    )
    model_max_length: int = Field(2048, gt=0)
