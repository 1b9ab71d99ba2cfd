"""Metric functions on hand-worked cases (REFERENCE §7.2 definitions) and BLEU against NLTK."""

from __future__ import annotations

import math
import random
import sys
import warnings

import pytest

from exgra.eval.metrics import (
    BLEU_WEIGHTS,
    LEGACY_CONTRACTIONS,
    LegacyCandidateMatcher,
    StrictCandidateMatcher,
    bleu_scores,
    choose_closed_option,
    closed_options,
    legacy_closed_hit,
    legacy_exact_match,
    legacy_f1,
    legacy_normalize,
    llava_med_closed_gate,
    parse_closed_options,
    sentence_bleu,
    sentence_bleu_many,
    strict_closed_hit,
    strict_normalize,
    token_f1,
)

# ---------------------------------------------------------------------------------------------
# Legacy normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("two lesions", "2 lesions"),  # number words
        ("none", "0"),
        ("zero or ten", "0 or 10"),
        ("the left lung", "left lung"),  # articles
        ("a mass and an effusion", "mass and effusion"),
        ("x-ray", "x ray"),  # mark not next to a space: replaced by a space
        ("left - right", "left right"),  # " -" present: the mark is deleted everywhere
        ("x-ray, chest", "x ray chest"),  # ", " present: ',' deleted; '-' has no space beside it
        ("1,000 x-ray", "1000 xray"),  # digit-comma-digit anywhere: every mark is deleted
        ("(left)", "left"),
        ("3.5 cm.", "3.5 cm"),  # periods kept only before a digit
        ("e.g. liver", "eg liver"),
        ("assistant: yes", "assistant: yes"),  # ':' is not stripped
        ("dont", "don't"),  # contraction table
        ("isnt", "isn't"),
        ("im", "im"),  # mixed-case keys ("Im") never fire on lower-cased words
        ("  many   spaces ", "many spaces"),
    ],
)
def test_legacy_normalize(raw: str, expected: str) -> None:
    assert legacy_normalize(raw) == expected


def test_legacy_normalize_removes_at_most_32_periods() -> None:
    text = "." * 40 + "x"
    once = legacy_normalize(text)
    assert once == "." * 8 + "x"
    assert legacy_normalize(once) == "x"  # so normalising twice is not idempotent here


def test_contraction_table_is_the_reference_one() -> None:
    assert len(LEGACY_CONTRACTIONS) == 120
    assert LEGACY_CONTRACTIONS["dont"] == "don't"
    assert LEGACY_CONTRACTIONS["somebody'd"] == "somebodyd"


# ---------------------------------------------------------------------------------------------
# Legacy open metrics (worked by hand)
# ---------------------------------------------------------------------------------------------


def test_legacy_f1_counts_prediction_multiplicity() -> None:
    # pred {left: 2, lung: 1}, gold {left: 1, kidney: 1}: tp = 2 (pred copies), fp = 1, fn = 1.
    f1, precision, recall = legacy_f1("left left lung", "left kidney")
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 3)  # a true recall would be 1/2
    assert f1 == pytest.approx(2 / 3)


def test_legacy_f1_recall_of_repeated_word() -> None:
    # pred {yes: 3}, gold {yes: 1, no: 1}: tp = 3, fp = 0, fn = 1 -> recall 3/4, precision 1.
    f1, precision, recall = legacy_f1("yes yes yes", "yes no")
    assert (precision, recall) == (1.0, 0.75)
    assert f1 == pytest.approx(2 * 0.75 / 1.75)


def test_legacy_f1_empty_or_disjoint_is_zero() -> None:
    assert legacy_f1("", "liver") == (0.0, 0.0, 0.0)
    assert legacy_f1("liver", "") == (0.0, 0.0, 0.0)
    assert legacy_f1("spleen", "liver") == (0.0, 0.0, 0.0)


def test_legacy_exact_match_is_precision_like() -> None:
    # distinct gold words in pred: {left} = 1; pred words with multiplicity = 3.
    assert legacy_exact_match("left left lung", "left kidney") == pytest.approx(1 / 3)
    assert legacy_exact_match("left lung", "left lung") == 1.0
    assert legacy_exact_match("", "liver") == 0.0


def test_legacy_closed_is_a_substring_test() -> None:
    assert legacy_closed_hit(legacy_normalize("there is a nodule"), "no")  # 'no' ⊂ 'nodule'
    assert legacy_closed_hit("normal", "no")
    assert not legacy_closed_hit("yes", "no")
    assert llava_med_closed_gate("normal")
    assert not llava_med_closed_gate("left side")


def test_legacy_candidate_matcher_first_argmax() -> None:
    matcher = LegacyCandidateMatcher(["left lung", "right lung", "liver", 3, ""])
    # similarities: 1/2, 1/2, 0, 0, 0 -> the first of the tied best.
    assert matcher.best("lung") == "left lung"
    assert matcher.best("right lung") == "right lung"  # 1/2, 1, 0, ...
    assert matcher.best("3") == "3"  # integer candidates become text
    assert matcher.best("nothing shared") == "left lung"  # all 0: the first candidate


