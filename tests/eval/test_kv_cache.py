"""The in-place key/value cache and the shared-prefix states of the generation path, against transformers'
own ``DynamicLayer`` and stock ``generate`` as oracles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from exgra.eval.generate import AnswerGenerator, GenerationSettings, load_inference_model
from exgra.eval.kv_cache import GrowingLayer
from tests.eval.helpers import build_demo, save_tiny_model

MAX_NEW = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("kv") / "tiny", seed=3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory):
    from exgra.data.records import load_image, load_vqa_records, vqa_question

    demo = build_demo(tmp_path_factory.mktemp("demo") / "data", num_samples=20)
    records = load_vqa_records(demo.train)[:5]
    # Questions of clearly different lengths, so rows are padded.
    questions = [vqa_question(r) + " Please look closely." * i for i, r in enumerate(records)]
    return questions, [load_image(demo.image_folder, r.image) for r in records]


def test_growing_layer_returns_what_concatenation_returns() -> None:
    torch.manual_seed(0)
    plain, growing = DynamicLayer(), GrowingLayer(reserve=3)
    rows = 4
    for index in range(150):
        keys = torch.randn(rows, 2, 7 if index == 0 else 1, 8)
        values = keys * 2 + 1
        expected, got = plain.update(keys, values), growing.update(keys, values)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1]), index
        assert growing.get_seq_length() == plain.get_seq_length() == 7 + index
        if index == 60:  # drop rows mid-way, as beam search or a finished row would
            kept = torch.tensor([0, 2, 3])
            plain.batch_select_indices(kept)
            growing.batch_select_indices(kept)
            rows = len(kept)
            assert torch.equal(plain.keys, growing.keys) and torch.equal(plain.values, growing.values)
    # It grew a chunk at a time: its buffer has room beyond what it holds.
    assert growing._key_buffer.shape[-2] > growing.get_seq_length()


def test_middle_padding_keeps_the_shared_prefix_in_front(model_dir: Path) -> None:
    generator = AnswerGenerator(load_inference_model(model_dir))
    rows = [[1, 5, 6, 7, 8], [1, 5, 6, 9], [1, 5, 6, 3, 4, 2, 2]]
    batch = generator._pad(rows, shared=3)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (3, 7)
    for row, row_ids, row_mask in zip(rows, ids, mask, strict=True):
        assert row_ids[row_mask == 1].tolist() == row
        # Padding sits between the prefix and the rest: the mask is 1 1 1, 0..0, 1..1.
        gap = 7 - len(row)
        assert row_mask.tolist() == [1] * 3 + [0] * gap + [1] * (len(row) - 3)
        assert row_ids[3 : 3 + gap].tolist() == [generator.tokenizer.pad_token_id] * gap
    left = generator._pad(rows, shared=0)["attention_mask"]
    assert [m.tolist() for m in left] == [[0] * (7 - len(r)) + [1] * len(r) for r in rows]


def _stock_answer(generator: AnswerGenerator, prompt: str, pixel_values: torch.Tensor) -> str:
    """Stock ``generate`` on one unpadded prompt (no exgra cache), cut at the first stop string."""
    encoded = generator.tokenizer([prompt], return_tensors="pt")
    output = generator.model.generate(
        **encoded, pixel_values=pixel_values, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None
    )
    text = generator.tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    cuts = [text.find(stop) for stop in generator.stop_strings if stop in text]
    return (text[: min(cuts)] if cuts else text).strip()


def test_shared_prefix_answers_equal_stock_generate(model_dir: Path, inputs) -> None:
    questions, images = inputs
    generator = AnswerGenerator(load_inference_model(model_dir), settings=GenerationSettings(MAX_NEW))
    generator.model.generation_config.eos_token_id = None  # every row runs its full length
    prompts = [generator.build_prompt(q) for q in questions]
    pixel_values = generator.preprocess(images)
    rows = generator.token_rows(prompts)
    assert len({len(row) for row in rows}) == len(rows)
    # The template's system prompt and example turn are shared: well over the minimum.
    assert generator.shared_prefix(rows) >= 40
    stock = [_stock_answer(generator, p, pixel_values[i : i + 1]) for i, p in enumerate(prompts)]
    batched = generator.generate_prompts(prompts, pixel_values)
    alone = [generator.generate_prompts([p], pixel_values[i : i + 1])[0] for i, p in enumerate(prompts)]
    assert len(generator.prefix_store._entries) == 1  # computed once, reused by every call
    assert [a.raw_text for a in alone] == stock
    same = sum(a.raw_text == s for a, s in zip(batched, stock, strict=True))
    assert same >= len(stock) - 1, list(zip([a.raw_text for a in batched], stock, strict=True))


def test_a_different_system_prompt_gets_no_shared_prefix(model_dir: Path, inputs) -> None:
    questions, images = inputs
    generator = AnswerGenerator(load_inference_model(model_dir), settings=GenerationSettings(MAX_NEW))
    generator.model.generation_config.eos_token_id = None
    prompts = [
        generator.build_prompt(questions[0]),
        generator.build_conversation_prompt([("human", questions[1])], "You are terse.", [1]),
    ]
    assert generator.shared_prefix(generator.token_rows(prompts)) == 0
    pixel_values = generator.preprocess(images[:2])
    answers = generator.generate_prompts(prompts, pixel_values)
    stock = [_stock_answer(generator, p, pixel_values[i : i + 1]) for i, p in enumerate(prompts)]
    assert [a.raw_text for a in answers] == stock


def test_prefix_states_are_recomputed_after_the_weights_change(model_dir: Path, inputs) -> None:
    questions, images = inputs
    generator = AnswerGenerator(load_inference_model(model_dir), settings=GenerationSettings(MAX_NEW))
    generator.model.generation_config.eos_token_id = None
    prompt, pixel_values = generator.build_prompt(questions[2]), generator.preprocess(images[2:3])
    before = generator.generate_prompts([prompt], pixel_values)[0].raw_text
    # An in-place change to a layer that the prefix's states depend on (as an optimizer step makes).
    with torch.no_grad():
        for layer in generator.model.model.language_model.layers:
            layer.self_attn.v_proj.weight.mul_(-3.0)
    after = generator.generate_prompts([prompt], pixel_values)[0].raw_text
    assert after == _stock_answer(generator, prompt, pixel_values)
    assert after != before  # the change matters, so stale states would have shown
    assert len(generator.prefix_store._entries) == 2


def test_token_rows_given_by_the_caller_are_what_is_generated_from(model_dir: Path, inputs) -> None:
    import copy

    questions, images = inputs
    generator = AnswerGenerator(load_inference_model(model_dir), settings=GenerationSettings(MAX_NEW))
    generator.model.generation_config.eos_token_id = None
    prompts = [generator.build_prompt(q) for q in (questions[0], questions[4])]
    pixel_values = generator.preprocess(images[:1])
    # Another thread's copy of the tokenizer makes the same rows as the generator's own.
    rows = generator.token_rows(prompts[1:], tokenizer=copy.deepcopy(generator.tokenizer))
    assert rows == [generator.tokenizer(prompts[1])["input_ids"]]
    stock = [_stock_answer(generator, p, pixel_values) for p in prompts]
    assert stock[0] != stock[1]  # the two prompts answer differently, so the test can tell which was read
    # The rows win over the prompt text: they are what the model reads.
    given = generator.generate_prompts(prompts[:1], pixel_values, rows=rows)
    assert given[0].raw_text == stock[1]
    with pytest.raises(ValueError, match="token rows"):
        generator.generate_prompts(prompts[:1], pixel_values, rows=rows * 2)
