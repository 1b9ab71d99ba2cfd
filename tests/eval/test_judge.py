"""The VQA LLM judge against the local mock OpenAI server: verdicts, malformed replies, retries, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exgra.errors import ExgraError
from exgra.eval.judge import JudgeSettings, parse_verdict
from exgra.eval.protocol_scoring import score_protocol
from exgra.eval.protocols import ask
from exgra.llm import LLMSettings, ReplyError
from tests.llm.mock_openai_server import MockOpenAIServer

SYNONYMS = {"hepatic": "liver", "pulmonary": "lung", "lungs": "lung"}


def synonym_judge(messages: list[dict[str, str]]) -> str:
    """A judge that knows a few synonyms: correct when every gold word is in the answer (after mapping)."""
    text = messages[-1]["content"]
    gold = re.search(r"^Reference answer: (.*)$", text, re.MULTILINE).group(1).lower().split()
    answer = re.search(r"^Model answer: (.*)$", text, re.MULTILINE).group(1).lower().split()
    words = {SYNONYMS.get(word, word) for word in answer}
    return json.dumps({"correct": all(word in words for word in gold)})


QUESTIONS = [  # (id, question, gold, answer_type, reply)
    (1, "Which organ is shown?", "liver", "OPEN", "hepatic"),  # judge: right; exact match: wrong
    (2, "Which organ is abnormal?", "lung", "OPEN", "pulmonary lungs"),  # judge: right
    (3, "Where is the mass?", "left lung", "OPEN", "right lung"),  # judge: wrong
    (4, "Which side?", "right", "OPEN", "right"),  # both right
    (5, "Is it normal?", "yes", "CLOSED", "yes"),  # closed: never sent to the judge
]


def _write(tmp_path: Path, replies: dict[int, str] | None = None) -> tuple[Path, Path]:
    records, lines = [], []
    for qid, question, gold, kind, reply in QUESTIONS:
        reply = (replies or {}).get(qid, reply)
        records.append(
            {
                "id": qid,
                "image": "x.png",
                "answer_type": kind,
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": gold}],
            }
        )
        asked = ask("medevalkit", question, gold)
        lines.append(json.dumps({"question_id": qid, "prompt": asked + "\n<image>", "text": reply}))
    gt, pred = tmp_path / "test.json", tmp_path / "answers.jsonl"
    gt.write_text(json.dumps(records))
    pred.write_text("\n".join(lines) + "\n")
    return gt, pred


def _settings(server: MockOpenAIServer, journal: Path, model: str = "judge-1") -> JudgeSettings:
    llm = LLMSettings(
        model=model,
        base_url=server.base_url,
        concurrency=3,
        backoff_base=0.01,
        backoff_cap=0.05,
        timeout=5.0,
        max_reasks=2,
        temperature=0.0,
    )
    return JudgeSettings(llm=llm, journal=journal)


def test_parse_verdict() -> None:
    assert parse_verdict('```json\n{"correct": true}\n```') is True
    assert parse_verdict('Sure. {"correct": false}') is False
    for bad in ("yes", '{"correct": "yes"}', '{"verdict": true}'):
        with pytest.raises(ReplyError):
            parse_verdict(bad)


def test_judge_scores_open_answers_with_retries_and_malformed_replies(tmp_path: Path) -> None:
    gt, pred = _write(tmp_path)
    journal = tmp_path / "verdicts.jsonl"
    faults = ["malformed", "500", "429", "fenced"]
    with MockOpenAIServer(synonym_judge, latency=0.05, faults=faults) as server:
        report = score_protocol(gt, pred, "medevalkit", judge=_settings(server, journal))
        assert server.faults_served == {"malformed": 1, "500": 1, "429": 1, "fenced": 1}
        assert 1 < server.max_in_flight <= 3  # concurrent, within --judge-concurrency
        assert server.completed == 4 + 1  # four verdicts (one fenced, repaired) and the malformed reply
    metrics = report.metrics
    verdicts = {item.id: item.scores.get("judge_correct") for item in report.items}
    assert verdicts == {1: True, 2: True, 3: False, 4: True, 5: None}
    assert metrics["open_exact_match"] == pytest.approx(25.0)  # only "right" == "right"
    assert metrics["open_accuracy"] == pytest.approx(75.0)  # the judge's 3 of 4
    assert metrics["accuracy"] == pytest.approx(80.0)  # 3 open + 1 closed of 5
    assert metrics["open_scoring"] == "llm-judge"
    assert metrics["judge"]["judged"] == 4 and metrics["judge"]["failed"] == 0
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines[0]["kind"] == "exgra-vqa-judge" and lines[0]["judge_model"] == "judge-1"
    assert sorted(entry["question_id"] for entry in lines[1:]) == ["1", "2", "3", "4"]


def test_failed_verdicts_fall_back_to_exact_match_and_resume(tmp_path: Path) -> None:
    gt, pred = _write(tmp_path)
    journal = tmp_path / "verdicts.jsonl"
    with MockOpenAIServer(synonym_judge, always_malformed=("hepatic",)) as server:
        first = score_protocol(gt, pred, "medevalkit", judge=_settings(server, journal))
        assert server.faults_served["malformed"] == 3  # first ask + 2 re-asks
        assert first.metrics["judge"]["failed"] == 1 and first.metrics["judge"]["failed_ids"] == ["1"]
        # question 1 fell back to exact match ("hepatic" != "liver"): 2 of 4 open answers right
        assert first.metrics["open_accuracy"] == pytest.approx(50.0)

    with MockOpenAIServer(synonym_judge) as healthy:
        second = score_protocol(gt, pred, "medevalkit", judge=_settings(healthy, journal))
        assert healthy.requests == 1  # only the failed question is judged again
        assert second.metrics["judge"]["reused_from_journal"] == 3
        assert second.metrics["open_accuracy"] == pytest.approx(75.0)
        # A changed reply is judged again; the others are reused.
        gt, pred = _write(tmp_path, replies={3: "left lung"})
        third = score_protocol(gt, pred, "medevalkit", judge=_settings(healthy, journal))
        assert healthy.requests == 2
        assert third.metrics["open_accuracy"] == pytest.approx(100.0)
        with pytest.raises(ExgraError, match="another judge model .*'judge-1'.*'judge-2'"):
            score_protocol(gt, pred, "medevalkit", judge=_settings(healthy, journal, model="judge-2"))


def test_score_cli_with_judge_and_without(tmp_path: Path, run_exgra) -> None:
    gt, pred = _write(tmp_path)
    plain = run_exgra(
        "score", "--gt", gt, "--pred", pred, "--protocol", "medevalkit", "-o", tmp_path / "a.json"
    )
    assert plain.exit_code == 0
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["open_scoring"] == "exact-match" and "judge" not in saved  # the deterministic fallback
    with MockOpenAIServer(synonym_judge) as server:
        judged = run_exgra(
            "score", "--gt", gt, "--pred", pred, "--protocol", "medevalkit", "-o", tmp_path / "b.json",
            "--judge-model", "judge-1", "--judge-base-url", server.base_url,
        )  # fmt: skip
    assert judged.exit_code == 0, judged.stderr
    assert json.loads((tmp_path / "b.json").read_text())["open_accuracy"] == pytest.approx(75.0)
    assert (tmp_path / "answers.judge.jsonl").is_file()
    refused = run_exgra("score", "--gt", gt, "--pred", pred, "--protocol", "strict", "--judge-model", "m")
    assert refused.exit_code == 1 and "applies to the medevalkit protocol" in refused.stderr


def test_eval_with_the_judge_in_one_job(tmp_path: Path, run_exgra) -> None:
    from tests.eval.helpers import build_demo, save_tiny_model

    demo = build_demo(tmp_path / "demo", num_samples=40)
    model = save_tiny_model(tmp_path / "model")
    output = tmp_path / "answers.jsonl"
    with MockOpenAIServer(synonym_judge) as server:
        result = run_exgra(
            "eval", "vqa", "--model", model, "--data", demo.test, "--images", demo.image_folder, "-o", output,
            "--max-new-tokens", "3", "--protocol", "medevalkit", "--judge-model", "j", "--judge-base-url",
            server.base_url,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        records = json.loads(Path(demo.test).read_text())
        open_ids = {
            str(r["id"])
            for r in records
            if r["conversations"][1]["value"].lower().strip() not in ("yes", "no")
        }
        assert server.completed == len(open_ids)
    metrics = json.loads((tmp_path / "answers.metrics.json").read_text())
    assert metrics["open_scoring"] == "llm-judge" and metrics["judge"]["judged"] == len(open_ids)
    journal = [json.loads(line) for line in (tmp_path / "answers.judge.jsonl").read_text().splitlines()[1:]]
    assert {entry["question_id"] for entry in journal} == open_ids
