"""Reading JSON out of an LLM reply, repairing it only where the repair cannot change its meaning."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def _loads(text: str) -> Any:
    # strict=False accepts raw newlines/tabs inside strings, a frequent and harmless model slip.
    return json.loads(text, strict=False)


def extract_json_object(text: str) -> dict[str, Any] | None:
    """Return the JSON object in ``text``, or None when there is none that parses.

    Safe repairs only: a surrounding Markdown code fence, prose before/after one ``{...}`` object, raw
    control characters inside strings, and an object encoded twice (a JSON string holding JSON).
    Nothing is guessed: truncated or ambiguous replies return None so the caller can re-ask.
    """
    if not text:
        return None
    candidates = [text.strip()]
    fenced = _FENCE.match(text)
    if fenced:
        candidates.append(fenced.group(1).strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = _loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, str):
            try:
                value = _loads(value)
            except (json.JSONDecodeError, ValueError):
                continue
        if isinstance(value, dict):
            return value
    return None
