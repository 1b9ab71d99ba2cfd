"""Bad input to every command (issue #12): one clear line, a non-zero exit, no traceback, nothing changed.

Each case runs the real CLI in-process against a workspace of user files; the workspace is snapshot
(every file's bytes) before and after, so "nothing changed that was there before" is checked for every
case, and so is "nothing new was left behind". User errors exit 1 with exactly one ``error:`` line;
usage errors (an unknown option, a value outside the choices, conflicting flags) exit 2 with typer's
usage message. Cases fail before any model is trained or any request is sent, so the whole matrix
runs in seconds.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.bad_files import png_declaring

DEAD_ENDPOINT = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, every request fails


def vqa_record(index: int, image: str) -> dict:
    return {
        "id": index,
        "image": image,
        "answer_type": "CLOSED",
        "conversations": [
            {"from": "human", "value": "Is there an effusion?\n<image>"},
            {"from": "gpt", "value": "yes"},
        ],
    }


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: file bytes, or None for a folder."""
    return {
        str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ``tiny`` model saved once (only for the cases that need real weights on disk)."""
    import torch

    from exgra.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bad-input") / "tiny"
    create_model("tiny").save(path)
    return path


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved_model: Path) -> Path:
    """The user's workspace: good inputs, bad inputs, and folders holding the user's own files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bomb.png").write_bytes(png_declaring(60000, 60000))
    Image.new("RGB", (8, 8), (90, 90, 90)).save(tmp_path / "ok.png")
    (tmp_path / "test.json").write_text(json.dumps([vqa_record(0, "bomb.png")]))
    (tmp_path / "answers.jsonl").write_text('{"question_id": 0, "text": "yes"}\n')
    (tmp_path / "questions.jsonl").write_text('{"question_id": 0, "text": "Q?", "gpt4_answer": "A"}\n')
    records = [
        {"id": "r0", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}]}
    ]
    (tmp_path / "records.json").write_text(json.dumps(records))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "latin1.yaml").write_bytes("model:\n  name: tiny  # modèle\n".encode("latin-1"))
    (tmp_path / "latin1.json").write_bytes('[{"id": "é"}]'.encode("latin-1"))
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "a-file.txt").write_text("not a folder")
    (tmp_path / "empty-folder").mkdir()
    mine = tmp_path / "mine"
    (mine / "logs").mkdir(parents=True)
    (mine / "thesis.tex").write_text("my thesis")
    (mine / "config.yaml").write_text("mine: true\n")
    (mine / "logs" / "notes.txt").write_text("notes")
    (tmp_path / "downloads" / "vqa-rad").mkdir(parents=True)
    (tmp_path / "downloads" / "vqa-rad" / "my-notes.md").write_text("mine")
    truncated = tmp_path / "truncated-model"
    shutil.copytree(saved_model, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (tmp_path / "model").symlink_to(saved_model)
    return tmp_path


LLM = ["--base-url", DEAD_ENDPOINT, "--no-progress", "--max-retries", "0"]
EVAL = ["--model", "model", "--data", "test.json", "--images", "images"]

# (id, command-line, expected exit code, regex the one error line must match (exit 1 only))
CASES: list[tuple[str, list[str], int, str]] = [
    # score
    ("score-missing-data", ["score", "--data", "nope.json", "--answers", "answers.jsonl"], 1, "not found"),
    ("score-data-is-folder", ["score", "--data", "images", "--answers", "answers.jsonl"], 1, "is a folder"),
    (
        "score-deep-json",
        ["score", "--data", "deep.json", "--answers", "answers.jsonl"],
        1,
        "nested too deeply",
    ),
    (
        "score-output-is-input",
        ["score", "--data", "test.json", "--answers", "answers.jsonl", "-o", "answers.jsonl", "--overwrite"],
        1,
        "also the input --answers",
    ),
    (
        "score-bad-scorer",
        ["score", "--data", "test.json", "--answers", "answers.jsonl", "--scorer", "x"],
        2,
        "",
    ),
    (
        "score-twice",
        ["score", "--data", "test.json", "--gt", "test.json", "--answers", "answers.jsonl"],
        2,
        "",
    ),
    # prepare
    ("prepare-unknown", ["prepare", "mimic", "-o", "out"], 1, "unknown dataset 'mimic'"),
    ("prepare-source-is-file", ["prepare", "slake", "-s", "a-file.txt", "-o", "out"], 1, "is a file"),
    ("prepare-foreign-folder", ["prepare", "demo", "-o", "mine", "--overwrite"], 1, "thesis.tex"),
    ("prepare-too-few", ["prepare", "demo", "-o", "out", "--num-samples", "3"], 1, "num_samples"),
    # eval vqa
    (
        "vqa-model-is-file",
        ["eval", "vqa-rad", *EVAL[2:], "--model", "a-file.txt", "-o", "o.jsonl"],
        1,
        "is a file",
    ),
    (
        "vqa-data-is-folder",
        ["eval", "slake", "--model", "model", "--data", "images", "--images", "images", "-o", "o.jsonl"],
        1,
        "is a folder",
    ),  # fmt: skip
    (
        "vqa-images-missing",
        ["eval", "pathvqa", *EVAL[:4], "--images", "nope", "-o", "o.jsonl"],
        1,
        "not found",
    ),
    (
        "vqa-output-is-input",
        ["eval", "vqa", *EVAL, "-o", "test.json", "--overwrite"],
        1,
        "also the input --data",
    ),
    ("vqa-bad-dtype", ["eval", "vqa", *EVAL, "-o", "o.jsonl", "--dtype", "int8"], 2, ""),
    (
        "vqa-truncated-weights",
        ["eval", "vqa", "--model", "truncated-model", *EVAL[2:], "-o", "o.jsonl"],
        1,
        "damaged or incomplete",
    ),  # fmt: skip
    # eval zero-shot
    (
        "zero-shot-conflict",
        ["eval", "zero-shot", *EVAL, "-o", "z.jsonl", "--legacy", "--method", "likelihood"],
        2,
        "",
    ),
    (
        "zero-shot-model-missing",
        ["eval", "zero-shot", "--model", "nope", *EVAL[2:], "-o", "z.jsonl"],
        1,
        "not found",
    ),  # fmt: skip
    # eval chatbot
    *[
        (
            f"chatbot-timeout-{t}",
            [
                "eval",
                "chatbot",
                "--questions",
                "questions.jsonl",
                "--answers",
                "answers.jsonl",
                "-o",
                "r.jsonl",
                *LLM,
                "--timeout",
                t,
            ],
            2,
            "",
        )  # fmt: skip
        for t in ("0", "-1")
    ],
    (
        "chatbot-missing-questions",
        ["eval", "chatbot", "--questions", "nope.jsonl", "--answers", "answers.jsonl", "-o", "r.jsonl", *LLM],
        1,
        "not found",
    ),  # fmt: skip
    (
        "chatbot-output-is-input",
        [
            "eval",
            "chatbot",
            "--questions",
            "questions.jsonl",
            "--answers",
            "answers.jsonl",
            "-o",
            "answers.jsonl",
            "--overwrite",
            *LLM,
        ],
        1,
        "also the input",
    ),  # fmt: skip
    # extend-captions
    *[
        (
            f"captions-timeout-{t}",
            ["extend-captions", "records.json", "-o", "x.json", *LLM, "--timeout", t],
            2,
            "",
        )
        for t in ("0", "-5")
    ],
    ("captions-latin1", ["extend-captions", "latin1.json", "-o", "x.json", *LLM], 1, "not UTF-8"),
    ("captions-deep-json", ["extend-captions", "deep.json", "-o", "x.json", *LLM], 1, "nested too deeply"),
    (
        "captions-output-is-input",
        ["extend-captions", "records.json", "-o", "records.json", "--overwrite", *LLM],
        1,
        "also the input",
    ),  # fmt: skip
    (
        "captions-bad-on-failure",
        ["extend-captions", "records.json", "-o", "x.json", "--on-failure", "x"],
        2,
        "",
    ),
    ("captions-limit-0", ["extend-captions", "records.json", "-o", "x.json", "--limit", "0"], 2, ""),
    # ask
    (
        "ask-bomb",
        ["ask", "--model", "model", "--image", "images/bomb.png", "Effusion?"],
        1,
        "decompression bomb",
    ),
    ("ask-image-is-folder", ["ask", "--model", "model", "--image", "images", "Effusion?"], 1, "is a folder"),
    (
        "ask-truncated-weights",
        ["ask", "--model", "truncated-model", "--image", "ok.png", "Q?"],
        1,
        "damaged or incomplete",
    ),  # fmt: skip
    ("ask-model-is-file", ["ask", "--model", "a-file.txt", "--image", "ok.png", "Q?"], 1, "is a file"),
    ("ask-not-an-image", ["ask", "--model", "model", "--image", "a-file.txt", "Q?"], 1, "cannot read image"),
    # download
    ("download-unknown", ["download", "exgra-medd", "-o", "downloads"], 1, "did you mean"),
    ("download-output-is-file", ["download", "vqa-rad", "-o", "a-file.txt"], 1, "is a file"),
    ("download-foreign-folder", ["download", "vqa-rad", "-o", "downloads"], 1, "did not write"),
    # convert
    ("convert-missing-source", ["convert", "nope", "out"], 1, "not found"),
    ("convert-foreign-destination", ["convert", "empty-folder", "mine", "--overwrite"], 1, "thesis.tex"),
    ("convert-bad-dtype", ["convert", "empty-folder", "out", "--dtype", "int8"], 2, ""),
    # train / finetune
    ("train-latin1-yaml", ["train", "stage1", "--config", "latin1.yaml", "-o", "run"], 1, "not UTF-8"),
    ("train-deep-yaml", ["train", "stage1", "--config", "deep.yaml", "-o", "run"], 1, "nested too deeply"),
    ("train-config-is-folder", ["train", "stage2", "--config", "images", "-o", "run"], 1, "is a folder"),
    (
        "train-unknown-key",
        ["train", "stage1", "--config", "tiny_stage1", "train.stpes=3", "-o", "run"],
        1,
        "unknown config key",
    ),  # fmt: skip
    ("finetune-missing-config", ["finetune", "--config", "nope.yaml", "-o", "run"], 1, "not found"),
    # demo, models, the root
    ("demo-output-is-file", ["demo", "-o", "a-file.txt"], 1, "not a folder"),
    ("demo-foreign-folder", ["demo", "-o", "mine"], 1, "not empty"),
    ("demo-bad-fractions", ["demo", "--fractions", "ten"], 1, "--fractions"),
    ("models-extra-argument", ["models", "extra"], 2, ""),
    ("unknown-command", ["trian"], 2, ""),
    ("eval-unknown-subcommand", ["eval", "vqarad"], 2, ""),
]


@pytest.mark.parametrize(("args", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(ws: Path, run_exgra: Callable, args, code, message):
    before = snapshot(ws)
    result = run_exgra(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    if code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert re.search(message, " ".join(result.stderr.split())), result.stderr
    else:
        assert "Usage" in result.stderr or "Usage" in result.stdout, result.stderr
    assert snapshot(ws) == before  # nothing changed, nothing left behind
