"""Regression tests of issue #12 (command side) and #13 points 3-4 that need a server or a signal.

Failed LLM runs (nothing succeeded -> exit 1, partial -> counted with the resume hint), Ctrl-C (exit 130
with the CLI's "interrupted" line; download does not wait for the file in flight), resumed runs that
refuse another judge, prompt or model by name, renamed spellings, and ``--help`` for every command.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exgra.cli import COMMAND_MODULES, build_command
from tests.data.hub_server import StandInHub
from tests.llm.mock_openai_server import MockOpenAIServer, caption_responder, judge_responder

DEAD_ENDPOINT = "http://127.0.0.1:9/v1"
REPO = Path(__file__).resolve().parents[1]


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return " ".join(stderr.split())


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-42")
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    records = [
        {
            "id": f"r{i}",
            "conversations": [{"from": "human", "value": f"Q{i}?"}, {"from": "gpt", "value": f"A{i}"}],
        }
        for i in range(3)
    ]
    (tmp_path / "records.json").write_text(json.dumps(records))
    questions = [
        {"question_id": i, "text": f"Q{i}?", "gpt4_answer": "A", "type": "conversation"} for i in range(3)
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    answers = [{"question_id": i, "text": f"answer {i}"} for i in range(3)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    return tmp_path


def captions(*extra: str) -> list[str]:
    return ["extend-captions", "records.json", "-o", "out.json", "--no-progress", "--timeout", "5", *extra]


def chatbot(*extra: str) -> list[str]:
    files = ["--questions", "q.jsonl", "--answers", "a.jsonl", "-o", "r.jsonl"]
    return ["eval", "chatbot", *files, "--no-progress", "--timeout", "5", *extra]


def test_extend_captions_where_nothing_succeeded_fails_then_resumes(ws: Path, run_exgra) -> None:
    """Issue #12.7: a dead endpoint is a failure, not an empty training file."""
    failed = run_exgra(*captions("--base-url", DEAD_ENDPOINT, "--max-retries", "0"))
    assert failed.exit_code == 1
    assert "all 3 records failed, nothing was written" in one_error_line(failed.stderr)
    assert not (ws / "out.json").exists()
    with MockOpenAIServer(responder=caption_responder) as server:
        resumed = run_exgra(*captions("--base-url", server.base_url, "--resume"))
    assert resumed.exit_code == 0, resumed.stderr
    assert len(json.loads((ws / "out.json").read_text())) == 3


def test_extend_captions_partial_failure_says_how_many_and_how_to_resume(ws: Path, run_exgra) -> None:
    with MockOpenAIServer(responder=caption_responder, always_fail=("Q1?",)) as server:
        result = run_exgra(*captions("--base-url", server.base_url, "--max-retries", "0"))
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "1 of 3 records failed (r1)" in text and "--resume" in text
    assert [r["id"] for r in json.loads((ws / "out.json").read_text())] == ["r0", "r2"]


def test_extend_captions_resume_refuses_another_model_or_prompt(ws: Path, run_exgra) -> None:
    """Issue #13.3: the journal header records the settings; a resumed run must match them by name."""
    with MockOpenAIServer(responder=caption_responder, always_fail=("Q1?",)) as server:
        first = run_exgra(*captions("--base-url", server.base_url, "--max-retries", "0"))
        assert first.exit_code == 0, first.stderr
        journal = (ws / "out.json.journal.jsonl").read_bytes()
        other_model = run_exgra(
            *captions("--base-url", server.base_url, "--resume", "--model", "other/model")
        )
        assert other_model.exit_code == 1
        assert 'model was "openai/gpt-4o-mini", now "other/model"' in one_error_line(other_model.stderr)
        prompt = ws / "my_prompt.txt"
        prompt.write_text("Rewrite the answer at length as JSON with a revision field.")
        other_prompt = run_exgra(
            *captions("--base-url", server.base_url, "--resume", "--prompt", str(prompt))
        )
        assert other_prompt.exit_code == 1 and "prompt_sha256 was" in one_error_line(other_prompt.stderr)
    assert (ws / "out.json.journal.jsonl").read_bytes() == journal


def test_chatbot_where_nothing_succeeded_fails(ws: Path, run_exgra) -> None:
    failed = run_exgra(*chatbot("--base-url", DEAD_ENDPOINT, "--max-retries", "0"))
    assert failed.exit_code == 1
    assert "the judge failed on all 3 questions, no summary written" in one_error_line(failed.stderr)
    assert not (ws / "r.summary.json").exists()


