"""VQA metrics as pure functions: the reference (legacy) definitions and strict ones.

Legacy functions reproduce the ExGra-Med / LLaVA-Med scorer (REFERENCE §7.2) bit for bit, quirks
included; they take text that has *already* been through :func:`legacy_normalize` (the scorer decides
how many times, see :mod:`exgra.eval.scoring`). Strict functions work on :func:`strict_normalize`
output. BLEU is NLTK 3.10 ``sentence_bleu`` without smoothing, re-implemented without NLTK.
"""

from __future__ import annotations

import json
import math
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources

# ----------------------------------------------------------------------------------------------
# Legacy normalisation (reference `normalize_word`)
# ----------------------------------------------------------------------------------------------

LEGACY_PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The reference's look-behind is written as a look-ahead on the literal "<=" + digit, which can never
# match at a period, so the effective rule is "a period not followed by a digit".
_LEGACY_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The reference passes re.UNICODE (== 32) as the positional `count` of re.sub.
_LEGACY_PERIOD_LIMIT = int(re.UNICODE)


def _load_contractions() -> dict[str, str]:
    text = resources.files("exgra.eval").joinpath("legacy_contractions.json").read_text(encoding="utf-8")
    return json.loads(text)


LEGACY_CONTRACTIONS: dict[str, str] = _load_contractions()


@lru_cache(maxsize=1 << 17)
def legacy_normalize(text: str) -> str:
    """The reference ``normalize_word``, quirks included.

    Each punctuation mark is deleted when the *original* text has it next to a space (or contains a
    digit-comma-digit anywhere), else replaced by a space; at most 32 periods not followed by a digit
    are deleted; words are lower-cased, number words become digits, articles are dropped, contraction
    keys are expanded (its mixed-case keys never fire); commas are deleted. ``:`` is kept.
    """
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in LEGACY_PUNCTUATION:
        if has_number_comma or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    out = _LEGACY_PERIOD.sub("", out, _LEGACY_PERIOD_LIMIT)
    words = [NUMBER_WORDS.get(word, word) for word in out.lower().split()]
    words = [LEGACY_CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words).replace(",", "")


def word_counts(text: str) -> Counter[str]:
    """Whitespace words of ``text`` (lower-cased) with their counts (reference ``split_sentence(s, 1)``)."""
    return Counter(text.lower().split())


# ----------------------------------------------------------------------------------------------
# Legacy open-question metrics
# ----------------------------------------------------------------------------------------------


def legacy_f1(prediction: str, ground_truth: str) -> tuple[float, float, float]:
    """(F1, precision, recall) over word multisets; true positives count the *prediction's* copies.

    All three are 0 when either side has no words or nothing matches.
    """
    pred = word_counts(prediction)
    gold = word_counts(ground_truth)
    if not pred or not gold:
        return 0.0, 0.0, 0.0
    tp = sum(count for word, count in pred.items() if word in gold)
    fp = sum(count for word, count in pred.items() if word not in gold)
    fn = sum(count for word, count in gold.items() if word not in pred)
    if tp == 0:
        return 0.0, 0.0, 0.0
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def legacy_exact_match(prediction: str, ground_truth: str) -> float:
    """The reference "exact match": distinct gold words found in the prediction / prediction words.

    A precision-like ratio, not an exact match; 0 for an empty prediction.
    """
    pred = word_counts(prediction)
    gold = word_counts(ground_truth)
    total = sum(pred.values())
    if total == 0:
        return 0.0
    return sum(1 for word in gold if word in pred) / total


def legacy_closed_hit(prediction: str, ground_truth: str) -> bool:
    """ExGra-Med closed accuracy: the gold text is a substring of the prediction (``no`` ⊂ ``nodule``)."""
    return ground_truth in prediction


def llava_med_closed_gate(prediction: str) -> bool:
    """LLaVA-Med's yes/no gate: the prediction contains the substring ``yes`` or ``no``."""
    return "yes" in prediction or "no" in prediction


