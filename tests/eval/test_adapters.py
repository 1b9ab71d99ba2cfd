"""Harness adapters over exgra's generation, called as MedEvalKit and MultiMedEval would call them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from exgra.errors import ExgraError
from exgra.eval.adapters import MedEvalKitModel, MultiMedEvalBatcher
from exgra.eval.generate import AnswerGenerator, GenerationSettings, load_inference_model
from tests.eval.helpers import build_demo, save_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("adapters")
    demo = build_demo(root / "demo", num_samples=40)
    images = sorted(Path(demo.image_folder).glob("*.png"))[:5]
    questions = ["Is this a chest image?", "Which organ?", "Any marker?", "What modality?", "Left or right?"]
    return save_tiny_model(root / "model"), images, questions


def _one_by_one(model: Path, questions, images) -> list[str]:
    # The oracle: the plain generator, one question per call.
    generator = AnswerGenerator(load_inference_model(model), settings=GenerationSettings(max_new_tokens=5))
    pairs = zip(questions, images, strict=True)
    return [generator.answer([q], [Image.open(i).convert("RGB")])[0].text for q, i in pairs]


def test_medevalkit_adapter(setup) -> None:
    model, images, questions = setup
    adapter = MedEvalKitModel(model, batch_size=2, max_new_tokens=5)
    messages = [{"prompt": q, "image": Image.open(i)} for q, i in zip(questions, images, strict=True)]
    # A path works too, and a system prompt is ignored.
    messages[1] = {"prompt": questions[1], "images": [str(images[1])], "system": "ignored"}
    outputs = adapter.generate_outputs(messages)
    assert outputs == _one_by_one(model, questions, images)
    assert adapter.generate_output(messages[3]) == outputs[3]
    with pytest.raises(ExgraError, match="one image per question; this message has 2"):
        adapter.generate_outputs([{"prompt": "q", "images": [images[0], images[1]]}])
    text_only = adapter.generate_outputs([{"prompt": "What is MRI?"}])
    assert isinstance(text_only[0], str) and adapter.text_only_prompts == 1


def test_multimedeval_batcher(setup) -> None:
    model, images, questions = setup
    batcher = MultiMedEvalBatcher(model, batch_size=3, max_new_tokens=5)
    pairs = zip(questions, images, strict=True)
    prompts = [([{"role": "user", "content": f"<img> {q}"}], [Image.open(i)]) for q, i in pairs]
    assert batcher(prompts) == _one_by_one(model, questions, images)
    with pytest.raises(ExgraError, match="needs a user turn"):
        batcher([([{"role": "assistant", "content": "hi"}], [])])
