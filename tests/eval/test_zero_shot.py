"""``exgra eval zero-shot``: option log-likelihoods, a known answer, missing images, legacy protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exgra.errors import DataError, ExgraError
from exgra.eval.generate import AnswerGenerator, load_inference_model
from exgra.eval.zero_shot import (
    ZeroShotConfig,
    accuracy_table,
    closest_option,
    load_omnimed_questions,
    option_log_likelihoods,
    run_zero_shot,
    zero_shot_prompt,
)
from tests.eval.test_generate import _one_thread, build_demo, save_tiny_model  # noqa: F401

OPTIONS = ["effusion", "mass", "normal chest", "fracture of the left femur"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("zero")
    demo = build_demo(root / "demo", num_samples=30)
    images = sorted(p.name for p in Path(demo.image_folder).iterdir())[:6]
    qa = root / "QA_information"
    qa.mkdir()
    for dataset, answers in (
        ("Chest CT", ["effusion", "mass", "effusion"]),
        ("Knee X-ray", OPTIONS[2:] + ["mass"]),
    ):
        records = [
            {
                "question_id": f"{dataset}-{index}",
                "dataset": dataset,
                "question": "What is the finding?",
                **{f"option_{letter}": option for letter, option in zip("ABCD", OPTIONS, strict=True)},
                "gt_answer": answer,
                "image_path": f"images/{images[index + (3 if dataset == 'Knee X-ray' else 0)]}",
            }
            for index, answer in enumerate(answers)
        ]
        (qa / f"{dataset}.json").write_text(json.dumps(records))
    return save_tiny_model(root / "model"), Path(demo.root), qa


def test_option_log_likelihoods_match_the_plain_llava_forward(setup) -> None:
    model_dir, root, qa = setup
    generator = AnswerGenerator(load_inference_model(model_dir))
    questions = load_omnimed_questions([qa])[:2]
    prompts = [zero_shot_prompt(q.question, q.options) for q in questions]
    from exgra.data.records import load_image

    pixel_values = generator.preprocess([load_image(root, q.image) for q in questions])
    scores = option_log_likelihoods(generator, prompts, pixel_values, [q.options for q in questions])
    tokenizer, model = generator.tokenizer, generator.model
    for index, prompt in enumerate(prompts):
        context = generator.build_prompt(prompt) + "Assistant:"
        context_length = len(tokenizer(context)["input_ids"])
        for option, (total, count) in zip(OPTIONS, scores[index], strict=True):
            ids = tokenizer(f"{context} {option}", return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=ids, pixel_values=pixel_values[index : index + 1]).logits[0]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            targets = ids[0, context_length:]
            expected = log_probs[torch.arange(context_length - 1, ids.shape[1] - 1), targets].sum()
            assert count == len(targets) > 0
            assert total == pytest.approx(float(expected), abs=1e-3)


def test_known_answer_by_construction(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose LM head always prefers the token of " effusion" must choose that option."""
    model_dir, root, qa = setup
    bundle = load_inference_model(model_dir)
    effusion = bundle.tokenizer(" effusion", add_special_tokens=False)["input_ids"]
    assert len(effusion) == 1
    head = bundle.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.zero_()
        biased.bias.zero_()
        biased.bias[effusion[0]] = 8.0
    bundle.model.lm_head = biased
    # A bias is not part of the saved architecture, so hand the biased model to the run directly.
    monkeypatch.setattr("exgra.eval.generate.load_inference_model", lambda *args, **kwargs: bundle)
    biased_dir = model_dir
    for normalization in ("mean", "sum"):
        output = tmp_path / f"{normalization}.jsonl"
        config = ZeroShotConfig(
            model=biased_dir,
            data=[qa],
            images=root,
            output=output,
            length_normalization=normalization,
            progress=False,
        )
        result = run_zero_shot(config)
        predictions = [json.loads(line) for line in output.read_text().splitlines()]
        assert {p["prediction"] for p in predictions} == {"effusion"}
        rows = {row["dataset"]: row for row in result.rows}
        assert rows["Chest CT"]["correct"] == 2 and rows["Chest CT"]["accuracy"] == pytest.approx(200 / 3)
        assert rows["Knee X-ray"]["correct"] == 0 and rows["all"]["questions"] == 6


