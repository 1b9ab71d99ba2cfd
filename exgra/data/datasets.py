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

__all__ = ["SupervisedDataset", "select_fraction"]


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


class SupervisedDataset(Dataset):
    """Conversation records with images, tokenised for the LM loss (and the alignment texts).

    Each item: ``id``, ``input_ids``, ``labels`` (lists of int), ``pixel_values`` [3, H, W] and, when
    ``alignment_texts`` is on, ``response_ids`` (assistant turns of ``conversations``) and
    ``caption_ids`` (assistant turns of ``conversations_long``), REFERENCE §4.3.
    """

    def __init__(
        self,
        records: Sequence[Any],
        image_folder: str | Path,
        tokenizer: Any,
        template: Any,
        image_processor: Callable[[list[Any]], torch.Tensor],
        num_image_tokens: int,
        max_length: int,
        human_turn_masking: str = "full",
        alignment_texts: bool = False,
        use_im_start_end: bool = True,
        tokenization: str = "auto",
    ) -> None:
        self.records = list(records)
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.template = template
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.human_turn_masking = human_turn_masking
        # "auto": the reference's slow-tokenizer ids under the legacy template (what released checkpoints
        # were trained on), per-segment encoding otherwise.
        if tokenization == "auto":
            tokenization = "reference" if getattr(template, "name", "") == "legacy" else "segments"
        self.tokenization = tokenization
        self.alignment_texts = alignment_texts
        self.image_tokens = image_token_string(num_image_tokens, use_start_end=use_im_start_end)
        self.image_token_id = tokenizer.convert_tokens_to_ids("<im_patch>")
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
            pixel_values = self.image_processor([image])[0]
        except Exception as exc:  # any unreadable image is reported with its record id
            return {"bad_record": record.id, "reason": f"image {record.image!r} could not be loaded: {exc}"}
        segments = self.template.training_segments(_as_dicts(record.conversations), self.image_tokens)
        input_ids, labels = tokenize_conversation(
            self.tokenizer, segments, self.max_length, self.human_turn_masking, self.tokenization
        )
        image_positions = sum(1 for token in input_ids if token == self.image_token_id)
        if image_positions != self.num_image_tokens:
            return {
                "bad_record": record.id,
                "reason": f"conversation has {image_positions} image tokens after truncation to "
                f"data.max_length={self.max_length} (expected {self.num_image_tokens}); raise max_length "
                "or put one <image> in the first human turn",
            }
        item: dict[str, Any] = {
            "id": str(record.id),
            "input_ids": input_ids,
            "labels": labels,
            "pixel_values": pixel_values,
        }
        if self.alignment_texts:
            item["response_ids"] = tokenize_text(
                self.tokenizer, alignment_text(record.conversations), self.max_length
            )
            item["caption_ids"] = tokenize_text(
                self.tokenizer, alignment_text(record.conversations_long), self.max_length
            )
        return item
