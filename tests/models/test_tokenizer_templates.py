from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from exgra.data.templates import get_template, image_token_string, list_templates
from exgra.errors import ConfigError
from exgra.models import ImageProcessor, build_tiny_tokenizer, to_rgb

CONVERSATION = [
    {"from": "human", "value": "Is there a fracture?\n<image>"},
    {"from": "gpt", "value": "no"},
    {"from": "human", "value": "Which bone?"},
    {"from": "gpt", "value": "The femur."},
]
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)


def test_tiny_tokenizer_is_deterministic_and_round_trips():
    first, second = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert 1000 < len(first) <= 4096
    text = "A 3.5 cm mass in the lëft lung — see ⟨arrow⟩!\n\tCafé 日本 ###"
    ids = first(text).input_ids
    assert ids == second(text).input_ids
    assert ids[0] == first.bos_token_id
    assert first.decode(ids, skip_special_tokens=True) == text


def test_tiny_tokenizer_special_tokens_are_single_ids():
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer(image_token_string(3), add_special_tokens=False).input_ids
    patch, start, end = (tokenizer.convert_tokens_to_ids(t) for t in ("<im_patch>", "<im_start>", "<im_end>"))
    assert ids == [start, patch, patch, patch, end]
    assert (
        len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, patch, start, end}) == 6
    )
    assert tokenizer.pad_token == "[PAD]"


def test_image_token_string():
    assert image_token_string(2) == "<im_start><im_patch><im_patch><im_end>"
    assert image_token_string(2, use_start_end=False) == "<im_patch><im_patch>"
    with pytest.raises(ValueError):
        image_token_string(0)


def test_legacy_training_segments_match_reference_string():
    template = get_template("legacy")
    segments = template.training_segments(CONVERSATION, "<IMG>")
    expected = (
        f"{SYSTEM}\n\n### Human: Is there a fracture?\n<IMG>\n### Assistant: no\n"
        "### Human: Which bone?\n### Assistant: The femur.\n### "
    )
    assert "".join(text for text, _ in segments) == expected
    targets = [text for text, is_target in segments if is_target]
    assert targets == ["### Assistant: no\n", "### Assistant: The femur.\n", "### "]


def test_legacy_prompt_is_reference_simple_template():
    template = get_template("legacy")
    prompt = template.prompt("Is there a fracture?\n<image>", "<IMG>")
    assert prompt == (
        f"{SYSTEM}###Human: Hi!###Assistant: Hi there!  How can I help you today?\n"
        "###Human: Is there a fracture?\n<IMG>###"
    )
    assert template.stop_strings == ("###",)
    assert template.clean_answer(" Assistant: yes, a fracture.\n### Human: more") == "yes, a fracture."
    assert template.clean_answer("no") == "no"


def test_chat_template():
    template = get_template("chat")
    segments = template.training_segments(CONVERSATION[:2], "<IMG>")
    assert segments[1] == ("USER: Is there a fracture?\n<IMG> ASSISTANT:", False)
    assert segments[2] == (" no</s>", True)
    prompt = template.prompt("<image>\nWhat is shown?", "<IMG>")
    assert prompt.endswith("USER: What is shown?\n<IMG> ASSISTANT:")
    assert template.clean_answer(" A chest radiograph.</s>USER: x") == "A chest radiograph."


def test_templates_reject_bad_input():
    assert list_templates() == ["chat", "legacy", "mistral_instruct"]
    with pytest.raises(ConfigError, match="legacy"):
        get_template("vicuna")
    with pytest.raises(ValueError, match="role"):
        get_template("legacy").training_segments([{"from": "system", "value": "x"}])


def test_image_processor_handles_medical_modes():
    processor = ImageProcessor.for_size(32)
    ramp = (np.arange(60 * 40, dtype=np.uint16).reshape(40, 60) * 20).astype(np.uint16)  # 0..47980
    sixteen_bit = Image.fromarray(ramp)
    assert sixteen_bit.mode == "I;16"
    rgb = np.asarray(to_rgb(sixteen_bit))
    assert rgb.shape == (40, 60, 3) and rgb.min() == 0 and rgb.max() == 255  # rescaled, not clipped
    images = [
        sixteen_bit,
        Image.new("L", (50, 40), 128),
        Image.new("RGBA", (40, 50)),
        Image.new("RGB", (64, 64)),
    ]
    pixel_values = processor(images)
    assert pixel_values.shape == (4, 3, 32, 32) and pixel_values.dtype == torch.float32
    # Grey 128 in every channel, normalised with CLIP's mean/std.
    mean, std = torch.tensor(processor.processor.image_mean), torch.tensor(processor.processor.image_std)
    expected = (128 / 255 - mean) / std
    assert torch.allclose(pixel_values[1, :, 5, 5], expected, atol=1e-4)


def test_image_processor_save_load(tmp_path):
    ImageProcessor.for_size(48).save_pretrained(tmp_path)
    assert ImageProcessor.from_pretrained(tmp_path).image_size == 48