def test_missing_images_are_counted_not_dropped(setup, tmp_path: Path) -> None:
    model_dir, root, qa = setup
    records = json.loads((qa / "Chest CT.json").read_text())
    records[1]["image_path"] = "images/gone.png"
    data = tmp_path / "Chest CT.json"
    data.write_text(json.dumps(records))
    output = tmp_path / "pred.jsonl"
    result = run_zero_shot(
        ZeroShotConfig(model=model_dir, data=[data], images=root, output=output, progress=False)
    )
    (row,) = result.rows
    assert row["questions"] == 3 and row["missing_images"] == 1
    assert row["accuracy"] == pytest.approx(100 * row["correct"] / 3)
    assert row["accuracy_answered"] == pytest.approx(100 * row["correct"] / 2)
    results = json.loads((tmp_path / "pred.results.json").read_text())
    assert results["run"]["method"] == "likelihood" and results["accuracy"] == result.rows
    with pytest.raises(ExgraError, match="already exists"):
        run_zero_shot(
            ZeroShotConfig(model=model_dir, data=[data], images=root, output=output, progress=False)
        )


def test_legacy_protocol_is_seeded(setup, tmp_path: Path) -> None:
    model_dir, root, qa = setup
    runs = []
    for name in ("a", "b"):
        output = tmp_path / f"{name}.jsonl"
        config = ZeroShotConfig(
            model=model_dir,
            data=[qa],
            images=root,
            output=output,
            method="legacy",
            max_new_tokens=6,
            progress=False,
        )
        run_zero_shot(config)
        runs.append([json.loads(line) for line in output.read_text().splitlines()])
    assert [r["model_text"] for r in runs[0]] == [r["model_text"] for r in runs[1]]
    for record in runs[0]:
        choice = closest_option(record["model_text"], record["options"])
        assert record["prediction"] == (None if choice is None else record["options"][choice])


def test_closest_option_and_table() -> None:
    assert closest_option("The answer is mass", OPTIONS) == 1
    assert closest_option("fracture of left femur", OPTIONS) == 3
    assert closest_option("", OPTIONS) is None
    rows = accuracy_table(
        [
            {"dataset": "x", "is_correct": True},
            {"dataset": "x", "is_correct": False, "image_missing": True},
        ]
    )
    assert rows == [
        {
            "dataset": "x",
            "questions": 2,
            "missing_images": 1,
            "correct": 1,
            "accuracy": 50.0,
            "accuracy_answered": 100.0,
        }
    ]
    assert zero_shot_prompt("Q?", ["a", "b"]).startswith("Q?Here are 2 candidate answers:['a', 'b'] Only")


def test_bad_question_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"question": "q", "option_A": "a", "option_B": "b", "gt_answer": "c", "image_path": "x"}])
    )
    with pytest.raises(DataError, match="is not one of its options"):
        load_omnimed_questions([bad])
    bad.write_text(json.dumps([{"question": "q", "option_A": "a", "gt_answer": "a", "image_path": "x"}]))
    with pytest.raises(DataError, match="fewer than two options"):
        load_omnimed_questions([bad])
    with pytest.raises(DataError, match="not found"):
        load_omnimed_questions([tmp_path / "absent.json"])


def test_cli_prints_the_table(setup, tmp_path: Path, run_exgra) -> None:
    model_dir, root, qa = setup
    result = run_exgra(
        "eval",
        "zero-shot",
        "--model",
        model_dir,
        "--data",
        qa,
        "--images",
        root,
        "--output",
        tmp_path / "p.jsonl",
    )
    assert result.exit_code == 0, result.stderr
    assert "Chest CT" in result.stdout and "Knee X-ray" in result.stdout and "all" in result.stdout
    missing = run_exgra(
        "eval",
        "zero-shot",
        "--model",
        tmp_path / "x",
        "--data",
        qa,
        "--images",
        root,
        "--output",
        tmp_path / "q",
    )
    assert missing.exit_code == 1 and "model directory not found" in missing.stderr


def test_resume_refuses_another_method_by_name(setup, tmp_path: Path) -> None:
    """Issue #13.3: one predictions file never mixes two protocols."""
    model_dir, root, qa = setup
    output = tmp_path / "z.jsonl"
    base = dict(model=model_dir, data=[qa], images=root, output=output, progress=False, limit=2)
    run_zero_shot(ZeroShotConfig(**base))
    before = output.read_bytes()
    with pytest.raises(ExgraError, match='method was "likelihood", now "legacy"'):
        run_zero_shot(ZeroShotConfig(**base, method="legacy", max_new_tokens=4, resume=True))
    with pytest.raises(ExgraError, match="length_normalization was"):
        run_zero_shot(ZeroShotConfig(**base, length_normalization="sum", resume=True))
    assert output.read_bytes() == before
    resumed = run_zero_shot(ZeroShotConfig(**{**base, "limit": 3}, resume=True))
    assert resumed.num_generated == 1
    (tmp_path / "z.run.json").write_text("{not json")
    with pytest.raises(ExgraError, match="unreadable"):
        run_zero_shot(ZeroShotConfig(**base, resume=True))
