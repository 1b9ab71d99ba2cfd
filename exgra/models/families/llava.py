"""LLaVA: a LLaMA or Mistral language model, a CLIP or SigLIP tower, a projector, fixed image tokens.

The model is :class:`~exgra.models.modeling.ExgraLlavaForConditionalGeneration` (transformers' LLaVA
plus ExGra-Med's dense connector); it is built and loaded by :mod:`exgra.models.registry`. Samples use
exgra's conversation templates (``legacy`` / ``chat``) with ``<im_start>`` + N x ``<im_patch>`` +
``<im_end>`` for the image, and the image features are spliced in through ``inputs_embeds``, so the
same features feed the LM and the alignment loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from exgra.models.families.base import ModelFamily, SampleEncoder, _unwrap

__all__ = ["LlavaFamily"]


class LlavaFamily(ModelFamily):
    """``llava`` / ``exgra_llava`` checkpoints (``tiny``, ``tiny-dci``, ``tiny-llava-siglip``, 7B presets)."""

    name = "llava"
    model_types = ("llava", "exgra_llava")
    vision_markers = ("vision_tower",)
    projector_markers = ("multi_modal_projector", "mm_projector", "projector")
    # QLoRA quantises the language model only: the projector trains in every stage (4-bit weights cannot),
    # and the small frozen tower keeps its bf16 features (LLaVA's own QLoRA recipe skips the projector too).
    quantization_skip_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")

    def parameter_group(self, name: str) -> str:
        # Vision first: a tower's own "projection" layers belong to the tower.
        if "lora_" in name:
            return "lora"
        if any(marker in name for marker in self.vision_markers):
            return "vision"
        if any(marker in name for marker in self.projector_markers):
            return "projector"
        return "llm"

    def build(self, config: Any, device: str | None = None) -> Any:
        from exgra.models.registry import build_llava

        if config.quantization != "none" and device != "meta":
            from exgra.errors import ConfigError
            from exgra.models.families.base import quantization_kwargs

            quantization_kwargs(config)  # CUDA / bitsandbytes first, then what is missing here
            raise ConfigError(
                "model.quantization=4bit (QLoRA) loads a complete LLaVA checkpoint: set model.path=<a "
                "llava-hf folder or an `exgra convert` output> instead of assembling it from model.llm"
            )
        return build_llava(config, device)

    def load(self, path: Path, config: Any) -> Any:
        from exgra.models.registry import load_llava

        return load_llava(path, config)

    def save(self, bundle: Any, directory: Path) -> None:
        from exgra.models.registry import save_llava

        save_llava(bundle, directory)

    # ---- samples
    def sample_encoder(
        self,
        bundle: Any,
        max_length: int,
        human_turn_masking: str = "full",
        use_im_start_end: bool = True,
        tokenization: str = "auto",
    ) -> SampleEncoder:
        from exgra.data.datasets import TemplateEncoder

        return TemplateEncoder(
            bundle.tokenizer,
            bundle.conversation_template,
            bundle.image_processor,
            bundle.num_image_tokens,
            max_length,
            human_turn_masking,
            use_im_start_end,
            tokenization,
            bundle.image_patch_token,
        )

    def collate_vision(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([item["pixel_values"] for item in items])}

    # ---- features
    def image_token_features(self, model: Any, vision: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return list(_unwrap(model).encode_images(vision["pixel_values"]))

    def lm_forward(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        base = _unwrap(model)
        image_features = base.encode_images(batch["pixel_values"])  # [B, N, D], computed once
        inputs_embeds = base.embed_inputs(batch["input_ids"], image_features)  # [B, L, D]
        output = model(
            inputs_embeds=inputs_embeds,
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            use_cache=False,
        )
        return output.loss, image_features.mean(1)  # projector output pooled over patches (§2.1)

    # ---- generation
    def _template(self, bundle: Any, template: str | None) -> Any:
        from exgra.data.templates import get_template

        return get_template(template or bundle.template)

    def prompt(self, bundle: Any, question: str, template: str | None = None) -> str:
        from exgra.eval.generate import question_text

        return self._template(bundle, template).prompt(question_text(question), bundle.image_tokens)

    def conversation_prompt(
        self,
        bundle: Any,
        turns: Any,
        system: str | None = None,
        images_per_turn: Sequence[int] | None = None,
        template: str | None = None,
    ) -> str:
        return self._template(bundle, template).conversation_prompt(
            turns, bundle.image_tokens, system, images_per_turn
        )

    def preprocess_images(self, bundle: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return {"pixel_values": bundle.image_processor(list(images))}

    def generation_inputs(
        self, bundle: Any, prompts: Sequence[str], vision: dict[str, torch.Tensor] | None
    ) -> dict[str, Any]:
        tokenizer = bundle.tokenizer
        # Restore the side afterwards: a training loop may share this tokenizer and pad on the right.
        previous = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            encoded = tokenizer(list(prompts), return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = previous
        first = next(bundle.model.parameters())
        inputs = {
            "input_ids": encoded["input_ids"].to(first.device),
            "attention_mask": encoded["attention_mask"].to(first.device),
        }
        if vision is not None:
            inputs["pixel_values"] = vision["pixel_values"].to(device=first.device, dtype=first.dtype)
        return inputs

    def stop_strings(self, bundle: Any, template: str | None = None) -> list[str]:
        return [s for s in self._template(bundle, template).stop_strings if s]

    def clean_answer(self, bundle: Any, text: str, template: str | None = None) -> str:
        return self._template(bundle, template).clean_answer(text).strip()
