"""The scorer: hand-worked metrics per scorer, file loading and id matching, the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from exgra.errors import DataError, ExgraError
from exgra.eval.scoring import METRIC_KEYS, ScoreItem, score_answers, score_items

# (prediction, gold, answer_type, question)
OPEN_ITEMS = [
    ("Assistant: The left lung.", "Left lung", "OPEN", "Where?"),
    ("", "liver", "OPEN", "Which organ?"),
]
CLOSED_ITEMS = [
    ("There is a nodule.", "no", "CLOSED", 'Is it normal? (Answer with either "Yes" or "No").'),
    ("Normal", "yes", "CLOSED", 'Is it normal? (Answer with either "Yes" or "No").'),
    ("Left side", "left", "CLOSED", "Which side?"),
    ("yes", "no", "CLOSED", "Is there a fracture?"),
]


def test_legacy_metrics_by_hand() -> None:
    m = score_items(OPEN_ITEMS + CLOSED_ITEMS, scorer="legacy")
    # item 1: pred "assistant: left lung" vs gold "left lung": tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 0.8;
    # exact match = 2 distinct gold words / 3 pred words; item 2 (empty prediction) scores 0 everywhere.
    assert m["precision"] == pytest.approx((2 / 3) / 2 * 100)
    assert m["recall"] == pytest.approx(1 / 2 * 100)
    assert m["f1"] == pytest.approx(0.8 / 2 * 100)
    assert m["exact_match"] == pytest.approx((2 / 3) / 2 * 100)
    # BLEU-1: 3 hypothesis words, 2 of them in the 2-word reference, no brevity penalty -> 2/3.
    assert m["bleu_1"] == pytest.approx((2 / 3) / 2 * 100)
    # BLEU-2: bigram "left lung" matches 1 of 2 -> 1/2.
    assert m["bleu_2"] == pytest.approx((1 / 2) / 2 * 100)
    # closed substring: "no" ⊂ "there is nodule" hit, "yes" ⊄ "normal", "left" ⊂ "left side", "no" ⊄ "yes".
    assert m["closed_accuracy"] == pytest.approx(50.0)
    assert m["open_accuracy"] is None  # no candidate list
    assert (m["num_open"], m["num_closed"]) == (2, 4)
    assert m["scorer"] == {"name": "legacy", "version": "1"}
    assert set(METRIC_KEYS) | {"scorer"} == set(m)


def test_llava_med_closed_variants() -> None:
    # gate = "yes" or "no" as substrings: "there is nodule" and "normal" pass it, "left side" does not.
    post = score_items(CLOSED_ITEMS, scorer="llava-med")
    assert post["closed_accuracy"] == pytest.approx(25.0)  # only the nodule item
    # before PR #35 gated-but-wrong answers ("normal", "yes") were left out: 1 hit / (1 + "left side" 0).
    pre = score_items(CLOSED_ITEMS, scorer="llava-med-pre35")
    assert pre["closed_accuracy"] == pytest.approx(50.0)
    assert post["num_closed"] == pre["num_closed"] == 4
    assert post["closed_accuracy"] != score_items(CLOSED_ITEMS, scorer="legacy")["closed_accuracy"]


def test_strict_metrics_by_hand() -> None:
    m = score_items(OPEN_ITEMS + CLOSED_ITEMS, scorer="strict")
    # "Assistant:" is dropped, so item 1 is an exact match; item 2 is not.
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(50.0)
    # closed: nodule -> no option (miss), normal -> none (miss), "left side" -> left (hit), yes vs no (miss).
    assert m["closed_accuracy"] == pytest.approx(25.0)


def test_candidate_open_accuracy() -> None:
    items = [
        ScoreItem("The left lung", "left lung", "OPEN"),  # candidates 1/2,1/2,... -> "left lung" hit
        ScoreItem("right lung apex", "right lung", "OPEN"),  # "right lung" 2/2 -> hit
        ScoreItem("lung", "right lung", "OPEN"),  # tie 1/2, 1/2 -> first ("left lung") -> miss
        ScoreItem("spleen", "3", "OPEN"),  # no overlap -> first candidate -> miss
    ]
    m = score_items(items, scorer="legacy", candidates=["left lung", "right lung", 3])
    assert m["open_accuracy"] == pytest.approx(50.0)


def test_empty_splits_are_null_and_bad_answer_type_fails() -> None:
    m = score_items([("yes", "yes", "CLOSED")])
    assert m["f1"] is None and m["bleu"] is None and m["closed_accuracy"] == 100.0
    assert score_items([("x", "x", "OPEN")])["closed_accuracy"] is None
    with pytest.raises(DataError, match="answer_type"):
        score_items([("x", "x", "YESNO")])
    with pytest.raises(ExgraError, match="Unknown scorer"):
        score_items([("x", "x", "OPEN")], scorer="fancy")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _gt_record(index: int, answer: str, answer_type: str, key: str = "conversations") -> dict[str, Any]:
    turns = [{"from": "human", "value": f"Question {index}?\n<image>"}, {"from": "gpt", "value": answer}]
    return {"id": index, "image": f"{index}.jpg", "answer_type": answer_type, key: turns}


def _write(tmp_path: Path, gt: list[dict], preds: list[dict]) -> tuple[Path, Path]:
    gt_path, pred_path = tmp_path / "test.json", tmp_path / "answers.jsonl"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return gt_path, pred_path


def _pred(index: int, text: str) -> dict[str, Any]:
    return {
        "question_id": index,
        "prompt": "q",
        "text": text,
        "answer_id": "x",
        "model_id": "m",
        "metadata": {},
    }


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    gt = [
        _gt_record(0, "left lung", "OPEN"),
        _gt_record(1, "yes", "CLOSED", key="conversatons"),  # the reference's typo key
        _gt_record(2, "no", "CLOSED"),
    ]
    preds = [_pred(2, "No."), _pred(0, "Left lung"), _pred(1, "Yes, it is.")]  # order differs from gt
    return _write(tmp_path, gt, preds)


def test_score_answers_matches_by_id(files: tuple[Path, Path]) -> None:
    report = score_answers(*files)
    assert report.metrics["num_open"] == 1 and report.metrics["num_closed"] == 2
    assert report.metrics["recall"] == 100.0 and report.metrics["closed_accuracy"] == 100.0
    assert [item.id for item in report.items] == [0, 1, 2]  # ground-truth order
    assert report.items[0].prediction == "left lung"
    assert report.arguments["scorer"] == "legacy" and report.arguments["num_left_out"] == 0


def test_missing_and_extra_ids(tmp_path: Path) -> None:
    gt = [_gt_record(i, "yes", "CLOSED") for i in range(8)]
    preds = [_pred(i, "yes") for i in (0, 1, 2, 99)]
    gt_path, pred_path = _write(tmp_path, gt, preds)
    with pytest.raises(DataError) as error:
        score_answers(gt_path, pred_path)
    message = str(error.value)
    assert "5 ground-truth id(s) have no prediction (first: 3, 4, 5, 6, 7)" in message
    assert "1 prediction id(s) are not in the ground truth (first: 99)" in message
    assert "--allow-partial" in message
    report = score_answers(gt_path, pred_path, allow_partial=True)
    assert report.metrics["num_closed"] == 3
    assert report.num_left_out == 6 and report.left_out_ids[-1] == "99"


def test_duplicate_ids_fail_even_when_partial(tmp_path: Path) -> None:
    gt_path, pred_path = _write(tmp_path, [_gt_record(0, "yes", "CLOSED")], [_pred(0, "yes"), _pred(0, "no")])
    with pytest.raises(DataError, match="duplicate ids: 0"):
        score_answers(gt_path, pred_path, allow_partial=True)


@pytest.mark.parametrize(
    ("gt", "pred_text", "match"),
    [
        ([_gt_record(0, "yes", "CLOSED")], '{"question_id": 0, "text": "yes"}\n{oops\n', "line 2 of"),
        ([_gt_record(0, "yes", "CLOSED")], '{"question_id": 0}\n', "has no text answer"),
        ([{"id": 0, "answer_type": "OPEN", "conversations": [{"value": "q"}]}], "", "has no answer"),
        ([_gt_record(0, "yes", "yes/no")], '{"question_id": 0, "text": "yes"}\n', "expected OPEN or CLOSED"),
    ],
)
def test_bad_records(tmp_path: Path, gt: list, pred_text: str, match: str) -> None:
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.jsonl"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(pred_text)
    with pytest.raises(DataError, match=match):
        score_answers(gt_path, pred_path)


def test_missing_and_invalid_files(tmp_path: Path, files: tuple[Path, Path]) -> None:
    with pytest.raises(DataError, match="ground-truth file not found"):
        score_answers(tmp_path / "nope.json", files[1])
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1,\n oops}]')
    with pytest.raises(DataError, match=r"not valid JSON \(line 2"):
        score_answers(bad, files[1])
    candidates = tmp_path / "cand.json"
    candidates.write_text(json.dumps({"0": [1.5]}))
    with pytest.raises(DataError, match="Candidate file"):
        score_answers(*files, candidates_path=candidates)


# ---------------------------------------------------------------------------------------------
# Identical numbers to a reference-style scorer (bench/score_speed.py) on random data
# ---------------------------------------------------------------------------------------------


def _bench_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "score_speed.py"
    spec = importlib.util.spec_from_file_location("score_speed_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_legacy_equals_reference_style_scorer(tmp_path: Path) -> None:
    pytest.importorskip("nltk")
    bench = _bench_module()
    gt_path, pred_path, cand_path, data = bench.synthetic_files(tmp_path, 400, 25, seed=7)
    # Add quirk cases: >32 periods (double normalisation differs), number commas, brackets.
    extra_texts = ["." * 40 + " liver", "1,000 x-ray (left)", "none of the two", "a"]
    for offset, text in enumerate(extra_texts):
        index = 400 + offset
        data["gt"].append(_gt_record(index, ["liver", "1000", "0", "lung"][offset], "OPEN"))
        data["pred"].append(_pred(index, text))
    gt_path.write_text(json.dumps(data["gt"]))
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in data["pred"]))

    expected = bench.reference_style_score(data["gt"], data["pred"], data["candidates"])
    ours = score_answers(gt_path, pred_path, cand_path).metrics
    for key, value in expected.items():
        assert ours[key] == value, key  # bit-identical floats

    # Shuffled prediction order gives the same numbers (matched by id, summed in ground-truth order).
    random.Random(0).shuffle(data["pred"])
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in data["pred"]))
    shuffled = score_answers(gt_path, pred_path, cand_path).metrics
    assert all(shuffled[key] == ours[key] for key in expected)
    assert not math.isnan(ours["bleu"])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_score_writes_metrics(run_exgra, files: tuple[Path, Path], tmp_path: Path) -> None:
    gt_path, pred_path = files
    output = tmp_path / "out" / "metrics.json"
    result = run_exgra("score", "--gt", gt_path, "--pred", pred_path, "--output", output)
    assert result.exit_code == 0, result.stderr
    assert "closed accuracy" in result.stdout and "100.00" in result.stdout
    saved = json.loads(output.read_text())
    assert set(METRIC_KEYS) <= set(saved)
    assert saved["scorer"]["name"] == "legacy"
    assert saved["arguments"]["gt"] == str(gt_path.resolve())
    assert saved["open_accuracy"] is None

    again = run_exgra("score", "--gt", gt_path, "--pred", pred_path, "--output", output, "--scorer", "strict")
    assert again.exit_code == 1 and "already exists" in again.stderr and "--overwrite" in again.stderr
    assert json.loads(output.read_text())["scorer"]["name"] == "legacy"  # untouched

    items = tmp_path / "out" / "items.jsonl"
    forced = run_exgra(
        "score", "--gt", gt_path, "--pred", pred_path, "-o", output, "--scorer", "strict", "--overwrite",
        "--per-item", items,
    )  # fmt: skip
    assert forced.exit_code == 0, forced.stderr
    assert json.loads(output.read_text())["scorer"]["name"] == "strict"
    lines = [json.loads(line) for line in items.read_text().splitlines()]
    assert [line["id"] for line in lines] == [0, 1, 2]
    assert lines[2]["scores"] == {"chosen_option": "no", "closed_accuracy": 1}
    assert sorted(p.name for p in output.parent.iterdir()) == ["items.jsonl", "metrics.json"]  # no temp files


def test_cli_score_errors_and_partial(run_exgra, tmp_path: Path) -> None:
    gt_path, pred_path = _write(
        tmp_path, [_gt_record(i, "yes", "CLOSED") for i in range(3)], [_pred(0, "yes"), _pred(1, "no")]
    )
    result = run_exgra("score", "--gt", gt_path, "--pred", pred_path)
    assert result.exit_code == 1 and "first: 2" in result.stderr
    partial = run_exgra("score", "--gt", gt_path, "--pred", pred_path, "--allow-partial")
    assert partial.exit_code == 0 and "left out 1" in partial.stderr
    unknown = run_exgra("score", "--data", gt_path, "--answers", pred_path, "--scorer", "bogus")
    assert unknown.exit_code == 2 and "bogus" in unknown.stderr  # a usage error: the choices are shown


def _one_error_line(stderr: str) -> bool:
    return "Traceback" not in stderr and sum(line.startswith("error:") for line in stderr.splitlines()) == 1


def test_cli_input_and_output_mistakes(tmp_path: Path, files: tuple[Path, Path], run_exgra) -> None:
    gt, pred = files
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    cases = {
        "is a folder": ["--gt", tmp_path, "--pred", pred],
        "prediction file .*empty.jsonl is empty": ["--gt", gt, "--pred", empty],
        "output .* is a folder": ["--gt", gt, "--pred", pred, "-o", tmp_path],
        "a-file is a file, not a folder": ["--gt", gt, "--pred", pred, "-o", blocker / "m.json"],
        "must be different files": ["--gt", gt, "--pred", pred, "-o", "m.json", "--per-item", "./m.json"],
    }
    for message, args in cases.items():
        result = run_exgra("score", *args)
        assert result.exit_code == 1, (message, result.stderr)
        # rich wraps long lines of the one error message; compare the words
        assert _one_error_line(result.stderr) and re.search(message, " ".join(result.stderr.split()))
    assert blocker.read_text() == "keep me" and not Path("m.json").exists()


def test_cli_output_may_not_be_an_input(tmp_path: Path, files: tuple[Path, Path], run_exgra) -> None:
    """Issue #12.3: ``--answers X --output X --overwrite`` must refuse and leave the answers as they were."""
    gt, pred = files
    before = pred.read_bytes()
    for option in ("--output", "--per-item"):
        result = run_exgra("score", "--data", gt, "--answers", pred, option, pred, "--overwrite")
        assert result.exit_code == 1 and _one_error_line(result.stderr)
        assert "is also the input --answers" in " ".join(result.stderr.split())
        assert pred.read_bytes() == before
    gt_before = gt.read_bytes()
    result = run_exgra("score", "--gt", gt, "--pred", pred, "-o", gt, "--overwrite")  # old spellings
    assert result.exit_code == 1 and "is also the input --data" in " ".join(result.stderr.split())
    assert gt.read_bytes() == gt_before
    both = run_exgra("score", "--data", gt, "--gt", gt, "--answers", pred)
    assert both.exit_code == 2 and "old spelling" in both.stderr
    missing = run_exgra("score", "--answers", pred)
    assert missing.exit_code == 2 and "--data" in missing.stderr
