"""The shared words of the record and prompt formats, each defined once (REFERENCE §4, §7.1).

Dependency-free, so the data, model, eval and scoring modules all import these from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CONVERSATION_KEYS",
    "IMAGE_END_TOKEN",
    "IMAGE_PATCH_TOKEN",
    "IMAGE_PLACEHOLDER",
    "IMAGE_START_TOKEN",
    "IMAGE_TOKENS",
    "conversation_value",
    "strip_image_placeholder",
]

IMAGE_PLACEHOLDER = "<image>"  # where the image goes in a record's first human turn
IMAGE_PATCH_TOKEN = "<im_patch>"  # one per image feature; the model splices the features in here
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"
IMAGE_TOKENS = (IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN)

# The reference's released data spells some keys "conversatons"; both spellings are read.
CONVERSATION_KEYS = ("conversations", "conversatons")


def strip_image_placeholder(text: str) -> str:
    """A question as asked: the ``<image>`` placeholder removed and whitespace stripped (§7.1)."""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def conversation_value(record: Mapping[str, Any], key: str = "conversations") -> Any:
    """``record[key]``, or its typo spelling (``conversatons``, ``conversatons_long``) when only that
    is there; None when neither is."""
    if key in record:
        return record[key]
    return record.get(key.replace("conversations", "conversatons"))
