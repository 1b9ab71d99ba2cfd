"""`exgra extend-captions` end to end against the local mock server (real HTTP on loopback)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exgra.data.captions import (
    build_messages,
    estimate_requests,
    journal_path_for,
    merge_extended,
    parse_revision,
    qa_pairs,
)
from exgra.llm import ReplyError
from tests.llm.mock_openai_server import MockOpenAIServer

FAKE_KEY = "sk-fake-captions-7f3e9a1b2c"
REPO = Path(__file__).resolve().parents[2]


def make_records(n: int) -> list[dict]:
    records = [
        {
            "id": f"rec-{i}",
            "image": f"img_{i}.jpg",
            "conversatons" if i == 1 else "conversations": [
                {"from": "human", "value": f"<image>\nWhat does image {i} show?"},
                {"from": "gpt", "value": f"Finding number {i}."},
            ],
        }
        for i in range(n)
    ]
    records[2]["conversations"] += [
        {"from": "human", "value": "Any other finding?"},
        {"from": "gpt", "value": "Mild effusion."},
    ]
    return records


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    return tmp_path


def write_input(folder: Path, n: int) -> Path:
    path = folder / "input.json"
    path.write_text(json.dumps(make_records(n) + [{"id": "no-conv", "image": "x.jpg"}]))
    return path


def fast_args(server: MockOpenAIServer) -> list[str]:
    return ["--base-url", server.base_url, "--no-progress", "--timeout", "5"]


def test_pairs_messages_and_reply_parsing():
    turns = make_records(3)[2]["conversations"]
    assert qa_pairs(turns) == [
        (1, "<image>\nWhat does image 2 show?", "Finding number 2."),
        (3, "Any other finding?", "Mild effusion."),
    ]
    messages = build_messages("SYSTEM", "q", "a")
    assert messages[0] == {"role": "system", "content": "SYSTEM"}
    assert json.loads(messages[1]["content"]) == {"instruction": "q", "answer": "a"}
    assert parse_revision('```json\n{"revision": "two\\nlines"}\n```') == "two lines"
    for bad in ('{"explanation": {}}', '{"revision": ""}', "not json"):
        with pytest.raises(ReplyError):
            parse_revision(bad)


def test_merge_keeps_conversations_untouched():
    record = make_records(3)[2]
    original = json.loads(json.dumps(record))
    merged = merge_extended(record, {1: "long one", 3: "long two"}, "skip")
    assert merged["conversations"] == original["conversations"] and record == original
    assert [t["value"] for t in merged["conversations_long"]] == [
        original["conversations"][0]["value"],
        "long one",
        original["conversations"][2]["value"],
        "long two",
    ]
    assert merge_extended(record, None, "skip") is None
    assert merge_extended(record, None, "keep-original")["conversations_long"] == original["conversations"]


def test_full_run_with_faults(workdir, run_exgra):
    source = write_input(workdir, 12)
    out = workdir / "out" / "train.json"
    faults = ["429", "500", "drop", "malformed", "fenced", "slow", "429"]
    with MockOpenAIServer(faults=faults, slow_seconds=0.3) as server:
        result = run_exgra("extend-captions", source, "-o", out, *fast_args(server), "--concurrency", "4")
    assert result.exit_code == 0, result.stderr
    records = json.loads(out.read_text())
    inputs = {r["id"]: r for r in make_records(12)}
    assert [r["id"] for r in records] == [f"rec-{i}" for i in range(12)]  # input order, no-conv left out
    for record in records:
        source_record = inputs[record["id"]]
        key = "conversatons" if record["id"] == "rec-1" else "conversations"
        assert record[key] == source_record[key]
        answers = [t["value"] for t in record["conversations_long"][1::2]]
        assert answers == [f"EXTENDED: {t['value']}" for t in source_record[key][1::2]]
    assert set(server.faults_served) == {"429", "500", "drop", "malformed", "fenced", "slow"}
    journal_lines = [json.loads(x) for x in journal_path_for(out).read_text().splitlines()]
    entries = journal_lines[1:]
    assert sorted(e["index"] for e in entries) == list(range(12))
    assert all(e["model"] and e["response_ids"] and e["usage"]["prompt_tokens"] > 0 for e in entries)
    assert "records extended" in result.stdout and "retries / re-asks" in result.stdout
    # the finished output is never silently overwritten
    again = run_exgra("extend-captions", source, "-o", out, *fast_args(server))
    assert again.exit_code == 1 and "--resume" in again.stderr


@pytest.mark.parametrize("on_failure", ["skip", "keep-original"])
def test_failed_records_and_key_redaction(workdir, run_exgra, on_failure):
    source = write_input(workdir, 5)
    out = workdir / "train.json"
    with MockOpenAIServer(always_fail=("Finding number 3.",)) as server:
        result = run_exgra(
            "extend-captions", source, "-o", out, *fast_args(server), "--max-retries", "2",
            "--on-failure", on_failure,
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = {r["id"]: r for r in json.loads(out.read_text())}
    if on_failure == "skip":
        assert "rec-3" not in records and len(records) == 4
    else:
        assert records["rec-3"]["conversations_long"] == records["rec-3"]["conversations"]
    assert "rec-3" in result.stdout  # reported by id
    journal_text = journal_path_for(out).read_text()
    assert "HTTP 500" in journal_text and "***" in journal_text  # the server echoed the key back
    for text in (result.stdout, result.stderr, journal_text, out.read_text()):
        assert FAKE_KEY not in text


def test_dry_run_sends_nothing(workdir, run_exgra):
    source = write_input(workdir, 6)
    out = workdir / "train.json"
    with MockOpenAIServer() as server:
        result = run_exgra("extend-captions", source, "-o", out, *fast_args(server), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert server.requests == 0 and not out.exists() and not journal_path_for(out).exists()
    assert re.search(r"requests to send\s*│\s*7 │", result.stdout)  # 6 records, one has 2 pairs
    estimate = estimate_requests(make_records(6), "x" * 400)
    assert estimate.requests == 7 and estimate.prompt_tokens > 7 * 100


def test_dry_run_needs_no_key(workdir, run_exgra, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    source = write_input(workdir, 3)
    assert run_exgra("extend-captions", source, "-o", workdir / "o.json", "--dry-run").exit_code == 0
    result = run_exgra("extend-captions", source, "-o", workdir / "o.json")
    assert result.exit_code == 1 and "OPENAI_API_KEY" in result.stderr


def test_resume_after_torn_journal_line(workdir, run_exgra):
    source = write_input(workdir, 8)
    out = workdir / "train.json"
    with MockOpenAIServer() as server:
        assert (
            run_exgra("extend-captions", source, "-o", out, *fast_args(server), "--limit", "5").exit_code == 0
        )
        # simulate a crash: drop the output, keep 3 finished entries and a half-written fourth line
        journal = journal_path_for(out)
        lines = journal.read_text().splitlines(keepends=True)
        journal.write_text("".join(lines[:4]) + lines[4][:20])
        out.unlink()
        done = {json.loads(x)["index"] for x in lines[1:4]}
        before = server.requests
        result = run_exgra("extend-captions", source, "-o", out, *fast_args(server), "--resume")
    assert result.exit_code == 0, result.stderr
    done_requests = sum(2 if index == 2 else 1 for index in done)  # record 2 has two pairs
    assert server.requests - before == 9 - done_requests  # 8 records + 1 extra pair, minus finished
    assert [r["id"] for r in json.loads(out.read_text())] == [f"rec-{i}" for i in range(8)]
    # every journal line is complete JSON again and every record appears once
    indices = [json.loads(x)["index"] for x in journal_path_for(out).read_text().splitlines()[1:]]
    assert sorted(indices) == list(range(8))


def test_resume_refuses_a_different_input(workdir, run_exgra):
    source = write_input(workdir, 3)
    out = workdir / "train.json"
    with MockOpenAIServer() as server:
        assert run_exgra("extend-captions", source, "-o", out, *fast_args(server)).exit_code == 0
        source.write_text(json.dumps(make_records(4)))
        result = run_exgra("extend-captions", source, "-o", out, *fast_args(server), "--resume")
    assert result.exit_code == 1 and "different input" in result.stderr


def test_kill_9_and_resume_loses_and_duplicates_nothing(workdir):
    n = 60
    source = write_input(workdir, n)
    out = workdir / "train.json"
    journal = journal_path_for(out)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with MockOpenAIServer(latency=0.05) as server:
        command = [
            sys.executable, "-m", "exgra", "extend-captions", str(source), "-o", str(out),
            *fast_args(server), "--concurrency", "2",
        ]  # fmt: skip
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_text().count("\n") >= 11:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert not out.exists()
        killed_entries = journal.read_text().count("\n") - 1
        assert 10 <= killed_entries < n
        requests_before = server.requests
        resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == [f"rec-{i}" for i in range(n)]
    assert all(r["conversations_long"][1]["value"].startswith("EXTENDED: ") for r in records)
    # the resumed run only asked for what was not journaled (n records + 1 extra pair in total)
    assert server.requests - requests_before <= (n + 1) - killed_entries
    indices = [json.loads(x)["index"] for x in journal.read_text().splitlines()[1:]]
    assert len(indices) == len(set(indices)) == n


def test_missing_key_leaves_no_journal_and_outputs_are_checked_first(workdir, run_exgra, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    source = write_input(workdir, 3)
    out = workdir / "o.json"
    result = run_exgra("extend-captions", source, "-o", out, "--no-progress")
    assert result.exit_code == 1 and "OPENAI_API_KEY" in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["input.json"]  # no stale journal to trip --resume
    out.write_text("[]")
    for output, message in ((out, "already exists"), (workdir, "is a folder"), (out / "x.json", "is a file")):
        result = run_exgra("extend-captions", source, "-o", output, "--dry-run")
        assert (
            result.exit_code == 1
            and message in " ".join(result.stderr.split())
            and "Traceback" not in result.stderr
        )
    result = run_exgra("extend-captions", workdir / "missing.json", "-o", workdir / "new.json", "--dry-run")
    assert result.exit_code == 1 and "input file not found" in " ".join(result.stderr.split())
    assert out.read_text() == "[]"
