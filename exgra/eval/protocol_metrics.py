"""Per-question rules of the ``medevalkit`` and ``tokenized-f1`` protocols, as pure functions.

MedEvalKit (non-judge mode, commit 9b12e3b; PEERS §7 rules 1-7) is reproduced with its quirks: only
lower-casing and stripping, closedness read from the gold answer, substring yes/no tests. Tokenized F1
is SQuAD's token F1 (the metric MedGemma's report names).
"""

from __future__ import annotations

import re
import string
from collections import Counter

__all__ = [
    "ANSWER_PATTERNS",
    "last_boxed",
    "medevalkit_closed_correct",
    "medevalkit_extract",
    "medevalkit_is_closed",
    "medevalkit_normalize",
    "medevalkit_open_correct",
    "medevalkit_parse",
    "squad_normalize",
    "tokenized_f1",
]

# MedEvalKit's answer markers, in the order it applies them (each keeps the text after its last use).
ANSWER_PATTERNS: tuple[str, ...] = (
    "**answer**:",
    "**answer**",
    "*answer*:",
    "**answer:**",
    "answer is",
    "answer:",
    "答案:",
    "final answer",
    "final answer is",
)
_BOX = "\\boxed{"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (braces balanced), or None when there is none."""
    found = None
    start = text.find(_BOX)
    while start >= 0:
        depth, position = 1, start + len(_BOX)
        while position < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            position += 1
        if depth == 0:
            found = text[start + len(_BOX) : position - 1]
        start = text.find(_BOX, start + 1)
    return found


def _answer_tags(text: str) -> str:
    joined = " ".join(_ANSWER_TAG.findall(text))
    return joined if joined else text


def medevalkit_extract(reply: str) -> str:
    """Rule 1: the last complete box's content (stripped), else the ``<answer>`` contents, else the reply."""
    boxed = last_boxed(reply)
    if boxed is not None:
        return boxed.strip()
    if "<answer>" in reply:
        return _answer_tags(reply)
    return reply


def medevalkit_normalize(text: str) -> str:
    """Rule 2: lower case and strip, nothing else (no punctuation, article or number handling)."""
    return text.lower().strip()


def medevalkit_is_closed(gold: str) -> bool:
    """Rule 3: closed iff the normalised gold is exactly ``yes`` or ``no`` (``answer_type`` is ignored)."""
    return medevalkit_normalize(gold) in ("yes", "no")


def medevalkit_parse(reply: str) -> str:
    """Rule 4: the parser every (extracted, normalised) reply goes through; the result is not stripped."""
    text = reply.lower()
    if "boxed" in text:
        boxed = last_boxed(text)
        text = boxed if boxed is not None else "None"
    elif "<answer>" in text:
        text = _answer_tags(text)
    for pattern in ANSWER_PATTERNS:
        if pattern in text:
            text = text.split(pattern)[-1]
    return text


def medevalkit_closed_correct(parsed: str, gold: str) -> bool:
    """Rule 5: newlines and periods removed; exactly one of ``yes``/``no`` occurs and the gold occurs.

    Substring tests, as MedEvalKit: "nodule", "normal" and "i don't know" contain ``no``; "eyes"
    contains ``yes``.
    """
    text = parsed.replace("\n", "").replace(".", "")
    has_yes, has_no = "yes" in text, "no" in text
    return has_yes != has_no and medevalkit_normalize(gold) in text


def medevalkit_open_correct(parsed: str, gold: str) -> bool:
    """Rule 6: the parsed reply equals the normalised gold exactly (``" liver"`` and ``liver.`` are wrong)."""
    return parsed == medevalkit_normalize(gold)


_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """SQuAD ``normalize_answer``: lower case, punctuation removed, articles removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def tokenized_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 of the normalised texts (clipped counts); two empty texts score 1, one empty 0."""
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)
