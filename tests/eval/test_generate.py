"""Batched generation: left padding, batched == unbatched greedy answers, stop strings, ablations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exgra.errors import ExgraError
from exgra.eval.ablation import ablate_image
from exgra.eval.generate import (
    AnswerGenerator,
    GenerationSettings,
    load_inference_model,
    question_text,
    resolve_dtype,
)
from tests.eval.helpers import build_demo, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("generate") / "tiny")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return build_demo(tmp_path_factory.mktemp("demo") / "data", num_samples=40)


def _demo_questions(demo, count: int) -> tuple[list[str], list[Image.Image]]:
    from exgra.data.records import load_image, load_vqa_records, vqa_question

    records = load_vqa_records(demo.train)[:count]
    return [vqa_question(r) for r in records], [load_image(demo.image_folder, r.image) for r in records]


def test_prompts_are_left_padded_with_a_mask(model_dir: Path) -> None:
    generator = AnswerGenerator(load_inference_model(model_dir))
    short, long = "Is there a mass?", "Is there a large mass in the upper left lung of this chest x-ray?"
    batch = generator.encode([generator.build_prompt(short), generator.build_prompt(long)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pad = generator.tokenizer.pad_token_id
    padding = int((mask[0] == 0).sum())
    assert padding > 0 and int((mask[1] == 0).sum()) == 0
    assert bool((ids[0, :padding] == pad).all()) and bool(mask[0, padding:].all())
    # The image tokens of the model are in the prompt: <im_start> + 16 x <im_patch> + <im_end>.
    patch = generator.tokenizer.convert_tokens_to_ids("<im_patch>")
    assert int((ids[1] == patch).sum()) == generator.bundle.num_image_tokens == 16
    assert generator.build_prompt(long).endswith("###")


def test_batched_answers_equal_unbatched_greedy_answers(model_dir: Path, demo) -> None:
    generator = AnswerGenerator(
        load_inference_model(model_dir), settings=GenerationSettings(max_new_tokens=12)
    )
    questions, images = _demo_questions(demo, 12)
    # Different prompt lengths, so the batch really is padded.
    questions = [q + " Look carefully." * (i % 3) for i, q in enumerate(questions)]
    assert len(set(generator.prompt_lengths(questions))) > 1
    one_by_one = [generator.answer([q], [image])[0] for q, image in zip(questions, images, strict=True)]
    batched = generator.answer(questions, images)
    same = sum(a.raw_text == b.raw_text for a, b in zip(one_by_one, batched, strict=True))
    assert same >= len(questions) - 1, [
        (a.raw_text, b.raw_text) for a, b in zip(one_by_one, batched, strict=True)
    ]
    assert any(a.text for a in batched) and all(a.num_new_tokens <= 12 for a in batched)
    # Different images give different answers somewhere: the image reaches the model.
    swapped = generator.answer(questions, images[::-1])
    assert any(a.raw_text != b.raw_text for a, b in zip(batched, swapped, strict=True))


def test_generation_stops_at_the_template_stop_string(model_dir: Path, demo) -> None:
    bundle = load_inference_model(model_dir)
    # Bias the LM head so that "#" is always the most likely token: the model writes "###" and stops.
    head = bundle.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.zero_()
        biased.bias.zero_()
        biased.bias[bundle.tokenizer.convert_tokens_to_ids("#")] = 10.0
    bundle.model.lm_head = biased
    generator = AnswerGenerator(bundle, settings=GenerationSettings(max_new_tokens=20))
    questions, images = _demo_questions(demo, 2)
    answers = generator.answer(questions, images)
    assert [a.num_new_tokens for a in answers] == [3, 3]
    assert [a.text for a in answers] == ["", ""]


def test_clean_answer_drops_the_legacy_role_prefix(model_dir: Path) -> None:
    generator = AnswerGenerator(load_inference_model(model_dir))
    assert generator._cut("Assistant: yes ###Human: next") == "Assistant: yes"
    assert generator.template.clean_answer(generator._cut("Assistant: yes ###Human")) == "yes"
    assert question_text("Is it normal?\n<image>") == "Is it normal?"


def test_chat_template_override(model_dir: Path) -> None:
    generator = AnswerGenerator(load_inference_model(model_dir), template="chat")
    assert generator.template_name == "chat"
    assert generator.build_prompt("Is it normal?<image>").endswith("ASSISTANT:")


def test_dtype_and_device_errors(tmp_path: Path) -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ExgraError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ExgraError, match="model directory not found"):
        load_inference_model(tmp_path / "nope")


def test_image_ablations() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    assert ablate_image(image, "none") is image
    blank = ablate_image(image, "blank")
    assert blank.size == image.size and set(np.asarray(blank).ravel().tolist()) == {128}
    noise_a = np.asarray(ablate_image(image, "noise", key="q1", seed=1))
    assert noise_a.shape == (20, 30, 3)
    assert np.array_equal(noise_a, np.asarray(ablate_image(image, "noise", key="q1", seed=1)))
    assert not np.array_equal(noise_a, np.asarray(ablate_image(image, "noise", key="q2", seed=1)))
    assert not np.array_equal(noise_a, np.asarray(image))
    with pytest.raises(ValueError, match="unknown image ablation"):
        ablate_image(image, "invert")


def test_ask_config_validates_choices_for_library_callers(tmp_path):
    from exgra.config import validate_config
    from exgra.errors import ExgraError
    from exgra.eval.generate import AskConfig

    good = validate_config(
        AskConfig, {"model_dir": tmp_path, "image_path": tmp_path / "x.png", "question": "q"}
    )
    assert good.dtype == "auto" and good.max_new_tokens == 256
    for wrong in ({"dtype": "float8"}, {"template": "vicuna"}, {"max_new_tokens": 0}, {"colour": "red"}):
        with pytest.raises(ExgraError) as info:
            validate_config(AskConfig, {"model_dir": tmp_path, "image_path": tmp_path, **wrong})
        assert next(iter(wrong)) in str(info.value)
