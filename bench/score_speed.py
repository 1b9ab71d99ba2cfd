"""Time `exgra score` (legacy scorer) against a reference-style scorer on synthetic VQA answers.

The reference-style scorer follows the structure of the ExGra-Med `run_eval.py` (REFERENCE §7.2):
per-item Python, the normalisation loop re-searching the digit-comma pattern for every mark, every
candidate answer normalised again for every open question, and NLTK `sentence_bleu` called four times.
Both run in this process on the same seeded files; the script prints seconds and the ratio and checks
that every metric is identical (bit for bit).

    python bench/score_speed.py [--items 10500] [--candidates 50] [--seed 0]

Needs nltk (a dev dependency).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# Reference-style scorer (written from REFERENCE §7.2; slow on purpose, mirrors its structure)
# --------------------------------------------------------------------------------------------

_CONTRACTIONS = json.loads(
    (Path(__file__).resolve().parents[1] / "exgra/eval/legacy_contractions.json").read_text()
)
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
}
_NUMBERS.update({"seven": "7", "eight": "8", "nine": "9", "ten": "10"})
_MARKS = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the reference's malformed look-behind, kept as is
_COMMA = re.compile(r"(\d)(\,)(\d)")


def ref_normalize(token: str) -> str:
    result = token
    for mark in _MARKS:
        if (mark + " " in token or " " + mark in token) or (re.search(_COMMA, token) is not None):
            result = result.replace(mark, "")
        else:
            result = result.replace(mark, " ")
    token = _PERIOD.sub("", result, re.UNICODE)  # re.UNICODE lands in `count`, as in the reference
    words = []
    for word in token.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in ("a", "an", "the"):
            words.append(word)
    for i, word in enumerate(words):
        if word in _CONTRACTIONS:
            words[i] = _CONTRACTIONS[word]
    return " ".join(words).replace(",", "")


def ref_split(sentence: str) -> dict[str, int]:
    counts: dict[str, int] = collections.defaultdict(int)
    for word in sentence.lower().strip().split():
        counts[word] += 1
    return counts


def ref_exact(candidate: str, reference: str) -> float:
    cand, ref = ref_split(ref_normalize(candidate)), ref_split(ref_normalize(reference))
    count = sum(1 for word in ref if word in cand)
    total = sum(cand.values())
    return 0 if total == 0 else count / total


def ref_f1(candidate: str, reference: str) -> tuple[float, float, float]:
    cand, ref = ref_split(ref_normalize(candidate)), ref_split(ref_normalize(reference))
    tp = fp = fn = 0
    for word in set(cand) | set(ref):
        if word in cand and word in ref:
            tp += cand[word]
        elif word in cand:
            fp += cand[word]
        else:
            fn += ref[word]
    if len(cand) == 0 or len(ref) == 0:
        return 0, 0, 0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    if tp == 0:
        return 0, 0, 0
    return 2 * precision * recall / (precision + recall), precision, recall


def ref_open_hit(prediction: str, reference: str, candidate_set: dict[str, list[Any]]) -> float:
    prediction, reference = ref_normalize(prediction), ref_normalize(reference)
    pred_words = ref_split(prediction)
    normalized, similarities = [], []
    for answer in candidate_set["0"]:
        if isinstance(answer, int):
            answer = str(answer)
        answer = ref_normalize(answer)
        normalized.append(answer)
        words = ref_split(answer)
        count = sum(1 for word in pred_words if word in words)
        similarities.append(0.0 if len(words) == 0 else count / len(words))
    return 1.0 if normalized[similarities.index(max(similarities))] == reference else 0.0


def reference_style_score(
    gt: list[dict[str, Any]], pred: list[dict[str, Any]], candidate_set: dict[str, list[Any]] | None
) -> dict[str, Any]:
    """Metrics (percent) as the reference computes them, for files in the same id order."""
    from nltk.translate.bleu_score import sentence_bleu

    warnings.simplefilter("ignore")
    cols: dict[str, list[float]] = collections.defaultdict(list)
    num_open = num_closed = 0
    for gt_item, pred_item in zip(gt, pred, strict=False):
        turns = gt_item["conversations"] if "conversations" in gt_item else gt_item["conversatons"]
        gt_value = ref_normalize(turns[1]["value"].lower())
        pred_value = ref_normalize(pred_item["text"].lower())
        if gt_item["answer_type"] == "OPEN":
            num_open += 1
            if candidate_set is not None:
                cols["open_accuracy"].append(ref_open_hit(pred_value, gt_value, candidate_set))
            cols["exact_match"].append(ref_exact(pred_value, gt_value))
            f1, precision, recall = ref_f1(pred_value, gt_value)
            cols["f1"].append(f1)
            cols["precision"].append(precision)
            cols["recall"].append(recall)
            refs, hyp = [str(gt_value).lower().split()], str(pred_value).lower().split()
            cols["bleu"].append(sentence_bleu(references=refs, hypothesis=hyp))
            cols["bleu_1"].append(sentence_bleu(references=refs, hypothesis=hyp, weights=(1, 0, 0, 0)))
            cols["bleu_2"].append(sentence_bleu(references=refs, hypothesis=hyp, weights=(0, 1, 0, 0)))
            cols["bleu_3"].append(sentence_bleu(references=refs, hypothesis=hyp, weights=(0, 0, 1, 0)))
        elif gt_item["answer_type"] == "CLOSED":
            num_closed += 1
            cols["closed_accuracy"].append(1 if gt_value in pred_value else 0)
    keys = ("exact_match", "f1", "precision", "recall", "bleu", "bleu_1", "bleu_2", "bleu_3")
    result: dict[str, Any] = {k: sum(cols[k]) / len(cols[k]) * 100 if cols[k] else None for k in keys}
    result["open_accuracy"] = (
        sum(cols["open_accuracy"]) / len(cols["open_accuracy"]) * 100 if candidate_set and num_open else None
    )
    closed = cols["closed_accuracy"]
    result["closed_accuracy"] = sum(closed) / len(closed) * 100 if closed else None
    result["num_open"], result["num_closed"] = num_open, num_closed
    return result


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------

_WORDS = [
    "left",
    "right",
    "lung",
    "liver",
    "kidney",
    "lesion",
    "mass",
    "nodule",
    "normal",
    "abnormal",
    "fracture",
    "effusion",
    "opacity",
    "contrast",
    "ct",
    "mri",
    "x-ray",
    "axial",
    "coronal",
    "brain",
    "heart",
    "spleen",
    "cyst",
    "tumor",
    "edema",
    "pneumothorax",
    "cardiomegaly",
    "atelectasis",
    "one",
    "two",
    "three",
    "none",
    "zero",
    "the",
    "a",
    "an",
    "don't",
    "dont",
    "1,000",
    "3.5",
    "2",
    "cm",
    "mm",
    "isn't",
]
_PUNCT = ["", "", "", ".", ",", "?", "!", ";", " -", "(", ")", "/", ":", '"', "...", " ."]


def _phrase(rng: random.Random, low: int, high: int) -> str:
    words = []
    for _ in range(rng.randint(low, high)):
        words.append(rng.choice(_WORDS) + rng.choice(_PUNCT))
    text = " ".join(words)
    return text.capitalize() if rng.random() < 0.5 else text


def synthetic_files(
    folder: Path, num_items: int, num_candidates: int, seed: int
) -> tuple[Path, Path, Path, dict[str, Any]]:
    """Write gt JSON, answers JSONL and candidate JSON of ``num_items`` seeded questions."""
    rng = random.Random(seed)
    candidates: list[Any] = [_phrase(rng, 1, 4) for _ in range(num_candidates)] + [3, 12]
    gt, pred = [], []
    for index in range(num_items):
        if rng.random() < 0.5:
            answer_type = "OPEN"
            answer = str(rng.choice(candidates))
            if rng.random() < 0.3:
                text = answer
            else:
                text = " ".join(
                    [_phrase(rng, 0, 3), answer if rng.random() < 0.5 else "", _phrase(rng, 0, 12)]
                )
            question = "What is shown?"
        else:
            answer_type = "CLOSED"
            answer = rng.choice(["Yes", "No", "yes", "no", "Left", "right"])
            text = rng.choice(
                ["Yes", "No", "no.", "Yes, there is a nodule.", "Normal", "left", "Right side."]
            )
            question = 'Is it? (Answer with either "Yes" or "No").'
        if rng.random() < 0.5:
            text = "Assistant: " + text
        gt.append(
            {
                "id": index,
                "image": f"img{index}.jpg",
                "answer_type": answer_type,
                "conversations": [
                    {"from": "human", "value": question + "\n<image>"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
        pred.append({"question_id": index, "prompt": question, "text": text, "answer_id": str(index)})
    gt_path, pred_path, cand_path = folder / "test.json", folder / "answers.jsonl", folder / "candidate.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text("\n".join(json.dumps(p) for p in pred) + "\n")
    cand_path.write_text(json.dumps({"0": candidates}))
    return gt_path, pred_path, cand_path, {"gt": gt, "pred": pred, "candidates": {"0": candidates}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_500)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from exgra.eval import metrics as metrics_module
    from exgra.eval.scoring import score_answers

    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path, cand_path, data = synthetic_files(
            Path(tmp), args.items, args.candidates, args.seed
        )

        start = time.perf_counter()
        gt = json.loads(gt_path.read_text())
        pred = [json.loads(line) for line in pred_path.read_text().splitlines() if line]
        candidate_set = json.loads(cand_path.read_text())
        baseline = reference_style_score(gt, pred, candidate_set)
        baseline_s = time.perf_counter() - start

        # Cold caches: the timed run must not profit from work done by an earlier run.
        metrics_module.legacy_normalize.cache_clear()
        start = time.perf_counter()
        ours = score_answers(gt_path, pred_path, cand_path, scorer="legacy").metrics
        ours_s = time.perf_counter() - start

    identical = all(ours[key] == baseline[key] for key in baseline)
    print(f"{args.items} answers ({baseline['num_open']} open, {baseline['num_closed']} closed), "
          f"{args.candidates + 2} candidates, seed {args.seed}, Python {sys.version.split()[0]}")  # fmt: skip
    print(f"| {'implementation':<40} | {'seconds':>8} | {'ratio':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 9}|")
    print(f"| {'reference-style (per item, nltk BLEU)':<40} | {baseline_s:8.3f} | {1.0:7.2f} |")
    print(f"| {'exgra score --scorer legacy':<40} | {ours_s:8.3f} | {baseline_s / ours_s:7.2f} |")
    print(f"numbers identical: {identical}")
    if not identical:
        for key in baseline:
            if ours[key] != baseline[key]:
                print(f"  {key}: reference-style {baseline[key]!r} exgra {ours[key]!r}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