class LegacyCandidateMatcher:
    """Candidate-based open accuracy (reference ``calculate_appearance_with_normalization``).

    Each candidate is normalised once; a prediction picks the first candidate with the highest
    share of its distinct words present in the prediction (0 when no word is shared, so with no
    overlap at all the first candidate is chosen). An inverted index keeps this O(words) per item.
    """

    def __init__(self, candidates: Sequence[str | int]) -> None:
        if not candidates:
            raise ValueError("the candidate list is empty")
        self.normalized: list[str] = [legacy_normalize(str(candidate)) for candidate in candidates]
        self._sizes: list[int] = []
        self._index: dict[str, list[int]] = {}
        for position, text in enumerate(self.normalized):
            words = set(text.lower().split())
            self._sizes.append(len(words))
            for word in words:
                self._index.setdefault(word, []).append(position)

    def best(self, prediction: str) -> str:
        """The normalised candidate chosen for an (already normalised) prediction."""
        hits: dict[int, int] = {}
        for word in set(prediction.lower().split()):
            for position in self._index.get(word, ()):
                hits[position] = hits.get(position, 0) + 1
        best_position, best_score = 0, 0.0
        for position, count in hits.items():
            score = count / self._sizes[position]
            if score > best_score or (score == best_score and position < best_position):
                best_position, best_score = position, score
        return self.normalized[best_position]


# ----------------------------------------------------------------------------------------------
# BLEU (NLTK 3.10 sentence_bleu, one reference, no smoothing)
# ----------------------------------------------------------------------------------------------

BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "bleu": (0.25, 0.25, 0.25, 0.25),
    "bleu_1": (1, 0, 0, 0),
    "bleu_2": (0, 1, 0, 0),
    "bleu_3": (0, 0, 1, 0),
}


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(zip(*(tokens[i:] for i in range(n)), strict=False))


def modified_precisions(
    reference: Sequence[str], hypothesis: Sequence[str], max_n: int = 4
) -> list[tuple[int, int]]:
    """Clipped n-gram matches and hypothesis n-gram counts (denominator at least 1) for n = 1..max_n."""
    result = []
    for n in range(1, max_n + 1):
        hyp = _ngram_counts(hypothesis, n)
        ref = _ngram_counts(reference, n)
        matched = sum(min(count, ref[gram]) for gram, count in hyp.items() if gram in ref)
        result.append((matched, max(1, len(hypothesis) - n + 1)))
    return result


def sentence_bleu_many(
    reference: Sequence[str], hypothesis: Sequence[str], weights: Iterable[Sequence[float]]
) -> list[float]:
    """BLEU of ``hypothesis`` against one ``reference`` for each weight tuple, as NLTK 3.10 computes it.

    No smoothing: 0 when no unigram matches (and for an empty hypothesis); otherwise an order with no
    match contributes ``w * log(sys.float_info.min)`` (so a score weighting it is ~0, one that does
    not is unaffected); brevity penalty ``exp(1 - r/c)`` when the hypothesis is not longer.
    """
    weights = [tuple(w) for w in weights]
    max_n = max(len(w) for w in weights)
    precisions = modified_precisions(reference, hypothesis, max_n)
    if precisions[0][0] == 0:
        return [0.0] * len(weights)
    hyp_len, ref_len = len(hypothesis), len(reference)
    penalty = 1 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    logs = [math.log(num / den) if num else math.log(sys.float_info.min) for num, den in precisions]
    return [
        penalty * math.exp(math.fsum(w * lp for w, lp in zip(weight, logs, strict=False)))
        for weight in weights
    ]


def sentence_bleu(
    reference: Sequence[str], hypothesis: Sequence[str], weights: Sequence[float] = (0.25, 0.25, 0.25, 0.25)
) -> float:
    """NLTK 3.10 ``sentence_bleu([reference], hypothesis, weights)`` without smoothing."""
    return sentence_bleu_many(reference, hypothesis, [weights])[0]


def bleu_scores(reference: Sequence[str], hypothesis: Sequence[str]) -> dict[str, float]:
    """The four BLEU variants the reference reports (BLEU-4 and single-order 1/2/3), keyed as in the JSON."""
    values = sentence_bleu_many(reference, hypothesis, BLEU_WEIGHTS.values())
    return dict(zip(BLEU_WEIGHTS, values, strict=False))


# ----------------------------------------------------------------------------------------------
# Strict metrics
# ----------------------------------------------------------------------------------------------