# ---------------------------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------------------------


def test_bleu_hand_worked() -> None:
    # ref 3 words, hyp 2 words: brevity penalty exp(1 - 3/2); unigram precision 2/2.
    scores = bleu_scores(["left", "lower", "lobe"], ["left", "lobe"])
    assert scores["bleu_1"] == pytest.approx(math.exp(-0.5))
    # no bigram match: that order contributes log(float min), so the score is ~0 but not exactly 0.
    assert 0 < scores["bleu_2"] < 1e-300
    # hyp longer than ref: no penalty; p1 = 2/3, p2 = 1/2.
    scores = bleu_scores(["a", "b"], ["a", "b", "c"])
    assert scores["bleu_1"] == pytest.approx(2 / 3)
    assert scores["bleu_2"] == pytest.approx(1 / 2)


def test_bleu_single_word_answer() -> None:
    scores = bleu_scores(["liver"], ["liver"])
    assert scores["bleu_1"] == 1.0
    assert scores["bleu"] < 1e-200  # "0" with default weights (3 orders have no n-gram)


def test_bleu_no_unigram_match_and_empty_hypothesis_are_zero() -> None:
    assert sentence_bleu_many(["liver"], ["spleen"], BLEU_WEIGHTS.values()) == [0.0] * 4
    assert sentence_bleu(["liver"], []) == 0.0


def test_bleu_equals_nltk_on_random_cases() -> None:
    pytest.importorskip("nltk")
    from nltk.translate.bleu_score import sentence_bleu as nltk_bleu

    rng = random.Random(1234)
    vocab = ["a", "b", "c", "d", "e"]
    weights = [*BLEU_WEIGHTS.values(), (0.5, 0.5), (0.1, 0.2, 0.3, 0.4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3000):
            ref = [rng.choice(vocab) for _ in range(rng.randint(1, 9))]
            hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
            expected = [nltk_bleu([ref], hyp, weights=w) for w in weights]
            assert sentence_bleu_many(ref, hyp, weights) == expected, (ref, hyp)


def test_bleu_float_min_matches_nltk_convention() -> None:
    # exact value: penalty 1 (equal length), p1 = 1/2, bigram none -> exp(log(min)).
    value = sentence_bleu(["a", "b"], ["a", "c"], (0, 1, 0, 0))
    assert value == math.exp(math.log(sys.float_info.min))


# ---------------------------------------------------------------------------------------------
# Strict metrics
# ---------------------------------------------------------------------------------------------


def test_strict_normalize() -> None:
    assert strict_normalize("Assistant: The answer is Two.") == "answer is 2"
    assert strict_normalize("X-ray (chest), 1,000 cells; 3.5 cm!") == "x ray chest 1000 cells 3.5 cm"
    assert strict_normalize("Isn't it the LEFT lung?") == "isn't it left lung"


def test_token_f1_clips_counts() -> None:
    # overlap {left: 1}: precision 1/3, recall 1/2, F1 = 0.4.
    f1, precision, recall = token_f1("left left lung", "left kidney")
    assert (precision, recall) == (pytest.approx(1 / 3), 0.5)
    assert f1 == pytest.approx(0.4)
    assert token_f1("", "liver") == (0.0, 0.0, 0.0)


def test_strict_closed_reads_whole_words() -> None:
    yes_no = ["yes", "no"]
    assert choose_closed_option("no there is no fracture", yes_no) == "no"
    assert choose_closed_option("there is nodule", yes_no) is None  # 'no' is not 'nodule'
    assert not strict_closed_hit("normal", "no", yes_no)
    assert choose_closed_option("yes no other abnormality", yes_no) == "yes"  # starts with an option
    assert choose_closed_option("it could be yes or no", yes_no) is None  # hedged
    assert choose_closed_option("findings are normal yes", yes_no) == "yes"  # the only option


def test_closed_options_from_question_suffix() -> None:
    question = 'Which side is abnormal? (Answer with either "Left" or "Right").\n<image>'
    assert parse_closed_options(question) == ["left", "right"]
    assert parse_closed_options("Is it normal?") == []
    assert closed_options("Is it normal?", "yes") == ["yes", "no"]
    assert closed_options("Which lobe?", "upper lobe") == ["upper lobe"]
    options = closed_options(question, "left")
    assert strict_closed_hit(strict_normalize("The lesion is on the left side."), "left", options)
    assert not strict_closed_hit(strict_normalize("Left or right, unclear"), "right", options)
    assert not strict_closed_hit("both left and right", "left", options)


def test_strict_candidate_matcher() -> None:
    matcher = StrictCandidateMatcher(["Left lung", "right lung", "liver"])
    assert matcher.best("liver") == "liver"  # exact
    assert matcher.best("right lung apex") == "right lung"  # best token F1
    assert matcher.best("spleen") is None
