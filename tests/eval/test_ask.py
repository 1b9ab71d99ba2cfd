"""``exgra ask``: one answer about one image on the terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from exgra.data.records import load_image
from exgra.eval.generate import AnswerGenerator, GenerationSettings, load_inference_model
from tests.eval.helpers import build_demo, save_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ask")
    demo = build_demo(root / "demo", num_samples=20)
    image = sorted(Path(demo.image_folder).iterdir())[0]
    return save_tiny_model(root / "model"), image


def test_ask_prints_the_greedy_answer(setup, run_exgra) -> None:
    model_dir, image = setup
    question = "Which body region is shown?"
    result = run_exgra("ask", "--model", model_dir, "--image", image, "--max-new-tokens", "8", question)
    assert result.exit_code == 0, result.stderr
    generator = AnswerGenerator(
        load_inference_model(model_dir), settings=GenerationSettings(max_new_tokens=8)
    )
    expected = generator.answer([question], [load_image(image.parent, image.name)])[0]
    assert expected.text and result.stdout.strip() == expected.text
    raw = run_exgra("ask", "--model", model_dir, "--image", image, "--max-new-tokens", "8", "--raw", question)
    assert raw.stdout.strip() == expected.raw_text


def test_ask_errors(setup, tmp_path: Path, run_exgra) -> None:
    model_dir, image = setup
    missing_image = run_exgra("ask", "--model", model_dir, "--image", tmp_path / "x.png", "Is it normal?")
    assert missing_image.exit_code == 1 and "image not found" in missing_image.stderr
    missing_model = run_exgra("ask", "--model", tmp_path / "m", "--image", image, "Is it normal?")
    assert missing_model.exit_code == 1 and "model directory not found" in missing_model.stderr
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    broken = run_exgra("ask", "--model", model_dir, "--image", not_an_image, "Is it normal?")
    assert broken.exit_code == 1 and "cannot read image" in broken.stderr
    no_question = run_exgra("ask", "--model", model_dir, "--image", image)
    assert no_question.exit_code == 2