# Words keep inner apostrophes; numbers keep decimal points and thousands commas (removed below).
_STRICT_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W_]+(?:'[^\W_]+)*")
_ROLE_PREFIX = re.compile(r"^\s*(?:###\s*)?(?:assistant|gpt|answer)\s*:\s*", re.IGNORECASE)
_OPTIONS_SUFFIX = re.compile(r"answer with either\s+(.*?)\)", re.IGNORECASE | re.DOTALL)
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”")
YES_NO: tuple[str, str] = ("yes", "no")


@lru_cache(maxsize=1 << 17)
def strict_normalize(text: str) -> str:
    """Lower-case, drop a leading role prefix (``Assistant:``), keep word and number tokens only.

    Punctuation separates words, number words become digits, thousands commas are removed, articles
    are dropped; tokens are joined by single spaces.
    """
    text = _ROLE_PREFIX.sub("", unicodedata.normalize("NFKC", text).lower())
    words = []
    for token in _STRICT_TOKEN.findall(text):
        if token[0].isdigit():
            token = token.replace(",", "")
        token = NUMBER_WORDS.get(token, token)
        if token not in ARTICLES:
            words.append(token)
    return " ".join(words)


def strict_exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised prediction equals the normalised gold answer, else 0.0."""
    return 1.0 if prediction == ground_truth else 0.0


def token_f1(prediction: str, ground_truth: str) -> tuple[float, float, float]:
    """(F1, precision, recall) with clipped counts (SQuAD-style); 0 when either side is empty."""
    pred = Counter(prediction.split())
    gold = Counter(ground_truth.split())
    overlap = sum((pred & gold).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    precision = overlap / sum(pred.values())
    recall = overlap / sum(gold.values())
    return 2 * precision * recall / (precision + recall), precision, recall


class StrictCandidateMatcher:
    """Closed-vocabulary open accuracy: an exact candidate wins, else the best token-F1 candidate."""

    def __init__(self, candidates: Sequence[str | int]) -> None:
        if not candidates:
            raise ValueError("the candidate list is empty")
        self.normalized: list[str] = [strict_normalize(str(candidate)) for candidate in candidates]
        self._exact = set(self.normalized)
        self._index: dict[str, list[int]] = {}
        for position, text in enumerate(self.normalized):
            for word in set(text.split()):
                self._index.setdefault(word, []).append(position)

    def best(self, prediction: str) -> str | None:
        """The chosen candidate for a normalised prediction, or None when no candidate shares a word."""
        if prediction in self._exact:
            return prediction
        positions = sorted({p for word in set(prediction.split()) for p in self._index.get(word, ())})
        best, best_f1 = None, 0.0
        for position in positions:
            f1 = token_f1(prediction, self.normalized[position])[0]
            if f1 > best_f1:
                best, best_f1 = self.normalized[position], f1
        return best


def parse_closed_options(question: str) -> list[str]:
    """Options from a ``(Answer with either "A" or "B")`` suffix, strict-normalised; [] when absent."""
    match = _OPTIONS_SUFFIX.search(question)
    if match is None:
        return []
    options = []
    for double, curly in _QUOTED.findall(match.group(1)):
        option = strict_normalize(double or curly)
        if option and option not in options:
            options.append(option)
    return options


def closed_options(question: str, ground_truth: str) -> list[str]:
    """The answer options of a closed question (all strict-normalised).

    Options come from the question's ``(Answer with either ...)`` suffix; yes/no questions always
    have both ``yes`` and ``no``; the gold answer is always an option.
    """
    options = parse_closed_options(question)
    if ground_truth in YES_NO:
        options += [word for word in YES_NO if word not in options]
    if ground_truth not in options:
        options.append(ground_truth)
    return options


def choose_closed_option(prediction: str, options: Sequence[str]) -> str | None:
    """The option a normalised prediction commits to, read as whole words (``no`` ≠ ``nodule``).

    Options are found left to right (longest first at each position). The answer is the option the
    prediction starts with; otherwise the only option it mentions; otherwise (none, or several
    different ones, e.g. ``yes or no``) there is no answer.
    """
    words = prediction.split()
    candidates = sorted(((opt.split(), opt) for opt in options if opt), key=lambda item: -len(item[0]))
    mentioned: list[tuple[int, str]] = []
    position = 0
    while position < len(words):
        for option_words, option in candidates:
            if words[position : position + len(option_words)] == option_words:
                mentioned.append((position, option))
                position += len(option_words)
                break
        else:
            position += 1
    if not mentioned:
        return None
    if mentioned[0][0] == 0:
        return mentioned[0][1]
    distinct = {option for _, option in mentioned}
    return mentioned[0][1] if len(distinct) == 1 else None


def strict_closed_hit(prediction: str, ground_truth: str, options: Sequence[str]) -> bool:
    """True when the option the prediction commits to is the gold answer."""
    return choose_closed_option(prediction, options) == ground_truth
