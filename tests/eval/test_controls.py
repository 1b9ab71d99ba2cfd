"""Image reliance: a stand-in whose answer depends on the image, and a rigged model that cannot look."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exgra.errors import ExgraError
from exgra.eval.ablation import ablate_image, shuffled_images
from exgra.eval.controls import parse_controls, reliance_report
from tests.eval.helpers import build_demo


def brightness_answer(image: Image.Image) -> str:
    """The stand-in 'model': it answers from the image alone (mean grey level in three bands)."""
    level = float(np.asarray(image.convert("L"), dtype=np.float64).mean())
    return "dark" if level < 60 else ("mid" if level < 130 else "bright")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return build_demo(tmp_path_factory.mktemp("controls") / "data", num_samples=60)


def test_shuffle_gives_every_question_another_image() -> None:
    pairs = [(f"q{i}", f"img{i // 2}.png") for i in range(12)]  # two questions per image
    mapping = shuffled_images(pairs, seed=3)
    assert all(mapping[key] != image for key, image in pairs)
    assert {mapping[key] for key, _ in pairs} == {image for _, image in pairs}  # a permutation
    assert mapping["q0"] == mapping["q1"]  # questions sharing an image see the same other image
    assert shuffled_images(list(reversed(pairs)), seed=3) == mapping  # order-independent: resumable
    assert any(shuffled_images(pairs, seed=s) != mapping for s in range(4, 8))
    assert parse_controls("blank, shuffle") == ["blank", "shuffle"]
    with pytest.raises(ExgraError, match="unknown control 'grey'"):
        parse_controls("blank,grey")


def _write_answers(path: Path, records: list[dict], answers: dict[str, str]) -> Path:
    lines = [
        json.dumps(
            {
                "question_id": r["id"],
                "prompt": r["conversations"][0]["value"].replace("<image>", "").strip() + "\n<image>",
                "text": answers[r["id"]],
            }
        )
        for r in records
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reliance_when_the_answer_depends_on_the_image(demo, tmp_path: Path) -> None:
    folder = Path(demo.image_folder)
    source = json.loads(Path(demo.test).read_text())
    real = {r["id"]: brightness_answer(Image.open(folder / r["image"])) for r in source}
    # Gold = the real-image answer, except every third question (so the real score is not 100).
    records = []
    for index, r in enumerate(source):
        gold = (
            real[r["id"]] if index % 3 else {"dark": "mid", "mid": "bright", "bright": "dark"}[real[r["id"]]]
        )
        kind = "OPEN" if index % 2 else "CLOSED"
        turns = [r["conversations"][0], {"from": "gpt", "value": gold}]
        records.append({**r, "answer_type": kind, "conversations": turns})
    gt = tmp_path / "test.json"
    gt.write_text(json.dumps(records))

    shuffle = shuffled_images([(r["id"], r["image"]) for r in records], seed=7)
    seen = {
        "blank": {r["id"]: brightness_answer(Image.new("RGB", (64, 64), (128, 128, 128))) for r in records},
        "noise": {
            r["id"]: brightness_answer(ablate_image(Image.open(folder / r["image"]), "noise", r["id"], 7))
            for r in records
        },
        "shuffle": {r["id"]: brightness_answer(Image.open(folder / shuffle[r["id"]])) for r in records},
    }
    answers = _write_answers(tmp_path / "answers.jsonl", records, real)
    controls = {name: _write_answers(tmp_path / f"{name}.jsonl", records, seen[name]) for name in seen}
    report = reliance_report(gt, answers, controls, protocol="strict")

    gold = {r["id"]: r["conversations"][1]["value"] for r in records}
    for group in ("all", "OPEN", "CLOSED"):
        ids = [r["id"] for r in records if group == "all" or r["answer_type"] == group]
        entry = report.data["groups"][group]
        real_score = 100 * sum(real[i] == gold[i] for i in ids) / len(ids)
        assert entry["n"] == len(ids) and entry["real"] == pytest.approx(real_score)
        for name, control in seen.items():
            expected = 100 * sum(control[i] == gold[i] for i in ids) / len(ids)
            unchanged = 100 * sum(control[i] == real[i] for i in ids) / len(ids)
            values = entry["controls"][name]
            assert values["score"] == pytest.approx(expected)
            assert values["drop"] == pytest.approx(real_score - expected)
            assert values["unchanged"] == pytest.approx(unchanged)
    # The stand-in reads the image: a blank image changes answers and costs accuracy.
    overall = report.data["groups"]["all"]["controls"]
    assert overall["blank"]["unchanged"] < 100 and overall["blank"]["drop"] > 0
    assert "| all |" in report.markdown() and report.data["protocol"]["name"] == "strict"


def _blind_model(path: Path) -> Path:
    """A tiny model whose projector outputs zeros: every image reaches the LLM as the same features."""
    from exgra.models import create_model

    torch.manual_seed(0)
    bundle = create_model("tiny")
    projector = bundle.model.model.multi_modal_projector
    with torch.no_grad():
        projector.linear_2.weight.zero_()
        projector.linear_2.bias.zero_()
    bundle.save(path)
    return path


def test_controls_in_one_eval_job_when_the_model_cannot_look(demo, tmp_path: Path, run_exgra) -> None:
    model = _blind_model(tmp_path / "blind")
    output = tmp_path / "out" / "answers.jsonl"
    args = ["eval", "vqa", "--model", model, "--data", demo.test, "--images", demo.image_folder]
    args += ["-o", output, "--max-new-tokens", "4", "--limit", "6", "--controls", "blank,noise,shuffle"]
    result = run_exgra(*args)
    assert result.exit_code == 0, result.stderr
    assert "image reliance" in result.stdout
    data = json.loads((tmp_path / "out" / "answers.reliance.json").read_text())
    assert set(data["controls"]) == {"blank", "noise", "shuffle"}
    assert data["groups"]["all"]["n"] == 6  # --limit: the first 6 of the 9 test questions
    for entry in data["groups"].values():
        for values in entry["controls"].values():
            assert values["unchanged"] == 100.0 and values["drop"] == 0.0
    for name in ("blank", "noise", "shuffle"):
        info = json.loads((tmp_path / "out" / f"answers.control-{name}.run.json").read_text())
        assert info["image_ablation"] == name
    assert (tmp_path / "out" / "answers.reliance.md").read_text().count("| all |") == 3
    rerun = run_exgra(*args, "--resume")  # everything is answered already: nothing is generated again
    assert rerun.exit_code == 0 and "0 generated" in rerun.stdout
