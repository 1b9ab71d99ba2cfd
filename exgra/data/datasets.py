"""Training datasets: validated records -> tokenised, masked items with pixel values.

Records are validated when they are loaded (:mod:`exgra.data.records`); an image that fails at load
time is not replaced by another sample (the reference's ``random.choice``): the item comes back as
``{"bad_record": id, "reason": ...}``, the collator drops it from the batch and the training loop
counts it in a :class:`~exgra.data.records.BadRecordTracker`, which stops the run once
``data.max_bad_records`` is exceeded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from exgra.data.collate import tokenize_conversation, tokenize_text
from exgra.data.records import alignment_text, load_image
from exgra.data.templates import image_token_string
from exgra.errors import DataError
from exgra.vocabulary import IMAGE_PATCH_TOKEN

__all__ = ["SupervisedDataset", "TemplateEncoder", "select_fraction"]


def select_fraction(count: int, fraction: float, seed: int) -> list[int]:
    """A seeded, deterministic subset of ``range(count)`` of size ``round(count * fraction)`` (at least 1),
    in the original order, for the 10 % / 40 % data-efficiency runs."""
    if fraction >= 1.0:
        return list(range(count))
    size = max(1, round(count * fraction))
    return sorted(random.Random(seed).sample(range(count), size))


def _as_dicts(conversations: Sequence[Any]) -> list[dict[str, Any]]:
    """Turns as ``{"from", "value"}`` mappings (records' ``Turn`` objects name the role ``speaker``)."""
    return [
        turn.model_dump(by_alias=True) if hasattr(turn, "model_dump") else dict(turn)
        for turn in conversations
    ]


class TemplateEncoder:
    """``(image, conversations) -> item`` with an exgra conversation template (the LLaVA family).

    The image becomes ``pixel_values [3, H, W]``; ``<image>`` in the text becomes the model's
    ``num_image_tokens`` image tokens. Raises ``ValueError`` when truncation cuts image tokens off.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: Any,
        image_processor: Callable[[list[Any]], torch.Tensor],
        num_image_tokens: int,
        max_length: int,
        human_turn_masking: str = "full",
        use_im_start_end: bool = True,
        tokenization: str = "auto",
        image_token: str = IMAGE_PATCH_TOKEN,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        # "auto": the reference's slow-tokenizer ids under the legacy template (what released checkpoints
        # were trained on), per-segment encoding otherwise.
        if tokenization == "auto":
            tokenization = "reference" if getattr(template, "name", "") == "legacy" else "segments"
        self.tokenization = tokenization
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.human_turn_masking = human_turn_masking
        self.image_tokens = image_token_string(num_image_tokens, use_im_start_end, image_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def __call__(self, image: Any, conversations: Sequence[Any]) -> dict[str, Any]:
        pixel_values = self.image_processor([image])[0]
        segments = self.template.training_segments(_as_dicts(conversations), self.image_tokens)
        input_ids, labels = tokenize_conversation(
            self.tokenizer, segments, self.max_length, self.human_turn_masking, self.tokenization
        )
        image_positions = sum(1 for token in input_ids if token == self.image_token_id)
        if image_positions != self.num_image_tokens:
            raise ValueError(
                f"conversation has {image_positions} image tokens after truncation to "
                f"data.max_length={self.max_length} (expected {self.num_image_tokens}); raise max_length "
                "or put one <image> in the first human turn"
            )
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values}


class SupervisedDataset(Dataset):
    """Conversation records with images, tokenised for the LM loss (and the alignment texts).

    Each item: ``id``, ``input_ids``, ``labels`` (lists of int), the vision tensors of the model's
    family (``pixel_values`` [3, H, W] for LLaVA) and, when ``alignment_texts`` is on, ``response_ids``
    (assistant turns of ``conversations``) and ``caption_ids`` (assistant turns of ``conversations_long``),
    REFERENCE §4.3. ``encoder`` (a family's :meth:`~exgra.models.families.ModelFamily.sample_encoder`)
    replaces the template encoding built from the other arguments.
    """

    def __init__(
        self,
        records: Sequence[Any],
        image_folder: str | Path,
        tokenizer: Any,
        template: Any,
        image_processor: Callable[[list[Any]], torch.Tensor] | None,
        num_image_tokens: int,
        max_length: int,
        human_turn_masking: str = "full",
        alignment_texts: bool = False,
        use_im_start_end: bool = True,
        encoder: Callable[[Any, Sequence[Any]], dict[str, Any]] | None = None,
        tokenization: str = "auto",
    ) -> None:
        self.records = list(records)
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.alignment_texts = alignment_texts
        self.encoder = encoder or TemplateEncoder(
            tokenizer,
            template,
            image_processor,
            num_image_tokens,
            max_length,
            human_turn_masking,
            use_im_start_end,
            tokenization,
        )
        if alignment_texts:
            missing = [str(r.id) for r in self.records if not getattr(r, "conversations_long", None)]
            if missing:
                raise DataError(
                    f"the alignment loss needs conversations_long (extended captions) in every record; "
                    f"{len(missing)} records lack it, e.g. id {missing[0]}"
                )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            image = load_image(self.image_folder, record.image, conversion=None)
        except Exception as exc:  # any unreadable image is reported with its record id
            return {"bad_record": record.id, "reason": f"image {record.image!r} could not be loaded: {exc}"}
        try:
            encoded = self.encoder(image, record.conversations)
        except ValueError as exc:  # the encoder's own reason (e.g. image tokens cut off)
            return {"bad_record": record.id, "reason": str(exc)}
        except Exception as exc:  # the image processor failed on this image
            return {"bad_record": record.id, "reason": f"image {record.image!r} could not be loaded: {exc}"}
        item: dict[str, Any] = {"id": str(record.id), **encoded}
        if self.alignment_texts:
            item["response_ids"] = tokenize_text(
                self.tokenizer, alignment_text(record.conversations), self.max_length
            )
            item["caption_ids"] = tokenize_text(
                self.tokenizer, alignment_text(record.conversations_long), self.max_length
            )
        return item
