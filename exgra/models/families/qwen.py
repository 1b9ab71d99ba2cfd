"""Qwen2.5-VL and Qwen3-VL: dynamic-resolution images, one ``<|image_pad|>`` per merged patch group.

An image of ``H x W`` pixels becomes a ``t x h x w`` grid of patches (``image_grid_thw``; ``h * w``
grows with the image, within the processor's ``min_pixels`` / ``max_pixels``), and the vision merger
turns each ``merge_size x merge_size`` block into one language-model token, so image ``i`` takes
``prod(grid_thw[i]) / merge_size**2`` tokens. ``pixel_values`` is the flat ``[patches, C * t * p * p]``
list of every image's patches, concatenated in batch order.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from exgra.models.families.base import ChatFamily

__all__ = ["Qwen2_5_VLFamily", "Qwen3VLFamily"]

# Qwen's chat format (the released template, without tools and video).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class _QwenFamily(ChatFamily):
    special_tokens = (
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    )
    image_placeholder = "<|image_pad|>"
    image_token = "<|image_pad|>"
    end_of_turn = "<|im_end|>"
    chat_template = QWEN_CHAT_TEMPLATE
    # visual.merger (and Qwen3's deepstack mergers) put the image tokens into the sequence: the projector.
    vision_markers = ("visual.",)
    projector_markers = ("visual.merger", "visual.deepstack_merger_list")
    # QLoRA quantises the language model only: ``model.visual`` holds the tower and the mergers (the
    # projector, trained in every stage), and the LM head stays bf16 as in transformers' default.
    quantization_skip_modules = ("model.visual", "lm_head")
    patch_size = 14

    def vision_keys(self) -> tuple[str, ...]:
        return ("pixel_values", "image_grid_thw")

    def image_count(self, vision: dict[str, torch.Tensor]) -> int:
        return len(vision["image_grid_thw"])

    def collate_vision(self, items: Any) -> dict[str, torch.Tensor]:
        return {key: torch.cat([item[key] for item in items]) for key in self.vision_keys()}

    def select_images(self, vision: dict[str, torch.Tensor], indices: Any) -> dict[str, torch.Tensor]:
        # pixel_values is every image's patches back to back: cut it by each image's patch count.
        grids = vision["image_grid_thw"]
        patches = list(vision["pixel_values"].split(grids.prod(dim=1).tolist()))
        return {
            "pixel_values": torch.cat([patches[i] for i in indices]),
            "image_grid_thw": grids[torch.tensor(list(indices), dtype=torch.long)],
        }

    def image_token_string(self, bundle: Any, vision: dict[str, torch.Tensor], index: int) -> str:
        merge = bundle.model.config.vision_config.spatial_merge_size
        count = int(vision["image_grid_thw"][index].prod()) // (merge * merge)
        return self.image_token * count

    def tiny_image_processor(self, config: Any) -> Any:
        merge = int(config.vision_config.get("spatial_merge_size", 2))
        patch = int(config.vision_config.get("patch_size", self.patch_size))
        side = patch * merge
        settings = {
            "min_pixels": side * side * 4,
            "max_pixels": side * side * 16,
            "patch_size": patch,
            "merge_size": merge,
            "temporal_patch_size": int(config.vision_config.get("temporal_patch_size", 2)),
            **config.processor_config,
        }
        return Qwen2VLImageProcessorPil(**settings)

    def _token_ids(self, tokenizer: Any) -> dict[str, int]:
        ids = tokenizer.convert_tokens_to_ids
        return {
            "image_token_id": ids("<|image_pad|>"),
            "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"),
            "vision_end_token_id": ids("<|vision_end|>"),
        }

    def _text_config(self, config: Any, tokenizer: Any) -> dict[str, Any]:
        fields = dict(config.llm_config)
        fields["vocab_size"] = max(int(fields.get("vocab_size", 0)), len(tokenizer))
        fields.update(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids(self.end_of_turn),
        )
        return fields


class Qwen2_5_VLFamily(_QwenFamily):
    """``Qwen2_5_VLForConditionalGeneration`` (real preset ``qwen2.5-vl-7b``)."""

    name = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    model_class = Qwen2_5_VLForConditionalGeneration

    def tiny_config(self, config: Any, tokenizer: Any) -> Any:
        return Qwen2_5_VLConfig(
            text_config=self._text_config(config, tokenizer),
            vision_config=dict(config.vision_config),
            **self._token_ids(tokenizer),
            **config.hf_config,
        )


class Qwen3VLFamily(_QwenFamily):
    """``Qwen3VLForConditionalGeneration`` (real preset ``qwen3-vl-8b``): 16-px patches, deepstack mergers."""

    name = "qwen3-vl"
    model_types = ("qwen3_vl",)
    model_class = Qwen3VLForConditionalGeneration
    patch_size = 16

    def tiny_config(self, config: Any, tokenizer: Any) -> Any:
        return Qwen3VLConfig(
            text_config=self._text_config(config, tokenizer),
            vision_config=dict(config.vision_config),
            **self._token_ids(tokenizer),
            **config.hf_config,
        )

    def tiny_image_processor(self, config: Any) -> Any:
        processor = super().tiny_image_processor(config)
        # Qwen3-VL normalises with mean = std = 0.5 (its released preprocessor config).
        processor.image_mean, processor.image_std = [0.5] * 3, [0.5] * 3
        return processor

    def model_inputs(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        # M-RoPE needs to know which positions are image tokens (the processor's mm_token_type_ids).
        image_token_id = model.config.image_token_id
        return {"mm_token_type_ids": (batch["input_ids"] == image_token_id).long()}
