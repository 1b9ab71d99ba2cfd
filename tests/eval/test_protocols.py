"""Protocol presets on hand-worked cases from their written definitions (docs/scoring.md, PEERS §7).

Each expected value below was worked out by hand from the definition quoted beside it, not by running
the code: the cases are the ones where protocols disagree (a reply with both yes and no, "no" inside
"nodule", number words, articles, punctuation, multi-word gold answers, answer markers and boxes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exgra.errors import ExgraError
from exgra.eval.protocol_metrics import last_boxed, medevalkit_parse, squad_normalize, tokenized_f1
from exgra.eval.protocol_scoring import score_protocol, score_protocol_items
from exgra.eval.protocols import PROTOCOLS, ask, get_protocol, strip_options_suffix

YES_NO = ' (Answer with either "Yes" or "No").'


def _item_scores(items, protocol, **kwargs) -> list[float]:
    _, results = score_protocol_items(items, protocol, **kwargs)
    return [result.scores["score"] for result in results]


# ------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------


def test_prompt_styles_ask_what_each_protocol_asks() -> None:
    closed = "Is the heart enlarged?" + YES_NO
    assert ask("data", closed, "Yes") == closed
    assert ask("no-options", closed, "Yes") == "Is the heart enlarged?"
    # MedEvalKit picks its instruction from the gold answer, not from answer_type.
    assert ask("medevalkit", closed, "Yes") == (
        "Is the heart enlarged?\nPlease output 'yes' or 'no'(no extra output)."
    )
    assert ask("medevalkit", "Which organ?", "liver") == "Which organ?\nPlease answer the question concisely."
    assert ask("medevalkit", "Is it normal?", "yes.").endswith("Please answer the question concisely.")
    left_right = 'Which side? (Answer with either "left" or "right").'
    assert strip_options_suffix(left_right) == "Which side?"
    assert {p.prompt for p in PROTOCOLS.values()} == {"data", "no-options", "medevalkit"}
    with pytest.raises(ExgraError, match="unknown protocol 'nope'; choose one of exgra-med"):
        get_protocol("nope")


# ------------------------------------------------------------------------------------------------
# medevalkit: PEERS §7 rules 1-7
# ------------------------------------------------------------------------------------------------


def test_medevalkit_closed_questions() -> None:
    items = [
        ("Yes and no", "yes", "CLOSED"),  # both yes and no occur: wrong (rule 5)
        ("nodule", "no", "CLOSED"),  # "no" inside "nodule", no "yes": counts as no (quirk)
        ("Nodule.", "yes", "CLOSED"),  # reads as no: wrong
        ("eyes", "yes", "CLOSED"),  # "yes" inside "eyes": counts as yes (quirk)
        ("I don't know", "no", "CLOSED"),  # "no" inside "know": counts as no (quirk)
        ("Yes.\n", "Yes", "CLOSED"),  # periods and newlines removed; gold lower-cased
        ("there is a boxed answer", "yes", "CLOSED"),  # "boxed" without a complete box -> "None"
        ("The answer is \\boxed{no}", "no", "CLOSED"),  # last box's content
    ]
    assert _item_scores(items, "medevalkit") == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_medevalkit_open_questions_and_closedness_from_gold() -> None:
    items = [
        ("liver", "Liver ", "OPEN"),  # lower-cased and stripped: equal
        ("liver.", "liver", "OPEN"),  # punctuation kept: wrong
        ("Answer: liver", "liver", "OPEN"),  # text after "answer:" is " liver" (not stripped): wrong
        ("the liver", "liver", "OPEN"),  # no article handling: wrong
        ("two", "2", "OPEN"),  # no number handling: wrong
        ("The answer is \\boxed{Left Lung}", "left lung", "OPEN"),  # box content, multi-word gold
        ("<answer>right lung</answer>", "right lung", "OPEN"),  # <answer> tags
        ("", "liver", "OPEN"),  # empty reply: wrong (MedEvalKit's ROUGE step would crash)
        ("yes.", "yes.", "CLOSED"),  # gold "yes." is not exactly yes/no: an OPEN exact match, right
    ]
    metrics, results = score_protocol_items(items, "medevalkit")
    assert [r.scores["score"] for r in results] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert [r.answer_type for r in results][-1] == "OPEN"
    assert results[-1].scores["data_answer_type"] == "CLOSED"
    assert (metrics["num_open"], metrics["num_closed"]) == (9, 0)
    assert metrics["closed_accuracy"] is None
    assert metrics["open_exact_match"] == pytest.approx(4 / 9 * 100)
    assert metrics["open_scoring"] == "exact-match"


def test_medevalkit_overall_accuracy_is_over_all_questions() -> None:
    items = [
        ("yes", "yes", "CLOSED"),
        ("no", "yes", "CLOSED"),
        ("yes", "yes", "CLOSED"),
        ("lung", "lung", "OPEN"),
    ]
    metrics, _ = score_protocol_items(items, "medevalkit")
    # 3 of 4 right overall; closed 2/3; open 1/1 (not the mean of the two).
    assert metrics["accuracy"] == pytest.approx(75.0)
    assert metrics["closed_accuracy"] == pytest.approx(200 / 3)
    assert metrics["open_exact_match"] == pytest.approx(100.0)
    assert metrics["protocol"]["name"] == "medevalkit" and metrics["protocol"]["version"] == "1"


def test_medevalkit_parser_markers_in_order() -> None:
    # Each marker keeps the text after its last occurrence, in MedEvalKit's order.
    assert medevalkit_parse("**Answer**: Liver") == " liver"
    assert medevalkit_parse("the answer is: lung") == ": lung"  # "answer is" -> ": lung"; no "answer:" left
    assert medevalkit_parse("answer: a. final answer is b") == " b"  # "answer is" comes before "answer:"
    assert last_boxed("\\boxed{a {b}} and \\boxed{c") == "a {b}"  # the last *complete* box


# ------------------------------------------------------------------------------------------------
# The other presets
# ------------------------------------------------------------------------------------------------


def test_exgra_med_and_llava_med_closed_rules_differ() -> None:
    question = 'Which side? (Answer with either "left" or "right").'
    items = [
        ("Yes and no", "yes", "CLOSED", "q" + YES_NO),  # gold is a substring: hit in both
        ("nodule", "no", "CLOSED", "q" + YES_NO),  # "no" in "nodule": hit in both
        ("left", "left", "CLOSED", question),  # no yes/no in the reply: LLaVA-Med's gate fails
        ("the two kidneys", "2 kidneys", "OPEN", "how many?"),  # number words and articles normalised
    ]
    assert _item_scores(items, "exgra-med") == [1.0, 1.0, 1.0, 1.0]
    assert _item_scores(items, "llava-med") == [1.0, 1.0, 0.0, 1.0]
    metrics, _ = score_protocol_items(items, "llava-med")
    # overall = mean of open recall (100) and closed accuracy (2 of 3)
    assert metrics["mean_open_closed"] == pytest.approx((100 + 200 / 3) / 2)


def test_strict_reads_whole_words_and_options() -> None:
    items = [
        ("Yes and no", "yes", "CLOSED", "q" + YES_NO),  # starts with the option "yes": that is its answer
        ("nodule", "no", "CLOSED", "q" + YES_NO),  # no whole-word option: wrong
        ("It is on the right.", "right", "CLOSED", 'Side? (Answer with either "left" or "right").'),
        ("two", "2", "OPEN", "How many?"),  # number words become digits
        ("The liver.", "liver", "OPEN", "Organ?"),  # articles and punctuation dropped
        ("left lung", "right lung", "OPEN", "Where?"),  # multi-word gold: exact match fails
    ]
    assert _item_scores(items, "strict") == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    metrics, _ = score_protocol_items(items, "strict")
    assert metrics["accuracy"] == pytest.approx(4 / 6 * 100)


def test_tokenized_f1_is_squad_token_f1() -> None:
    assert squad_normalize("The Left, lung!") == "left lung"
    items = [
        ("Yes and no", "yes", "CLOSED"),  # P 1/3, R 1 -> 0.5
        ("two", "2", "OPEN"),  # no number handling -> 0
        ("The liver.", "liver", "OPEN"),  # articles, punctuation removed -> 1
        ("right lung", "left lung", "OPEN"),  # P 1/2, R 1/2 -> 0.5
        ("lung left", "left lung", "OPEN"),  # bag of tokens -> 1
    ]
    assert _item_scores(items, "tokenized-f1") == pytest.approx([0.5, 0.0, 1.0, 0.5, 1.0])
    metrics, _ = score_protocol_items(items, "tokenized-f1")
    assert metrics["f1"] == pytest.approx(300 / 5)
    assert metrics["f1_open"] == pytest.approx(250 / 4)
    assert metrics["f1_closed"] == pytest.approx(50.0)
    assert tokenized_f1("", "") == 1.0 and tokenized_f1("", "a liver") == 0.0


def test_scorer_variant_only_for_exgra_med() -> None:
    items = [("yes", "yes", "CLOSED")]
    assert score_protocol_items(items, "exgra-med", scorer="llava-med-pre35")[0]["scorer"]["name"] == (
        "llava-med-pre35"
    )
    with pytest.raises(ExgraError, match="--scorer strict does not combine with --protocol medevalkit"):
        score_protocol_items(items, "medevalkit", scorer="strict")


# ------------------------------------------------------------------------------------------------
# Files: the prompt check of `exgra score --protocol`
# ------------------------------------------------------------------------------------------------


def _files(tmp_path: Path, prompt_style: str | None, write_run_info: bool) -> tuple[Path, Path]:
    records = [
        {"id": 1, "image": "a.png", "answer_type": "CLOSED",
         "conversations": [{"from": "human", "value": "Is it big?" + YES_NO + "\n<image>"},
                           {"from": "gpt", "value": "yes"}]},
        {"id": 2, "image": "a.png", "answer_type": "OPEN",
         "conversations": [{"from": "human", "value": "Which organ?\n<image>"},
                           {"from": "gpt", "value": "liver"}]},
    ]  # fmt: skip
    gt = tmp_path / "test.json"
    gt.write_text(json.dumps(records))
    pred = tmp_path / "answers.jsonl"
    lines = []
    for record, text in zip(records, ["yes", "liver"], strict=True):
        question = record["conversations"][0]["value"].replace("<image>", "").strip()
        asked = ask(prompt_style or "data", question, record["conversations"][1]["value"])
        lines.append(json.dumps({"question_id": record["id"], "prompt": asked + "\n<image>", "text": text}))
    pred.write_text("\n".join(lines) + "\n")
    if write_run_info:
        (tmp_path / "answers.run.json").write_text(json.dumps({"prompt": prompt_style or "data"}))
    return gt, pred


@pytest.mark.parametrize("write_run_info", [True, False])
def test_score_refuses_answers_asked_another_way(tmp_path: Path, write_run_info: bool, run_exgra) -> None:
    gt, pred = _files(tmp_path, "medevalkit", write_run_info)
    report = score_protocol(gt, pred, "medevalkit")
    assert report.metrics["accuracy"] == 100.0 and report.metrics["prompt_mismatch"] is False
    with pytest.raises(ExgraError, match="must be chosen at eval time"):
        score_protocol(gt, pred, "exgra-med")
    result = run_exgra("score", "--gt", gt, "--pred", pred, "--protocol", "tokenized-f1")
    assert result.exit_code == 1 and "--force-protocol" in result.stderr
    out = tmp_path / "m.json"
    forced = run_exgra(
        "score", "--gt", gt, "--pred", pred, "--protocol", "tokenized-f1", "--force-protocol", "-o", out
    )
    assert forced.exit_code == 0 and "warning" in forced.stderr
    saved = json.loads(out.read_text())
    assert saved["protocol"] == {
        "name": "tokenized-f1",
        "version": "1",
        "prompt": "data",
        "scorer": "tokenized-f1",
    }
    assert saved["prompt_mismatch"] is True and saved["arguments"]["protocol"] == "tokenized-f1"


def test_score_protocol_accepts_answers_from_before_protocols(tmp_path: Path) -> None:
    # A run.json without "prompt" (exgra eval before protocols) asked the data's question.
    gt, pred = _files(tmp_path, None, write_run_info=False)
    (tmp_path / "answers.run.json").write_text(json.dumps({"template": "legacy"}))
    assert score_protocol(gt, pred, "strict").metrics["accuracy"] == 100.0
    with pytest.raises(
        ExgraError, match="'data' prompt .* but protocol llava-med asks with the 'no-options'"
    ):
        score_protocol(gt, pred, "llava-med")
