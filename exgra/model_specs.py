"""The model config section and the model registry's entries, as plain data: no torch, no transformers.

:class:`ModelConfig` (what to build or load) and every :class:`ModelSpec` preset live here so that
``exgra models`` and config validation print and check the registry without importing the deep-learning
stack (seconds of imports). Building and loading stay in :mod:`exgra.models.registry`, which re-exports
these names, as :mod:`exgra.models` does (``from exgra.models import list_models, ModelConfig`` work).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from exgra.config import Section, merge_dicts, validate_config
from exgra.errors import ConfigError

__all__ = ["ModelConfig", "ModelSpec", "format_parameter_count", "get_model_spec", "list_models"]


class ModelConfig(Section):
    """Everything needed to build or load a vision-language model.

    A registry entry (:func:`exgra.models.list_models`) is a preset of these fields; ``key=value``
    overrides change any of them. ``path`` loads a complete saved/converted checkpoint; otherwise the
    model is assembled from ``llm`` and ``vision_tower`` weights, or initialised randomly from
    ``llm_config`` / ``vision_config`` when those are unset (the tiny entries).
    """

    name: str = Field("tiny", description="registry entry this config started from")
    family: str = Field(
        "llava",
        description="model family (exgra.models.families): llava, qwen2.5-vl, qwen3-vl, gemma3, smolvlm",
    )
    path: str | None = Field(None, description="directory of a saved or converted exgra checkpoint")
    llm: str | None = Field(None, description="LLaMA-family weights for a fresh build: local dir or hub name")
    tokenizer: str | None = Field(None, description="tokenizer source; default: `llm`, else the built-in one")
    vision_tower: str | None = Field(None, description="CLIP vision weights (dir or hub name); None = random")
    vision_type: Literal["clip", "siglip"] = Field(
        "clip", description="LLaVA family tower: CLIP or SigLIP (BiomedCLIP was removed, see docs/models.md)"
    )
    llm_type: Literal["llama", "mistral"] = Field(
        "llama", description="LLaVA family: the language model's type"
    )
    llm_config: dict[str, Any] = Field(
        default_factory=dict,
        description="text config fields (LlamaConfig for LLaVA; the family's text config)",
    )
    vision_config: dict[str, Any] = Field(
        default_factory=dict, description="vision config fields (CLIPVisionConfig for LLaVA; the family's)"
    )
    hf_config: dict[str, Any] = Field(
        default_factory=dict, description="other top-level fields of the family's transformers config"
    )
    processor_config: dict[str, Any] = Field(
        default_factory=dict, description="image-processor settings of a random build (e.g. max_pixels)"
    )
    vision_select_layer: int = Field(-2, description="hidden-state index of the tower fed to the projector")
    dense_connector: Literal["none", "dci", "sci"] = "none"
    projector_type: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    text_pooling: Literal["mean", "masked_mean"] = Field(
        "mean",
        description="pooling of text features for alignment; 'mean' includes padding like the reference",
    )
    template: Literal["legacy", "chat", "mistral_instruct", "native"] = Field(
        "legacy",
        description="legacy/chat/mistral_instruct (LLaVA family) or native: the family's own chat template",
    )
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
    quantization: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA base weights (bitsandbytes NF4; CUDA + the gpu extra; LoRA only)"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    padding_side: Literal["left", "right"] = Field(
        "left", description="tokenizer padding side; left is required for batched generation"
    )
    model_max_length: int = Field(2048, gt=0)


def format_parameter_count(count: int) -> str:
    """``2_175_872`` → ``≈2.2 M``, ``51_022_848`` → ``≈51 M``, ``7_062_607_872`` → ``≈7.1 B``."""
    if count >= 1e9:
        return f"≈{count / 1e9:.1f} B"
    millions = count / 1e6
    return f"≈{millions:.1f} M" if millions < 10 else f"≈{millions:.0f} M"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: a named preset of :class:`ModelConfig` fields.

    ``parameter_count`` is the exact number of parameters of the model the entry builds (real presets
    counted on the meta device); tests/models/test_model_specs.py checks it against the built model.
    """

    name: str
    description: str
    parameter_count: int
    offline: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> str:
        """The parameter count as ``exgra models`` shows it (``≈2.2 M``)."""
        return format_parameter_count(self.parameter_count)

    def config(self, **overrides: Any) -> ModelConfig:
        """The entry's :class:`ModelConfig` with ``overrides`` (nested dicts are merged)."""
        data = merge_dicts({"name": self.name, **self.defaults}, overrides)
        return validate_config(ModelConfig, data, f"model '{self.name}'")


