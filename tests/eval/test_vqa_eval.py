"""``exgra eval vqa``: schema, question order, resume after a kill, sharded merge, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exgra.errors import ExgraError
from exgra.eval.vqa import AnswerShards, VQAEvalConfig, read_jsonl, repair_torn_tail, run_vqa_eval
from tests.eval.test_generate import _one_thread, build_demo, save_tiny_model  # noqa: F401

KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("vqa")
    demo = build_demo(root / "demo", num_samples=60)
    return save_tiny_model(root / "model"), demo


def _config(setup, output: Path, **changes) -> VQAEvalConfig:
    model, demo = setup
    values = dict(
        model=model,
        data=demo.test,
        images=demo.image_folder,
        output=output,
        max_new_tokens=6,
        batch_size=4,
        progress=False,
    )
    values.update(changes)
    return VQAEvalConfig(**values)


def _test_ids(demo) -> list[str]:
    return [record["id"] for record in json.loads(Path(demo.test).read_text())]


def test_answers_schema_order_run_info_and_metrics(setup, tmp_path: Path) -> None:
    output = tmp_path / "out" / "answers.jsonl"
    result = run_vqa_eval(_config(setup, output))
    lines = read_jsonl(output, allow_torn_tail=False)
    assert [line["question_id"] for line in lines] == _test_ids(setup[1])
    assert all(set(line) == KEYS for line in lines)
    assert all(
        line["prompt"].endswith("\n<image>") and "<image>" not in line["prompt"][:-8] for line in lines
    )
    assert result.num_generated == len(lines) and result.num_resumed == 0
    assert not list(output.parent.glob("*.part-*"))
    info = json.loads((tmp_path / "out" / "answers.run.json").read_text())
    assert info["template"] == "legacy" and info["generation"]["max_new_tokens"] == 6
    assert info["generation"]["do_sample"] is False and "exgra_version" in info
    metrics = json.loads((tmp_path / "out" / "answers.metrics.json").read_text())
    assert metrics["num_open"] + metrics["num_closed"] == len(lines)
    assert result.metrics is not None and "closed_accuracy" in result.metrics


def test_existing_output_is_refused_then_resumed_or_overwritten(setup, tmp_path: Path) -> None:
    output = tmp_path / "answers.jsonl"
    run_vqa_eval(_config(setup, output, limit=5, score=False))
    before = output.read_text()
    with pytest.raises(ExgraError, match="already exists; pass --resume"):
        run_vqa_eval(_config(setup, output, limit=5, score=False))
    resumed = run_vqa_eval(_config(setup, output, limit=8, resume=True, score=False))
    assert (resumed.num_generated, resumed.num_resumed) == (3, 5)
    assert output.read_text().startswith(before)  # the five earlier answers are kept as they were
    with pytest.raises(ExgraError, match="cannot resume .*generation was"):
        run_vqa_eval(_config(setup, output, limit=8, resume=True, max_new_tokens=9, score=False))
    replaced = run_vqa_eval(_config(setup, output, limit=4, overwrite=True, score=False))
    assert replaced.num_generated == 4 and len(read_jsonl(output)) == 4


def test_resume_after_a_torn_part_file(setup, tmp_path: Path) -> None:
    """A kill mid-write leaves a part file whose last line is torn: it is dropped and re-answered."""
    output = tmp_path / "answers.jsonl"
    full = run_vqa_eval(_config(setup, output, score=False))
    complete = read_jsonl(output)
    output.unlink()
    part = AnswerShards(output).part_path(0)
    kept = complete[:3]
    torn = json.dumps(complete[3])[:25]
    part.write_text("".join(json.dumps(r) + "\n" for r in kept) + torn, encoding="utf-8")
    result = run_vqa_eval(_config(setup, output, score=False))
    lines = read_jsonl(output, allow_torn_tail=False)
    assert (result.num_resumed, result.num_generated) == (3, full.num_questions - 3)
    assert [line["question_id"] for line in lines] == _test_ids(setup[1])
    assert [line["answer_id"] for line in lines[:3]] == [r["answer_id"] for r in kept]
    # Greedy answers do not depend on the batch a question landed in.
    same = sum(a["text"] == b["text"] for a, b in zip(lines, complete, strict=True))
    assert same >= len(lines) - 1
    assert not part.exists()


def test_repair_torn_tail_and_read_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1}\n{"question_id": 2}\n{"quest', encoding="utf-8")
    assert [r["question_id"] for r in read_jsonl(path)] == [1, 2]
    assert repair_torn_tail(path) == len('{"quest')
    assert path.read_text().endswith("}\n") and repair_torn_tail(path) == 0
    path.write_text('{"question_id": 1}\nnot json\n{"question_id": 2}\n', encoding="utf-8")
    with pytest.raises(ExgraError, match="line 2 is not valid JSON"):
        read_jsonl(path)


def test_merge_of_shards_is_in_question_order(tmp_path: Path) -> None:
    shards = AnswerShards(tmp_path / "answers.jsonl")
    shards.part_path(1).write_text('{"question_id": "c"}\n{"question_id": "a"}\n', encoding="utf-8")
    shards.part_path(0).write_text('{"question_id": "b"}\n{"question_id": "d"}\n', encoding="utf-8")
    assert shards.merge(["a", "b", "c", "d"]) == 4
    assert [r["question_id"] for r in read_jsonl(shards.output)] == ["a", "b", "c", "d"]
    assert shards.part_paths() == []


def test_kill_and_rerun_through_the_cli(setup, tmp_path: Path, run_exgra) -> None:
    """SIGKILL a real ``exgra eval vqa`` process mid-run; the rerun finishes without duplicates."""
    model, demo = setup
    output = tmp_path / "answers.jsonl"
    args = ["eval", "vqa", "--model", model, "--data", demo.test, "--images", demo.image_folder]
    args += ["--output", output, "--batch-size", "1", "--no-score"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "exgra", *map(str, args), "--max-new-tokens", "64"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = AnswerShards(output).part_path(0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if part.exists() and len(read_jsonl(part)) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    answered = len(read_jsonl(part))
    assert 2 <= answered < len(_test_ids(demo)) and not output.exists()
    result = run_exgra(*args, "--max-new-tokens", "64")
    assert result.exit_code == 0, result.stderr
    lines = read_jsonl(output, allow_torn_tail=False)
    assert [line["question_id"] for line in lines] == _test_ids(demo)
    assert f"{len(lines) - answered} generated, {answered} from before" in result.stdout


@pytest.mark.parametrize(
    "problem, message",
    [
        ("model", "model directory not found"),
        ("images", "image folder not found"),
        ("image-file", "images are missing under"),
        ("json", "is not valid JSON"),
        ("data", "test JSON not found"),
    ],
)
def test_cli_errors_are_one_clear_line(setup, tmp_path: Path, run_exgra, problem: str, message: str) -> None:
    model, demo = setup
    data, images = Path(demo.test), Path(demo.image_folder)
    if problem == "model":
        model = tmp_path / "no-model"
    elif problem == "images":
        images = tmp_path / "no-images"
    elif problem == "image-file":
        records = json.loads(data.read_text())
        records[0]["image"] = "missing.png"
        data = tmp_path / "test.json"
        data.write_text(json.dumps(records))
    elif problem == "json":
        data = tmp_path / "test.json"
        data.write_text('[{"id": 1,')
    elif problem == "data":
        data = tmp_path / "absent.json"
    result = run_exgra(
        "eval",
        "vqa-rad",
        "--model",
        model,
        "--data",
        data,
        "--images",
        images,
        "--output",
        tmp_path / "a.jsonl",
    )
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or message in result.stderr.replace("\n", " ")


def test_two_processes_shard_and_merge_in_question_order(setup, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` (gloo on the CPU): same answers as one process, one merged file."""
    model, demo = setup
    single = tmp_path / "single.jsonl"
    run_vqa_eval(_config(setup, single, score=False))
    output = tmp_path / "sharded.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "exgra", "eval"]
    command += ["vqa", "--model", str(model), "--data", str(demo.test), "--images", str(demo.image_folder)]
    command += ["--output", str(output), "--max-new-tokens", "6", "--batch-size", "4", "--no-score"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.count("answers in") == 1  # only the main process reports
    lines = read_jsonl(output, allow_torn_tail=False)
    assert [line["question_id"] for line in lines] == _test_ids(demo)
    assert [line["text"] for line in lines] == [line["text"] for line in read_jsonl(single)]
    assert json.loads((tmp_path / "sharded.run.json").read_text())["num_processes"] == 2
    assert not list(tmp_path.glob("sharded.jsonl.part-*"))


def test_resume_checks_every_setting_and_refuses_an_unreadable_run_file(setup, tmp_path: Path) -> None:
    """Issue #13.3: a resumed eval refuses any answer-changing setting by name; a damaged run.json too."""
    output = tmp_path / "answers.jsonl"
    run_vqa_eval(_config(setup, output, limit=3, score=False))
    before = output.read_bytes()
    for change, name in (({"batch_size": 2}, "batch_size"), ({"image_ablation": "blank"}, "image_ablation")):
        with pytest.raises(ExgraError, match=f"cannot resume .*{name} was"):
            run_vqa_eval(_config(setup, output, limit=4, resume=True, score=False, **change))
    assert output.read_bytes() == before
    (tmp_path / "answers.run.json").write_text('{"model": ')
    with pytest.raises(ExgraError, match="unreadable"):
        run_vqa_eval(_config(setup, output, limit=4, resume=True, score=False))
    assert output.read_bytes() == before


def test_decompression_bomb_and_wrong_kind_paths_are_one_line(setup, tmp_path: Path, run_exgra) -> None:
    """Issue #12.10/#12.14: an image declaring 60000 x 60000 pixels; a file given for a folder."""
    from tests.bad_files import png_declaring

    model, demo = setup
    images = tmp_path / "images"
    images.mkdir()
    (images / "bomb.png").write_bytes(png_declaring(60000, 60000))
    data = tmp_path / "test.json"
    record = json.loads(Path(demo.test).read_text())[0]
    data.write_text(json.dumps([{**record, "image": "bomb.png"}]))
    result = run_exgra(
        "eval", "vqa", "--model", model, "--data", data, "--images", images, "-o", tmp_path / "a.jsonl"
    )
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "decompression bomb" in " ".join(result.stderr.split())
    result = run_exgra(
        "eval", "vqa", "--model", model, "--data", data, "--images", data, "-o", tmp_path / "b.jsonl"
    )
    assert (
        result.exit_code == 1 and "--images" in result.stderr and "is a file, not a folder" in result.stderr
    )
