from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, LlamaConfig, LlamaForCausalLM

from exgra.errors import ConfigError, ExgraError
from exgra.models import (
    ExgraLlavaForConditionalGeneration,
    connector_layer_groups,
    create_model,
    get_model_spec,
    list_models,
    load_model,
)
from tests.models.helpers import batch

QUESTIONS = [
    "Is there a fracture?\n<image>",
    "Which organ is shown in this chest radiograph, and is it normal?",
]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny")


@pytest.fixture(scope="module")
def tiny_dci():
    torch.manual_seed(1)
    return create_model("tiny-dci")


def test_registry_lists_all_entries():
    names = [spec.name for spec in list_models()]
    assert names == ["tiny", "tiny-dci", "small", "llava-med-7b", "llava-med-v1.5-7b", "exgra-med-7b-dci"]
    with pytest.raises(ConfigError, match="tiny-dci"):
        get_model_spec("tinyy")
    with pytest.raises(ConfigError, match="dense_connector"):
        create_model("tiny", dense_connector="sti")
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        create_model("tiny", llm_config={"hidden_sise": 8})
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        create_model("tiny", vision_config={"image_size": 30})


@pytest.mark.parametrize("name", ["tiny", "tiny-dci", "small"])
def test_offline_entries_build_fast(name):
    start = time.perf_counter()
    bundle = create_model(name)
    assert time.perf_counter() - start < 20
    parameters = sum(p.numel() for p in bundle.model.parameters())
    expected = {"tiny": (1e6, 5e6), "tiny-dci": (1e6, 5e6), "small": (40e6, 60e6)}[name]
    assert expected[0] < parameters < expected[1]
    assert isinstance(bundle.model, ExgraLlavaForConditionalGeneration)
    assert bundle.template == "legacy"
    vision = bundle.model.config.vision_config
    assert bundle.num_image_tokens == (vision.image_size // vision.patch_size) ** 2


@pytest.mark.parametrize(
    ("name", "connector", "projector_in"), [("llava-med-7b", "none", 1024), ("exgra-med-7b-dci", "dci", 3072)]
)
def test_7b_entries_build_on_meta(name, connector, projector_in):
    bundle = create_model(name, device="meta")
    model = bundle.model
    assert all(p.is_meta for p in model.parameters())
    assert 6.9e9 < sum(p.numel() for p in model.parameters()) < 7.3e9
    assert model.config.text_config.vocab_size == 32004 and model.config.text_config.hidden_size == 4096
    assert (
        model.config.vision_config.hidden_size == 1024 and model.config.vision_config.num_hidden_layers == 24
    )
    assert bundle.num_image_tokens == 256 and bundle.config.dense_connector == connector
    assert model.model.multi_modal_projector.linear_1.in_features == projector_in
    assert model.model.multi_modal_projector.linear_2.out_features == 4096
    assert bundle.config.vision_tower == "openai/clip-vit-large-patch14"


def test_llava_med_v15_entry_builds_on_meta():
    # Mistral-7B (7.24 B) + CLIP ViT-L/14-336 (0.30 B) + mlp2x_gelu (21 M): 576 image tokens at 336 px.
    bundle = create_model("llava-med-v1.5-7b", device="meta")
    parameters = sum(p.numel() for p in bundle.model.parameters())
    assert 7.5e9 < parameters < 7.65e9
    text = bundle.model.config.text_config
    assert text.num_key_value_heads == 8 and text.intermediate_size == 14336
    assert bundle.num_image_tokens == 576 and bundle.template == "mistral_instruct"
    assert bundle.image_tokens == "<im_patch>" * 576 and bundle.config.image_aspect_ratio == "pad"


def test_7b_entry_without_weights_fails_clearly():
    with pytest.raises(ConfigError, match="needs pretrained weights"):
        create_model("exgra-med-7b-dci")
    with pytest.raises(ExgraError, match="could not load"):
        create_model("llava-med-7b", vision_tower="/nonexistent/clip", llm="/nonexistent/llama")


def test_connector_layer_groups_reproduce_reference_for_clip_large():
    assert connector_layer_groups(25, -2, "dci") == (23, [list(range(12)), list(range(12, 24))])
    assert connector_layer_groups(25, -2, "sci") == (23, [[7], [15]])
    assert connector_layer_groups(25, -2, "none") == (23, [])
    assert connector_layer_groups(5, -2, "dci") == (3, [[0, 1], [2, 3]])


@pytest.mark.parametrize("fixture", ["tiny", "tiny_dci"])
def test_forward_backward_generate(fixture, request):
    bundle = request.getfixturevalue(fixture)
    model = bundle.model
    model.train()
    inputs, pixel_values = batch(bundle, QUESTIONS)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    output = model(**inputs, pixel_values=pixel_values, labels=labels)
    assert output.logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    projector_grad = model.model.multi_modal_projector.linear_1.weight.grad
    assert projector_grad is not None and projector_grad.abs().sum() > 0
    model.zero_grad()
    model.eval()
    generated = model.generate(**inputs, pixel_values=pixel_values, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_batched_left_padded_generation_matches_single(tiny_dci):
    bundle = tiny_dci
    assert bundle.tokenizer.padding_side == "left"
    inputs, pixel_values = batch(bundle, QUESTIONS)
    assert inputs["attention_mask"][0, 0] == 0  # the shorter prompt really is padded
    model = bundle.model.eval()
    together = model.generate(**inputs, pixel_values=pixel_values, max_new_tokens=6, do_sample=False)
    length = inputs["input_ids"].shape[1]
    for index in range(2):
        single, single_pixels = batch(bundle, [QUESTIONS[index]])
        alone = model.generate(
            **single, pixel_values=pixel_values[index : index + 1], max_new_tokens=6, do_sample=False
        )
        assert alone[0, single["input_ids"].shape[1] :].tolist() == together[index, length:].tolist()


def test_dci_features_match_direct_computation(tiny_dci):
    model = tiny_dci.model.eval()
    _, pixel_values = batch(tiny_dci, QUESTIONS)
    with torch.no_grad():
        states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        assert len(states) == 5  # embeddings + 4 layers
        expected = torch.cat([states[3], (states[0] + states[1]) / 2, (states[2] + states[3]) / 2], dim=-1)[
            :, 1:
        ]
        features = model.model.select_vision_features(pixel_values)
        projector = model.model.multi_modal_projector
        projected = F.linear(
            F.gelu(F.linear(expected, projector.linear_1.weight, projector.linear_1.bias)),
            projector.linear_2.weight,
            projector.linear_2.bias,
        )
        encoded = model.encode_images(pixel_values)
        pooled = model.pooled_image_features(pixel_values)
    assert features.shape == (2, 16, 3 * 64)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(encoded, projected)
    assert encoded.shape == (2, tiny_dci.num_image_tokens, 256)
    torch.testing.assert_close(pooled, projected.mean(dim=1))


def test_embed_inputs_reuses_image_features(tiny_dci):
    model = tiny_dci.model.eval()
    inputs, pixel_values = batch(tiny_dci, QUESTIONS)
    with torch.no_grad():
        reference = model(**inputs, pixel_values=pixel_values).logits
        embeds = model.embed_inputs(inputs["input_ids"], model.encode_images(pixel_values))
        reused = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(reused, reference)
    with pytest.raises(ValueError, match="image tokens"):
        model.embed_inputs(inputs["input_ids"], model.encode_images(pixel_values[:1]))


def test_pooled_text_features(tiny):
    model = tiny.model.eval()
    encoded = tiny.tokenizer(
        ["no fracture", "a large mass in the left lung"], return_tensors="pt", padding=True
    )
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    with torch.no_grad():
        hidden = model.model.language_model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = model.pooled_text_features(ids, mask)
        masked = model.pooled_text_features(ids, mask, pooling="masked_mean")
    assert mean.shape == (2, 256)
    torch.testing.assert_close(mean, hidden.mean(dim=1))
    short = int(mask[0].sum())
    torch.testing.assert_close(masked[0], hidden[0, -short:].mean(dim=0))  # left padding
    torch.testing.assert_close(masked[1], hidden[1].mean(dim=0))
    assert not torch.allclose(mean[0], masked[0])


def test_forward_and_backward_are_fast(tiny):
    model = tiny.model.train()
    ids = torch.randint(10, 1000, (8, 128))
    ids[:, 1 : 1 + tiny.num_image_tokens] = model.image_token_id
    pixel_values = torch.randn(8, 3, 32, 32)
    model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss.backward()  # warm-up
    start = time.perf_counter()
    model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss.backward()
    assert time.perf_counter() - start < 5  # generous bound for a shared CPU; bench/ measures it properly
    model.zero_grad()


def test_save_load_round_trip_dci(tiny_dci, tmp_path):
    path = tiny_dci.save(tmp_path / "ckpt")
    assert sorted(p.name for p in path.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(path.glob("*.bin"))
    loaded = load_model(path, padding_side="right")
    assert type(loaded.model.config).__name__ == "ExgraLlavaConfig"
    assert loaded.config.dense_connector == "dci" and loaded.tokenizer.padding_side == "right"
    assert loaded.tokenizer.get_vocab() == tiny_dci.tokenizer.get_vocab()
    inputs, pixel_values = batch(tiny_dci, QUESTIONS)
    with torch.no_grad():
        expected = tiny_dci.model.eval()(**inputs, pixel_values=pixel_values).logits
        actual = loaded.model.eval()(**inputs, pixel_values=pixel_values).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    # The Auto classes know exgra_llava once exgra.models is imported.
    auto = AutoModelForImageTextToText.from_pretrained(path)
    assert isinstance(auto, ExgraLlavaForConditionalGeneration)
    with torch.no_grad():
        torch.testing.assert_close(
            auto.eval()(**inputs, pixel_values=pixel_values).logits, expected, rtol=0, atol=0
        )
    # create_model(path=...) loads too.
    assert create_model("tiny-dci", path=str(path)).config.path == str(path)


def test_save_refuses_existing_and_load_rejects_bad_input(tiny, tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "notes.txt").write_text("user data")
    with pytest.raises(ExgraError, match="already exists"):
        tiny.save(target)
    assert (target / "notes.txt").read_text() == "user data"
    tiny.save(target, overwrite=True)
    assert (target / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".ckpt*"))  # no temporary directory left behind
    with pytest.raises(ExgraError, match="not found"):
        load_model(tmp_path / "missing")
    with pytest.raises(ExgraError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="dense_connector"):
        load_model(target, dense_connector="dci")


def test_plain_checkpoint_loads_in_stock_transformers(tiny, tmp_path):
    path = tiny.save(tmp_path / "plain")
    inputs, pixel_values = batch(tiny, QUESTIONS)
    with torch.no_grad():
        expected = tiny.model.eval()(**inputs, pixel_values=pixel_values).logits
    torch.save({**inputs, "pixel_values": pixel_values, "expected": expected}, tmp_path / "inputs.pt")
    script = f"""
import sys, torch
from transformers import AutoModelForImageTextToText, AutoTokenizer, LlavaForConditionalGeneration
data = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
model = LlavaForConditionalGeneration.from_pretrained({str(path)!r}).eval()
auto = AutoModelForImageTextToText.from_pretrained({str(path)!r}).eval()
tokenizer = AutoTokenizer.from_pretrained({str(path)!r})
assert "exgra" not in sys.modules
assert type(auto) is LlavaForConditionalGeneration, type(auto)
with torch.no_grad():
    for candidate in (model, auto):
        logits = candidate(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                           pixel_values=data["pixel_values"]).logits
        assert torch.equal(logits, data["expected"]), (logits - data["expected"]).abs().max()
assert tokenizer.convert_tokens_to_ids("<im_patch>") == model.config.image_token_id
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_fresh_build_loads_llm_and_vision_weights(tmp_path):
    """The real 7B code path (llm=..., vision_tower=...) on tiny local weights."""
    source = create_model("tiny")
    llm_dir, tower_dir = tmp_path / "llm", tmp_path / "clip"
    text_config = LlamaConfig(
        **{**source.model.config.text_config.to_dict(), "vocab_size": len(source.tokenizer) - 3}
    )
    torch.manual_seed(3)
    llm = LlamaForCausalLM(text_config)
    llm.save_pretrained(llm_dir)
    source.tokenizer.save_pretrained(llm_dir)
    source.model.model.vision_tower.save_pretrained(tower_dir)
    source.image_processor.save_pretrained(tower_dir)

    bundle = create_model("tiny", llm=str(llm_dir), vision_tower=str(tower_dir))
    model = bundle.model
    assert not any(p.is_meta for p in model.parameters())
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(bundle.tokenizer)  # resized for the tokens the LLM lacked
    torch.testing.assert_close(embeddings[: text_config.vocab_size], llm.model.embed_tokens.weight)
    torch.testing.assert_close(
        model.model.language_model.layers[1].mlp.down_proj.weight, llm.model.layers[1].mlp.down_proj.weight
    )
    for name, tensor in source.model.model.vision_tower.state_dict().items():
        torch.testing.assert_close(model.model.vision_tower.state_dict()[name], tensor)
    inputs, pixel_values = batch(bundle, QUESTIONS[:1])
    assert torch.isfinite(model(**inputs, pixel_values=pixel_values).logits).all()


@pytest.mark.parametrize(("connector", "projector"), [("sci", "mlp2x_gelu"), ("none", "linear")])
def test_other_variants_round_trip_through_auto_classes(tmp_path, connector, projector):
    torch.manual_seed(5)
    bundle = create_model("tiny", dense_connector=connector, projector_type=projector)
    model = bundle.model.eval()
    assert type(model.config).__name__ == "ExgraLlavaConfig"
    projector_module = model.model.multi_modal_projector
    assert projector_module.linear_1.in_features == 64 * (3 if connector == "sci" else 1)
    assert hasattr(projector_module, "linear_2") == (projector == "mlp2x_gelu")
    _, pixel_values = batch(bundle, QUESTIONS)
    with torch.no_grad():
        states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        features = model.model.select_vision_features(pixel_values)
    if connector == "sci":  # 4 layers: states at 4 // 3 - 1 = 0 and 8 // 3 - 1 = 1
        torch.testing.assert_close(features, torch.cat([states[3], states[0], states[1]], dim=-1)[:, 1:])
    path = bundle.save(tmp_path / "ckpt")
    auto = AutoModelForImageTextToText.from_pretrained(path).eval()
    inputs, _ = batch(bundle, QUESTIONS)
    with torch.no_grad():
        expected = model(**inputs, pixel_values=pixel_values).logits
        torch.testing.assert_close(auto(**inputs, pixel_values=pixel_values).logits, expected, rtol=0, atol=0)


def test_biomedclip_option_is_gone():
    # BiomedCLIP was removed (docs/models.md): the option is refused by name, not accepted and then failed.
    with pytest.raises(ConfigError, match="vision_type"):
        create_model("tiny", vision_type="biomedclip")
