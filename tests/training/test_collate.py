"""Tokenisation, label masking, alignment texts and collation."""

from __future__ import annotations

import pytest
import torch

from exgra.data.collate import (
    IGNORE_INDEX,
    TrainingCollator,
    pad_sequences,
    tokenize_conversation,
    tokenize_text,
)
from exgra.data.templates import get_template, image_token_string
from exgra.models import build_tiny_tokenizer
from exgra.models.tokenizer import add_image_tokens


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tiny_tokenizer()
    add_image_tokens(tok)
    return tok


CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat is shown?"},
    {"from": "gpt", "value": "A chest radiograph."},
    {"from": "human", "value": "Any fracture?"},
    {"from": "gpt", "value": "No fracture."},
]


def _targets(tokenizer, ids, labels):
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def test_full_masking_trains_only_assistant_turns(tokenizer):
    segments = get_template("legacy").training_segments(CONVERSATION, image_token_string(4))
    ids, labels = tokenize_conversation(tokenizer, segments, max_length=512)
    assert len(ids) == len(labels)
    assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
    targets = _targets(tokenizer, ids, labels)
    assert "chest radiograph" in targets and "No fracture" in targets
    assert "What is shown" not in targets and "fracture?" not in targets
    # every target label equals its token
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
    # the image tokens and the system prompt are never targets
    patch = tokenizer.convert_tokens_to_ids("<im_patch>")
    assert all(label == IGNORE_INDEX for token, label in zip(ids, labels, strict=True) if token == patch)


def test_reference_masking_keeps_two_tokens_of_each_human_turn(tokenizer):
    segments = get_template("legacy").training_segments(CONVERSATION, image_token_string(4))
    ids_full, labels_full = tokenize_conversation(tokenizer, segments, 512, "full")
    ids_ref, labels_ref = tokenize_conversation(tokenizer, segments, 512, "reference")
    assert ids_full == ids_ref
    extra = [i for i, (a, b) in enumerate(zip(labels_full, labels_ref, strict=True)) if a != b]
    assert len(extra) == 4  # two human turns x two tokens; the header stays masked
    assert all(labels_ref[i] == ids_ref[i] for i in extra)
    assert labels_ref[1] == IGNORE_INDEX  # first header token


def test_truncation_and_alignment_text(tokenizer):
    segments = get_template("legacy").training_segments(CONVERSATION, image_token_string(4))
    ids, labels = tokenize_conversation(tokenizer, segments, max_length=10)
    assert len(ids) == len(labels) == 10
    text_ids = tokenize_text(tokenizer, "A chest radiograph.. No fracture.", 64)
    assert text_ids[0] == tokenizer.bos_token_id
    assert text_ids[-1] != tokenizer.eos_token_id
    assert len(tokenize_text(tokenizer, "word " * 200, 16)) == 16


def test_chat_template_masks_user_turns(tokenizer):
    segments = get_template("chat").training_segments(CONVERSATION, image_token_string(2))
    ids, labels = tokenize_conversation(tokenizer, segments, 512)
    targets = _targets(tokenizer, ids, labels)
    assert "No fracture" in targets and "Any fracture" not in targets


def test_pad_and_collate_drop_bad_items():
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_value=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    collator = TrainingCollator(pad_token_id=0)
    good = {
        "id": "a",
        "input_ids": [5, 6, 7],
        "labels": [IGNORE_INDEX, 6, 7],
        "pixel_values": torch.zeros(3, 4, 4),
        "response_ids": [1, 2],
        "caption_ids": [1, 2, 3, 4],
    }
    short = {**good, "id": "b", "input_ids": [5], "labels": [5], "response_ids": [1], "caption_ids": [1]}
    batch = collator([good, {"bad_record": "c", "reason": "unreadable"}, short])
    assert batch["ids"] == ["a", "b"]
    assert batch["bad_records"] == [{"id": "c", "reason": "unreadable"}]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [5, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert batch["caption_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert "input_ids" not in collator([{"bad_record": "x", "reason": "r"}])
