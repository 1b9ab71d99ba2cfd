"""Tokenisation with label masking, alignment texts, and batch collation.

A conversation becomes ``input_ids`` and ``labels`` by tokenising the template's training segments
one by one (REFERENCE §4.2) and concatenating them, so every label lines up with its token whatever
the tokenizer merges across segment boundaries. Non-target segments get label ``-100``.

``human_turn_masking="reference"`` reproduces LLaVA-v0's off-by-one: the first two tokens of every
human turn (every non-target segment after the header) stay LM targets. The default, ``"full"``,
masks human turns entirely.

``tokenization="reference"`` (the default under the ``legacy`` template) tokenises the whole training
string the way the reference's slow LLaMA tokenizer did (:func:`exgra.models.tokenizer.reference_token_spans`)
and assigns each token to the segment its first character lies in; ``"segments"`` encodes every
segment on its own with the tokenizer as loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "TrainingCollator",
    "pad_sequences",
    "tokenize_conversation",
    "tokenize_text",
]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_conversation(
    tokenizer: Any,
    segments: Sequence[tuple[str, bool]],
    max_length: int,
    human_turn_masking: str = "full",
    tokenization: str = "segments",
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation from ``template.training_segments(...)``.

    The sequence starts with the tokenizer's BOS token (when it has one) and is truncated to
    ``max_length`` tokens. Returns ``(input_ids, labels)`` of equal length.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    if tokenizer.bos_token_id is not None:
        input_ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    if tokenization not in ("reference", "segments"):
        raise ValueError(f"unknown tokenization {tokenization!r}; use reference or segments")
    per_segment = _segment_ids(tokenizer, segments) if tokenization == "reference" else None
    for index, (text, is_target) in enumerate(segments):
        ids = per_segment[index] if per_segment is not None else _encode(tokenizer, text)
        if is_target:
            segment_labels = list(ids)
        else:
            segment_labels = [IGNORE_INDEX] * len(ids)
            if human_turn_masking == "reference" and index > 0:
                segment_labels[:2] = ids[:2]
        input_ids.extend(ids)
        labels.extend(segment_labels)
    return input_ids[:max_length], labels[:max_length]


def _segment_ids(tokenizer: Any, segments: Sequence[tuple[str, bool]]) -> list[list[int]]:
    """Reference tokenisation of the joined segments, split back by the segment of each token's start."""
    from exgra.models.tokenizer import reference_token_spans

    ends, position = [], 0
    for text, _ in segments:
        position += len(text)
        ends.append(position)
    per_segment: list[list[int]] = [[] for _ in segments]
    segment = 0
    for token_id, start in reference_token_spans(tokenizer, "".join(text for text, _ in segments)):
        while segment < len(ends) - 1 and start >= ends[segment]:
            segment += 1
        per_segment[segment].append(token_id)
    return per_segment


def tokenize_text(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """BOS + text, no EOS (the alignment strings of REFERENCE §4.3), truncated to ``max_length``."""
    ids = _encode(tokenizer, text)
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids[:max_length] or [tokenizer.pad_token_id]


def pad_sequences(sequences: Sequence[Sequence[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: ``(ids [B, L], mask [B, L])`` (mask 1 on real tokens)."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(list(sequence), dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


class TrainingCollator:
    """Pads a list of dataset items into one batch.

    Items that failed to load (``{"bad_record": id, "reason": ...}``) are dropped from the batch and
    listed under ``batch["bad_records"]`` so the training process (not a data worker) counts them.
    Output keys: ``input_ids``, ``attention_mask``, ``labels`` [B, L]; ``pixel_values`` [B, 3, H, W];
    ``ids`` (record ids); with alignment texts also ``response_ids`` / ``response_mask`` and
    ``caption_ids`` / ``caption_mask`` [B, L_text].
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        bad = [{"id": str(i["bad_record"]), "reason": str(i["reason"])} for i in items if "bad_record" in i]
        good = [i for i in items if "bad_record" not in i]
        batch: dict[str, Any] = {"bad_records": bad, "ids": [i["id"] for i in good]}
        if not good:
            return batch
        batch["input_ids"], batch["attention_mask"] = pad_sequences(
            [i["input_ids"] for i in good], self.pad_token_id
        )
        batch["labels"], _ = pad_sequences([i["labels"] for i in good], IGNORE_INDEX)
        batch["pixel_values"] = torch.stack([i["pixel_values"] for i in good])
        for key in ("response", "caption"):
            if f"{key}_ids" in good[0]:
                batch[f"{key}_ids"], batch[f"{key}_mask"] = pad_sequences(
                    [i[f"{key}_ids"] for i in good], self.pad_token_id
                )
        return batch
