"""Gemma 3 (MedGemma): SigLIP tower, an average-pooling projector to ``mm_tokens_per_image`` tokens.

Every image is resized to the tower's square size and becomes the same number of tokens; in the
sequence it is ``\\n\\n<start_of_image>`` + ``mm_tokens_per_image`` x ``<image_soft_token>`` +
``<end_of_image>\\n\\n`` (what ``Gemma3Processor`` writes), and ``token_type_ids`` marks the image tokens,
which attend to each other bidirectionally during training.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil

from exgra.models.families.base import ChatFamily

__all__ = ["Gemma3Family"]

# Gemma's chat format: the model speaks as "model", turns end with <end_of_turn>.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<start_of_image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class Gemma3Family(ChatFamily):
    """``Gemma3ForConditionalGeneration`` (real preset ``medgemma-4b``, the google/medgemma-4b-it layout)."""

    name = "gemma3"
    model_types = ("gemma3",)
    model_class = Gemma3ForConditionalGeneration
    special_tokens = (
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    )
    image_placeholder = "<start_of_image>"
    image_token = "<image_soft_token>"
    end_of_turn = "<end_of_turn>"
    chat_template = GEMMA_CHAT_TEMPLATE
    # QLoRA quantises the language model only (MedGemma's notebook recipe): the SigLIP tower and the
    # projector (it trains in every stage) stay bf16, and so does the LM head.
    quantization_skip_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    system_role = False  # Gemma's own template opens the first user turn with the system text

    named_tokens = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }

    def processor_config(self, bundle: Any) -> dict[str, Any]:
        # Gemma3Processor needs no torchvision: a saved checkpoint loads with the stock AutoProcessor.
        return {
            "processor_class": "Gemma3Processor",
            "image_seq_length": int(bundle.model.config.mm_tokens_per_image),
        }

    def image_token_string(self, bundle: Any, vision: dict[str, torch.Tensor], index: int) -> str:
        count = int(bundle.model.config.mm_tokens_per_image)
        return f"\n\n<start_of_image>{self.image_token * count}<end_of_image>\n\n"

    def tiny_image_processor(self, config: Any) -> Any:
        size = int(config.vision_config.get("image_size", 32))
        return Gemma3ImageProcessorPil(size={"height": size, "width": size}, **config.processor_config)

    def tiny_config(self, config: Any, tokenizer: Any) -> Any:
        ids = tokenizer.convert_tokens_to_ids
        text = dict(config.llm_config)
        text["vocab_size"] = max(int(text.get("vocab_size", 0)), len(tokenizer))
        text.update(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=ids(self.end_of_turn),
        )
        return Gemma3Config(
            text_config=text,
            vision_config=dict(config.vision_config),
            image_token_index=ids(self.image_token),
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            **config.hf_config,
        )

    def model_inputs(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        image_token_id = model.config.image_token_id
        return {"token_type_ids": (batch["input_ids"] == image_token_id).long()}
