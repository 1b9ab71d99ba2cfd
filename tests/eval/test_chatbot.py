"""`exgra eval chatbot` against the local mock judge: matching, scoring, malformed replies, resume."""

from __future__ import annotations

import json

import pytest

from exgra.errors import DataError
from exgra.eval.chatbot import (
    build_judge_messages,
    match_answers,
    parse_scores,
    summarize_reviews,
)
from exgra.llm import ReplyError
from exgra.prompts import load_prompt
from tests.llm.mock_openai_server import MockOpenAIServer, judge_responder

FAKE_KEY = "sk-fake-judge-55aa77bb99"


def questions(n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "question_id": i,
                "text": f"What is seen in figure {i}?\n<image>",
                "gpt4_answer": f"Reference answer {i}.",
                "fig_label": f"Figure {i}",
                "fig_caption": f"Caption {i}.",
                "in_text_mention": f"As shown in Figure {i}.",
                "type": "conversation" if i % 2 == 0 else "description",
                "domain": {
                    "chest_xray": i < 3,
                    "mri": i >= 3,
                    "histology": False,
                    "gross": False,
                    "ct_scan": False,
                },
            }
        )
    return rows


def answers(n: int = 6) -> list[dict]:
    # question 0 gets a "perfect" answer (judged 8 8), the rest 8 6; written in reverse order on purpose
    return [
        {"question_id": i, "text": "perfect" if i == 0 else f"Model answer {i}."} for i in reversed(range(n))
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    return write_jsonl(tmp_path / "q.jsonl", questions()), write_jsonl(tmp_path / "a.jsonl", answers())


def test_parse_scores():
    assert parse_scores("8 6\nbecause") == (8.0, 6.0)
    assert parse_scores("**7.5, 9**\n") == (7.5, 9.0)
    for bad in ("Assistant 1: 8\nAssistant 2: 6", "8\n6", "11 3", "0 5", ""):
        with pytest.raises(ReplyError):
            parse_scores(bad)


def test_match_by_id_and_errors():
    pairs = match_answers(questions(3), answers(3))
    assert [(q["question_id"], a["question_id"]) for q, a in pairs] == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(DataError, match="1 questions have no answer"):
        match_answers(questions(3), answers(2))
    with pytest.raises(DataError, match="appears twice"):
        match_answers(questions(2), answers(2) + answers(1))


def test_judge_message_layout():
    messages = build_judge_messages(questions(1)[0], {"text": "mine"}, load_prompt("chatbot_judge"), "SYS")
    user = messages[1]["content"]
    assert messages[0]["content"] == "SYS"
    assert user.index("[Context]") < user.index("[Question]") < user.index("[Assistant 1]")
    assert "Figure 0: Caption 0." in user and "<image>" not in user
    assert (
        "Reference answer 0." in user.split("[Assistant 2]")[0] and "mine" in user.split("[Assistant 2]")[1]
    )
    assert "first line" in user


def test_relative_score_is_mean_of_ratios():
    reviews = [
        {"scores": [8, 4], "categories": ["all", "conversation"]},
        {"scores": [4, 4], "categories": ["all", "description"]},
    ]
    summary = summarize_reviews(reviews)
    assert summary["all"]["relative_score"] == pytest.approx(75.0)  # (50 + 100) / 2, not 8/12
    assert summary["all"]["gpt4_score"] == 6 and summary["all"]["pred_score"] == 4
    assert summary["conversation"]["relative_score"] == pytest.approx(50.0)


def test_cli_end_to_end_with_malformed_replies(files, tmp_path, run_exgra):
    q, a = files
    out = tmp_path / "reviews.jsonl"
    with MockOpenAIServer(responder=judge_responder, faults=["malformed", "500", "malformed"]) as server:
        result = run_exgra(
            "eval", "chatbot", "--questions", q, "--answers", a, "-o", out, "--base-url", server.base_url,
            "--no-progress",
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    reviews = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["question_id"] for r in reviews) == list(range(6))
    assert all(r["response_ids"] and r["model"] for r in reviews)
    summary = json.loads((tmp_path / "reviews.summary.json").read_text())
    expected_all = 100 * (1.0 + 5 * 0.75) / 6
    assert summary["scores"]["all"]["relative_score"] == pytest.approx(expected_all)
    assert summary["scores"]["chest_xray"]["n"] == 3 and summary["scores"]["mri"]["n"] == 3
    assert summary["scores"]["conversation"]["pred_score"] == pytest.approx((8 + 6 + 6) / 3)
    assert "relative_score" in result.stdout and "chest_xray" in result.stdout
    assert FAKE_KEY not in result.stdout + result.stderr + out.read_text()


def test_persistent_malformed_is_reported_then_resumed(files, tmp_path, run_exgra):
    q, a = files
    out = tmp_path / "reviews.jsonl"
    server = MockOpenAIServer(responder=judge_responder, always_malformed=("perfect",))
    with server:
        args = ["eval", "chatbot", "--questions", q, "--answers", a, "-o", out, "--base-url", server.base_url]
        first = run_exgra(*args, "--concurrency", "1", "--max-reasks", "2", "--no-progress")
        assert first.exit_code == 0, first.stderr
        assert "1 questions could not be judged" in first.stdout, first.stdout
        summary = json.loads((tmp_path / "reviews.summary.json").read_text())
        assert summary["failed_question_ids"] == ["0"] and summary["reviewed"] == 5
        assert server.faults_served == {"malformed": 3}  # asked once, re-asked twice
        server.always_malformed = ()
        before = server.requests
        refused = run_exgra(*args)
        assert refused.exit_code == 1 and "--resume" in refused.stderr
        second = run_exgra(*args, "--resume", "--no-progress")
        assert second.exit_code == 0, second.stderr
        assert server.requests - before == 1  # only the failed question is judged again
    summary = json.loads((tmp_path / "reviews.summary.json").read_text())
    assert summary["reviewed"] == 6 and summary["failed_question_ids"] == []
    assert len(out.read_text().splitlines()) == 6


def test_mismatched_answers_fail_with_one_line(files, tmp_path, run_exgra):
    q, _ = files
    a = write_jsonl(tmp_path / "short.jsonl", answers(4))
    result = run_exgra("eval", "chatbot", "--questions", q, "--answers", a, "-o", tmp_path / "r.jsonl")
    assert result.exit_code == 1 and "2 questions have no answer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_key_loses_no_reviews_and_outputs_are_checked_first(files, tmp_path, run_exgra, monkeypatch):
    q, a = files
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text('{"question_id": 0, "scores": [8, 8]}\n')
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    base = ["eval", "chatbot", "--questions", q, "--answers", a, "--no-progress"]
    result = run_exgra(*base, "-o", reviews, "--overwrite")
    assert result.exit_code == 1 and "OPENAI_API_KEY" in result.stderr
    # --overwrite must not truncate the earlier reviews before the run can actually start
    assert reviews.read_text() == '{"question_id": 0, "scores": [8, 8]}\n'
    for output, message in ((tmp_path, "is a folder"), (reviews / "x.jsonl", "is a file, not a folder")):
        result = run_exgra(*base, "-o", output)
        assert (
            result.exit_code == 1
            and message in " ".join(result.stderr.split())
            and "Traceback" not in result.stderr
        )
    (tmp_path / "r.summary.json").write_text("{}")
    result = run_exgra(*base, "-o", tmp_path / "r.jsonl")
    assert result.exit_code == 1 and "r.summary.json already exists" in " ".join(result.stderr.split())
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    result = run_exgra("eval", "chatbot", "--questions", q, "--answers", empty, "-o", tmp_path / "n.jsonl")
    assert (
        result.exit_code == 1
        and "answers file" in result.stderr
        and "is empty" in " ".join(result.stderr.split())
    )
