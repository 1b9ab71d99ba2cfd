"""SmolVLM (Idefics3 architecture): SigLIP tower, pixel-shuffle connector, images split into tiles.

An image is cut into up to ``rows x cols`` tiles plus a downscaled global view (``pixel_values``
``[B, tiles, 3, S, S]``, zero-padded tiles dropped by the model; ``pixel_attention_mask`` marks real
pixels), and every tile becomes ``image_seq_len`` tokens, so the token count varies with the image's
shape. The prompt string of an image (``<fake_token_around_image><row_1_col_1><image>...``) is the one
``SmolVLMProcessor`` writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from exgra.models.families.base import ChatFamily, _unwrap

__all__ = ["SmolVLMFamily"]

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_GRID_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))


class SmolVLMFamily(ChatFamily):
    """``SmolVLMForConditionalGeneration`` (real preset ``smolvlm-256m``: SmolVLM-256M-Instruct)."""

    name = "smolvlm"
    model_types = ("smolvlm",)
    model_class = SmolVLMForConditionalGeneration
    special_tokens = (
        "<|im_start|>",
        "<end_of_utterance>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
        *_GRID_TOKENS,
    )
    image_placeholder = "<image>"
    image_token = "<image>"
    end_of_turn = "<end_of_utterance>"
    chat_template = SMOLVLM_CHAT_TEMPLATE
    vision_markers = ("vision_model",)
    projector_markers = ("connector",)
    language_model_pattern = "text_model"
    # QLoRA quantises the language model only: the tower and the connector (the projector, trained in
    # every stage) stay bf16, and so does the LM head.
    quantization_skip_modules = ("model.vision_model", "model.connector", "lm_head")

    def language_model(self, model: Any) -> Any:
        return _unwrap(model).model.text_model

    def vision_keys(self) -> tuple[str, ...]:
        return ("pixel_values", "pixel_attention_mask")

    def preprocess_images(self, bundle: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        from exgra.models.image_processor import to_rgb

        processed = bundle.image_processor(
            [[to_rgb(image)] for image in images], return_tensors="pt", return_row_col_info=True
        )
        return {
            "pixel_values": processed["pixel_values"],
            "pixel_attention_mask": processed["pixel_attention_mask"],
            # Tile grid of each image: its prompt string depends on it.
            "image_rows": torch.tensor([rows[0] for rows in processed["rows"]]),
            "image_cols": torch.tensor([cols[0] for cols in processed["cols"]]),
        }

    def image_count(self, vision: dict[str, torch.Tensor]) -> int:
        return len(vision["image_rows"])

    def collate_vision(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tiles = max(item["pixel_values"].shape[1] for item in items)

        def pad(tensor: torch.Tensor) -> torch.Tensor:
            # Zero tiles are padding: the model drops them (as SmolVLMProcessor pads a batch).
            extra = tiles - tensor.shape[1]
            return (
                torch.cat([tensor, tensor.new_zeros((1, extra, *tensor.shape[2:]))], dim=1)
                if extra
                else tensor
            )

        return {
            "pixel_values": torch.cat([pad(item["pixel_values"]) for item in items]),
            "pixel_attention_mask": torch.cat([pad(item["pixel_attention_mask"]) for item in items]),
            "image_rows": torch.cat([item["image_rows"] for item in items]),
            "image_cols": torch.cat([item["image_cols"] for item in items]),
        }

    def image_token_string(self, bundle: Any, vision: dict[str, torch.Tensor], index: int) -> str:
        config = bundle.model.config
        vision_config = config.vision_config
        seq_len = (vision_config.image_size // vision_config.patch_size) ** 2 // (config.scale_factor**2)
        return get_image_prompt_string(
            int(vision["image_rows"][index]),
            int(vision["image_cols"][index]),
            seq_len,
            "<fake_token_around_image>",
            self.image_token,
            "<global-img>",
        )

    def tiny_image_processor(self, config: Any) -> Any:
        size = int(config.vision_config.get("image_size", 32))
        settings = {
            "do_image_splitting": True,
            "size": {"longest_edge": 2 * size},
            "max_image_size": {"longest_edge": size},
            **config.processor_config,
        }
        return SmolVLMImageProcessorPil(**settings)

    def tiny_config(self, config: Any, tokenizer: Any) -> Any:
        text = dict(config.llm_config)
        text["vocab_size"] = max(int(text.get("vocab_size", 0)), len(tokenizer))
        text.update(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids(self.end_of_turn),
        )
        return SmolVLMConfig(
            text_config=text,
            vision_config=dict(config.vision_config),
            image_token_id=tokenizer.convert_tokens_to_ids(self.image_token),
            pad_token_id=tokenizer.pad_token_id,
            **config.hf_config,
        )
