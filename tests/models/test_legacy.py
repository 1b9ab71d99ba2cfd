"""Legacy conversion, tested against a forward pass written the way the reference computes it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from exgra.data.templates import get_template
from exgra.models import build_tiny_tokenizer, load_model
from exgra.models.legacy import legacy_weight_name
from tests.models.reference_layouts import HIDDEN, WIDTH, projector_weights, write_shards, write_tower


def _write_legacy(root, connector: str, fmt: str):
    """A tiny checkpoint in the reference's layout (REFERENCE §6) plus a separate CLIP directory."""
    torch.manual_seed(7)
    tokenizer = build_tiny_tokenizer()
    tower_dir, source = root / "clip", root / f"legacy-{connector}"
    source.mkdir()
    tower = write_tower(tower_dir)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            rms_norm_eps=1e-6,
        )
    ).eval()
    mm_hidden = WIDTH * (3 if connector == "dci" else 1)
    projector = projector_weights(mm_hidden)
    state = {**llama.state_dict(), **projector}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old transformers buffer
    state["model.message_pass_node_features.conv1.lin_rel.weight"] = torch.randn(HIDDEN, HIDDEN)  # GNN
    config = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_size": HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_sequence_length": 2048,
        "vocab_size": len(tokenizer),
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": -1,
        "mm_vision_tower": "openai/clip-vit-large-patch14",
        "mm_hidden_size": mm_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": True,
        "use_mm_proj": True,
        "multi_graph": True,
    }
    (source / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(source)
    write_shards(source, state, fmt)
    return source, tower_dir, tokenizer, tower, llama, projector


def _legacy_forward(input_ids, pixel_values, tokenizer, tower, llama, projector, connector):
    """The reference's forward: CLIP features (+DCI) -> mlp2x_gelu -> spliced after each <im_start>."""
    states = tower(pixel_values, output_hidden_states=True).hidden_states
    features = states[-2]
    if connector == "dci":
        features = torch.cat(
            [features, torch.stack(states[0:2]).mean(0), torch.stack(states[2:4]).mean(0)], dim=-1
        )
    features = features[:, 1:]
    hidden = F.linear(
        features, projector["model.mm_projector.0.weight"], projector["model.mm_projector.0.bias"]
    )
    image = F.linear(
        F.gelu(hidden), projector["model.mm_projector.2.weight"], projector["model.mm_projector.2.bias"]
    )
    embeds = llama.model.embed_tokens(input_ids).clone()
    start_id = tokenizer.convert_tokens_to_ids("<im_start>")
    end_id = tokenizer.convert_tokens_to_ids("<im_end>")
    count = image.shape[1]
    for row in range(input_ids.shape[0]):
        start = int((input_ids[row] == start_id).nonzero()[0])
        assert input_ids[row, start + 1 + count] == end_id
        embeds[row, start + 1 : start + 1 + count] = image[row]
    return llama(inputs_embeds=embeds).logits


def test_legacy_weight_names():
    assert (
        legacy_weight_name("model.layers.3.mlp.up_proj.weight")
        == "model.language_model.layers.3.mlp.up_proj.weight"
    )
    assert legacy_weight_name("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert legacy_weight_name("model.norm.weight") == "model.language_model.norm.weight"
    assert legacy_weight_name("lm_head.weight") == "lm_head.weight"
    assert legacy_weight_name("model.mm_projector.2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert legacy_weight_name("model.mm_projector.weight") == "model.multi_modal_projector.linear_1.weight"
    assert legacy_weight_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert legacy_weight_name("model.message_pass_node_features.conv2.lin_root.weight") is None


@pytest.mark.parametrize(("connector", "fmt"), [("none", "bin"), ("dci", "safetensors")])
def test_convert_gives_legacy_logits(tmp_path, run_exgra, connector, fmt):
    source, tower_dir, tokenizer, tower, llama, projector = _write_legacy(tmp_path, connector, fmt)
    destination = tmp_path / "converted"
    result = run_exgra("convert", source, destination, "--vision-tower", tower_dir)
    assert result.exit_code == 0, result.stderr
    assert f"dense connector {connector}" in result.stdout and "ignored 2 tensors" in result.stdout
    assert not list(destination.glob("*.bin")) and list(destination.glob("*.safetensors"))

    bundle = load_model(destination)
    assert bundle.config.dense_connector == connector and bundle.template == "legacy"
    assert bundle.num_image_tokens == 16
    template = get_template("legacy")
    prompts = [
        template.prompt("Is there a fracture?\n<image>", bundle.image_tokens),
        template.prompt("Organ?", bundle.image_tokens),
    ]
    encoded = bundle.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right")
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _legacy_forward(
            encoded["input_ids"], pixel_values, tokenizer, tower, llama, projector, connector
        )
        actual = bundle.model.eval()(input_ids=encoded["input_ids"], pixel_values=pixel_values).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)

    # It generates with the legacy template: greedy continuation of the legacy forward's logits.
    single = bundle.tokenizer(prompts[:1], return_tensors="pt")
    with torch.no_grad():
        first = _legacy_forward(
            single["input_ids"], pixel_values[:1], tokenizer, tower, llama, projector, connector
        )
    generated = bundle.model.generate(
        **single,
        pixel_values=pixel_values[:1],
        max_new_tokens=3,
        do_sample=False,
        stop_strings=["###"],
        tokenizer=bundle.tokenizer,
    )
    assert generated[0, single["input_ids"].shape[1]] == first[0, -1].argmax()
    answer = template.clean_answer(
        bundle.tokenizer.decode(generated[0, single["input_ids"].shape[1] :], skip_special_tokens=True)
    )
    assert "###" not in answer


def test_convert_cli_errors(tmp_path, run_exgra):
    missing = run_exgra("convert", tmp_path / "nope", tmp_path / "out")
    assert missing.exit_code == 1 and "checkpoint directory not found" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    no_config = run_exgra("convert", empty, tmp_path / "out")
    assert no_config.exit_code == 1 and "no config.json" in no_config.stderr
    assert "Traceback" not in no_config.stderr
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for args, message in (([a_file, tmp_path / "out"], "is a file"), ([empty, a_file / "out"], "is a file")):
        result = run_exgra("convert", *args)
        assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()

    source, tower_dir, *_ = _write_legacy(tmp_path, "none", "safetensors")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    for extra in ((), ("--overwrite",)):  # a folder exgra did not write is never replaced (issue #12)
        refused = run_exgra("convert", source, existing, "--vision-tower", tower_dir, *extra)
        assert refused.exit_code == 1 and "keep.txt" in refused.stderr
        assert [p.name for p in existing.iterdir()] == ["keep.txt"]
        assert (existing / "keep.txt").read_text() == "user data"
    (existing / "keep.txt").unlink()
    assert run_exgra("convert", source, existing, "--vision-tower", tower_dir).exit_code == 0
    refused = run_exgra("convert", source, existing, "--vision-tower", tower_dir)
    assert refused.exit_code == 1 and "--overwrite" in refused.stderr
    replaced = run_exgra(
        "convert", source, existing, "--vision-tower", tower_dir, "--overwrite", "--dtype", "bfloat16"
    )
    assert replaced.exit_code == 0, replaced.stderr
    assert load_model(existing).model.dtype == torch.bfloat16

    offline = run_exgra("convert", source, tmp_path / "out2", "--vision-tower", tmp_path / "no-clip")
    assert offline.exit_code == 1 and "vision tower" in offline.stderr
    bad_dtype = run_exgra("convert", source, tmp_path / "out3", "--dtype", "int8")
    assert bad_dtype.exit_code == 2 and "--dtype" in bad_dtype.stderr  # a usage error: choices shown
    usage = run_exgra("convert")
    assert usage.exit_code == 2


def test_models_command_lists_registry(run_exgra):
    result = run_exgra("models")
    assert result.exit_code == 0
    for name in ("tiny", "tiny-dci", "small", "llava-med-7b", "llava-med-v1.5-7b", "exgra-med-7b-dci"):
        assert name in result.stdout
    assert "dci" in result.stdout and "mlp2x_gelu" in result.stdout


@pytest.mark.parametrize("width", [80, 120])
def test_models_table_is_readable(width):
    import io

    from rich.console import Console

    from exgra.cli.models import models_table
    from exgra.models import list_models

    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(models_table())
    lines = console.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    for spec in list_models():
        assert f"│ {spec.name} " in "\n".join(lines)  # names and sizes are never cut
        assert spec.parameters in "\n".join(lines)
    # The old 8-column table wrapped the description one word per line (~70 lines at 80 columns).
    # (8 lines per entry at 80 columns, 5 at 120, as with the first five entries.)
    assert len(lines) <= (8 if width == 80 else 5) * len(list_models())