def test_chatbot_resume_refuses_another_judge_prompt_or_answers(ws: Path, run_exgra) -> None:
    with MockOpenAIServer(responder=judge_responder, always_malformed=("answer 1",)) as server:
        first = run_exgra(*chatbot("--base-url", server.base_url, "--max-reasks", "0"))
        assert first.exit_code == 0, first.stderr
        reviews = (ws / "r.jsonl").read_bytes()
        judge = run_exgra(*chatbot("--base-url", server.base_url, "--resume", "--model", "other/judge"))
        assert judge.exit_code == 1 and 'judge_model was "openai/gpt-4o"' in one_error_line(judge.stderr)
        prompt = ws / "judge.txt"
        prompt.write_text("Score both assistants from 1 to 10 on the first line.")
        other = run_exgra(*chatbot("--base-url", server.base_url, "--resume", "--prompt", str(prompt)))
        assert other.exit_code == 1 and "prompt_sha256 was" in one_error_line(other.stderr)
        (ws / "a.jsonl").write_text(
            "".join(json.dumps({"question_id": i, "text": "new"}) + "\n" for i in range(3))
        )
        answers = run_exgra(*chatbot("--base-url", server.base_url, "--resume"))
        assert answers.exit_code == 1 and "answers_sha256 was" in one_error_line(answers.stderr)
    assert (ws / "r.jsonl").read_bytes() == reviews


@pytest.mark.parametrize(
    ("args", "target", "hint"),
    [
        (
            ["eval", "vqa", "--model", "m", "--data", "d", "--images", "i", "-o", "o.jsonl"],
            "exgra.eval.vqa.run_vqa_eval",
            "--resume",
        ),
        (
            ["eval", "zero-shot", "--model", "m", "--data", "d", "--images", "i", "-o", "o.jsonl"],
            "exgra.eval.zero_shot.run_zero_shot",
            "--resume",
        ),
        (
            ["extend-captions", "records.json", "-o", "out.json"],
            "exgra.data.captions.extend_captions",
            "--resume",
        ),
        (
            ["eval", "chatbot", "--questions", "q.jsonl", "--answers", "a.jsonl", "-o", "r.jsonl"],
            "exgra.eval.chatbot.evaluate_chatbot",
            "--resume",
        ),
    ],  # fmt: skip
    ids=["eval-vqa", "zero-shot", "extend-captions", "chatbot"],
)
def test_ctrl_c_exits_130_with_the_interrupted_line(ws, run_exgra, monkeypatch, args, target, hint) -> None:
    """Issue #12.12: typer turned Ctrl-C into a silent exit 130; the CLI's line is now printed."""
    module, name = target.rsplit(".", 1)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    result = run_exgra(*args)
    assert result.exit_code == 130
    line = one_error_line(result.stderr)
    assert "error: interrupted" in line and hint in line


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_download_ctrl_c_does_not_wait_for_the_file_in_flight(tmp_path: Path) -> None:
    """Issue #12.12: Ctrl-C while a (here: never-ending) file downloads ends the command at once."""
    with StandInHub() as hub:
        hub.add_repo(
            "MERGE-Group/exgra-med", {"config.json": b"{}", "model.safetensors": os.urandom(200_000)}
        )
        hub.stall.add("model.safetensors")
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "exgra", "download", "exgra-med", "-o", str(tmp_path / "dl")],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C as a terminal delivers it: a suite started in the background of a shell runs with
            # SIGINT ignored, which its children inherit (Python then installs no KeyboardInterrupt).
            preexec_fn=_default_sigint,
        )
        try:
            assert hub.stalled.wait(120), "the download never started"
            process.send_signal(signal.SIGINT)
            # The stalled file never completes while the hub runs: waiting for it would hang here.
            _, stderr = process.communicate(timeout=120)
        finally:
            process.kill()
    assert process.returncode == 130, stderr  # the reason, if it ended otherwise
    assert "error: interrupted" in stderr and "resume" in stderr and "Traceback" not in stderr


def test_download_accepts_the_old_pathvqa_spelling() -> None:
    from exgra.data.download import resolve_entry

    assert resolve_entry("path-vqa").name == resolve_entry("pathvqa").name == "pathvqa"


def _leaf_commands(command, path=()):  # noqa: ANN001, ANN202
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path
        return
    for name, sub in subcommands.items():
        yield from _leaf_commands(sub, (*path, name))


def test_every_command_has_help_without_bool_metavars(run_exgra) -> None:
    """#13.4: a --help test for every command; issue #12.15: flags show as --quick, not --quick <bool>."""
    leaves = list(_leaf_commands(build_command()))
    top = {path[0] for path in leaves}
    assert {name.replace("_", "-") for name in COMMAND_MODULES} <= top
    assert len(leaves) >= 15
    for path in [(), *leaves]:
        result = run_exgra(*path, "--help")
        assert result.exit_code == 0, (path, result.stderr)
        assert "Usage" in result.stdout and "<bool>" not in result.stdout, path
    score_help = run_exgra("score", "--help").stdout
    assert "--data" in score_help and "--answers" in score_help and "--gt" not in score_help


def test_demo_default_output_is_ignored_by_git() -> None:
    """Issue #12.15: `exgra demo` run from the repository writes ./exgra-demo, which git ignores."""
    lines = (REPO / ".gitignore").read_text().splitlines()
    assert "/exgra-demo/" in lines and "/exgra-demo-quick/" in lines