_TINY_LLM = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
}
_TINY_VISION = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "projection_dim": 64,
}
_SMALL_LLM = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
}
_SMALL_VISION = {
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "projection_dim": 384,
}
# openai/clip-vit-large-patch14 and the LLaMA-7B of LLaVA-Med v1 (REFERENCE §1.1, §1.2).
_CLIP_L = {
    "image_size": 224,
    "patch_size": 14,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_LLAMA_7B = {
    "vocab_size": 32004,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
}
_SEVEN_B = {
    "vision_tower": "openai/clip-vit-large-patch14",
    "vision_config": _CLIP_L,
    "llm_config": _LLAMA_7B,
    "projector_type": "mlp2x_gelu",
    "template": "legacy",
    "dtype": "bfloat16",
}

# Tiny random members of the other families (a few hundred thousand to a few million parameters, built
# offline from their transformers configs in well under a second); widths are small but every
# family-specific part is there (M-RoPE, window attention, deepstack mergers, the Gemma 3 pooler).
_TINY_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
_TINY_QWEN25 = {
    "family": "qwen2.5-vl",
    "template": "native",
    "llm_config": {
        **_TINY_TEXT,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": 128,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    },
}
_TINY_QWEN3 = {
    "family": "qwen3-vl",
    "template": "native",
    "llm_config": {
        **_TINY_TEXT,
        "head_dim": 32,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 6, 6],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": 128,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "deepstack_visual_indexes": [0],
        "num_position_embeddings": 64,
    },
}
# The SigLIP-style tower of the tiny Gemma 3 and SmolVLM presets (both families take a SigLIP config).
_TINY_SIGLIP_TOWER = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
_TINY_GEMMA3 = {
    "family": "gemma3",
    "template": "native",
    "llm_config": {**_TINY_TEXT, "head_dim": 32, "sliding_window": 64},
    "vision_config": dict(_TINY_SIGLIP_TOWER),
    "hf_config": {"mm_tokens_per_image": 4},
}
_TINY_SMOLVLM = {
    "family": "smolvlm",
    "template": "native",
    "llm_config": dict(_TINY_TEXT),
    "vision_config": dict(_TINY_SIGLIP_TOWER),
    "hf_config": {"scale_factor": 2},
}
_SMOLVLM_256M = {
    "family": "smolvlm",
    "template": "native",
    "dtype": "bfloat16",
    "llm_config": {
        "vocab_size": 49280,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
    },
    "vision_config": {
        "image_size": 512,
        "patch_size": 16,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    "hf_config": {"scale_factor": 4},
}
_TINY_SIGLIP = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
}
_TINY_LLAVA_SIGLIP = {
    "llm_type": "mistral",
    "vision_type": "siglip",
    "template": "chat",
    "llm_config": {**_TINY_LLM, "num_key_value_heads": 2, "sliding_window": None},
    "vision_config": _TINY_SIGLIP,
}
# Real presets: the released architectures, so device="meta" builds them offline; weights come from
# llm=<local dir or hub id> (or path=<a saved exgra checkpoint>).
_QWEN25_VL_7B = {
    "family": "qwen2.5-vl",
    "template": "native",
    "dtype": "bfloat16",
    "llm_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
_QWEN3_VL_8B = {
    "family": "qwen3-vl",
    "template": "native",
    "dtype": "bfloat16",
    "llm_config": {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "out_hidden_size": 4096,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "deepstack_visual_indexes": [8, 16, 24],
        "num_position_embeddings": 2304,
    },
}
_MEDGEMMA_4B = {
    "family": "gemma3",
    "template": "native",
    "dtype": "bfloat16",
    "llm_config": {
        "vocab_size": 262208,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "sliding_window": 1024,
    },
    "vision_config": {
        "image_size": 896,
        "patch_size": 14,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
    },
    "hf_config": {"mm_tokens_per_image": 256},
}
_LLAVA_15_7B = {
    "template": "chat",
    "dtype": "bfloat16",
    "use_im_start_end": False,
    "image_aspect_ratio": "pad",
    "vision_tower": "openai/clip-vit-large-patch14-336",
    "vision_config": {**_CLIP_L, "image_size": 336},
    "llm_config": {**_LLAMA_7B, "vocab_size": 32064, "max_position_embeddings": 4096},
}
# LLaVA-Med v1.5 (microsoft/llava-med-v1.5-mistral-7b): Mistral-7B + CLIP ViT-L/14-336 + mlp2x_gelu.
_CLIP_L_336 = {**_CLIP_L, "image_size": 336}
_MISTRAL_7B = {
    "vocab_size": 32001,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
}
_LLAVA_MED_V15 = {
    "vision_tower": "openai/clip-vit-large-patch14-336",
    "vision_config": _CLIP_L_336,
    "llm_config": _MISTRAL_7B,
    "projector_type": "mlp2x_gelu",
    "template": "mistral_instruct",
    "use_im_start_end": False,
    "image_aspect_ratio": "pad",
    "dtype": "bfloat16",
}

_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "tiny",
            "random tiny LLaMA + CLIP for tests and demos (32 px, 16 image tokens)",
            2_175_872,
            True,
            {"llm_config": _TINY_LLM, "vision_config": _TINY_VISION},
        ),
        ModelSpec(
            "tiny-dci",
            "tiny with the DCI dense connector",
            2_208_640,
            True,
            {"llm_config": _TINY_LLM, "vision_config": _TINY_VISION, "dense_connector": "dci"},
        ),
        ModelSpec(
            "small",
            "random small model for training benchmarks (64 px, 64 image tokens)",
            51_022_848,
            True,
            {"llm_config": _SMALL_LLM, "vision_config": _SMALL_VISION},
        ),
        ModelSpec(
            "llava-med-7b",
            "LLaVA-Med v1: LLaMA-7B + CLIP ViT-L/14 + mlp2x_gelu; path=<converted dir> or llm=<weights>",
            7_062_607_872,
            False,
            dict(_SEVEN_B),
        ),
        ModelSpec(
            "llava-med-v1.5-7b",
            "LLaVA-Med v1.5: Mistral-7B + CLIP ViT-L/14-336 + mlp2x_gelu",
            7_566_227_456,
            False,
            dict(_LLAVA_MED_V15),
        ),
        ModelSpec(
            "exgra-med-7b-dci",
            "ExGra-Med DCI: llava-med-7b with the DCI dense connector (MERGE-Group/exgra-med-dci)",
            7_070_996_480,
            False,
            {**_SEVEN_B, "dense_connector": "dci"},
        ),
        ModelSpec(
            "tiny-qwen2.5-vl",
            "random tiny Qwen2.5-VL (dynamic resolution: 4-16 image tokens per image)",
            871_872,
            True,
            _TINY_QWEN25,
        ),
        ModelSpec(
            "tiny-qwen3-vl",
            "random tiny Qwen3-VL (dynamic resolution, deepstack mergers)",
            981_568,
            True,
            _TINY_QWEN3,
        ),
        ModelSpec(
            "tiny-gemma3",
            "random tiny Gemma 3 / MedGemma layout (SigLIP 32 px, 4 image tokens)",
            577_408,
            True,
            _TINY_GEMMA3,
        ),
        ModelSpec(
            "tiny-smolvlm",
            "random tiny SmolVLM / Idefics3 (images split into tiles: 4 tokens per tile)",
            736_192,
            True,
            _TINY_SMOLVLM,
        ),
        ModelSpec(
            "tiny-llava-siglip",
            "random tiny LLaVA with a Mistral LM and a SigLIP tower (chat template, 16 image tokens)",
            2_078_016,
            True,
            _TINY_LLAVA_SIGLIP,
        ),
        ModelSpec(
            "qwen2.5-vl-7b",
            "Qwen2.5-VL-7B-Instruct: llm=<local dir or Qwen/Qwen2.5-VL-7B-Instruct>",
            8_292_166_656,
            False,
            _QWEN25_VL_7B,
        ),
        ModelSpec(
            "qwen3-vl-8b",
            "Qwen3-VL-8B-Instruct: llm=<local dir or Qwen/Qwen3-VL-8B-Instruct>",
            8_767_123_696,
            False,
            _QWEN3_VL_8B,
        ),
        ModelSpec(
            "medgemma-4b",
            "MedGemma 4B (Gemma 3 + MedSigLIP): llm=<local dir or google/medgemma-4b-it>",
            4_315_317_824,
            False,
            _MEDGEMMA_4B,
        ),
        ModelSpec(
            "smolvlm-256m",
            "SmolVLM-256M-Instruct, laptop-sized: llm=<local dir or HuggingFaceTB/SmolVLM-256M-Instruct>",
            256_484_928,
            False,
            _SMOLVLM_256M,
        ),
        ModelSpec(
            "llava-1.5-7b",
            "LLaVA-1.5-7B (Vicuna-7B + CLIP-L/336, chat): path=<llava-hf layout dir> or llm=<Vicuna>",
            7_063_427_072,
            False,
            _LLAVA_15_7B,
        ),
    )
}


def list_models() -> list[ModelSpec]:
    """All registry entries, in registry order."""
    return list(_REGISTRY.values())


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry ``name``; a :class:`ConfigError` naming the valid entries otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'; registered models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
