"""QLoRA without a GPU: which layers each family's 4-bit config converts, and what a QLoRA run saves.

bitsandbytes needs CUDA, so the 4-bit load itself runs in ``bench/gpu_check.py``. Here transformers'
own skip rule (``should_convert_module``, what its bitsandbytes quantiser applies to every linear layer)
says which layers the family's ``BitsAndBytesConfig`` would convert, on the tiny model and on the real
preset's architecture (meta device); and the save path of a run whose config says
``model.quantization=4bit`` must write a plain checkpoint that loads on CPU, with exgra and without it.
"""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from exgra.models import create_model, load_model
from exgra.models.families.base import bits_and_bytes_config

# (tiny preset, real preset) per family.
FAMILY_PRESETS = [
    ("tiny-qwen2.5-vl", "qwen2.5-vl-7b"),
    ("tiny-qwen3-vl", "qwen3-vl-8b"),
    ("tiny-gemma3", "medgemma-4b"),
    ("tiny-smolvlm", "smolvlm-256m"),
    ("tiny-llava-siglip", "llava-1.5-7b"),
]


def _converted(bundle) -> tuple[set[str], set[str], list[str]]:
    """(linear layers the 4-bit config converts, linear layers of the language model, all linear layers)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    config = bits_and_bytes_config(bundle.family.quantization_skip_modules)
    linears = {name: m for name, m in bundle.model.named_modules() if isinstance(m, nn.Linear)}
    converted = {name for name in linears if should_convert_module(name, config.llm_int8_skip_modules)}
    # The oracle is module identity: the decoder stack's own linear layers, whatever their path.
    decoder = {id(m) for m in bundle.family.language_model(bundle.model).modules()}
    language = {name for name, m in linears.items() if id(m) in decoder}
    return converted, language, list(linears)


@pytest.mark.parametrize("name", [name for pair in FAMILY_PRESETS for name in pair])
def test_qlora_quantises_the_language_model_only(name):
    """Tower, projector and LM head stay bf16 (trainable); every decoder linear layer becomes 4-bit."""
    bundle = create_model(name, device="meta" if not name.startswith("tiny") else None)
    family = bundle.family
    converted, language, linears = _converted(bundle)
    assert language and converted == language
    groups = {family.parameter_group(f"{layer}.weight") for layer in linears if layer not in converted}
    # The projector has linear layers in every family but Gemma 3 (a weight matrix and a norm there).
    assert groups >= ({"vision"} if family.name == "gemma3" else {"vision", "projector"})
    assert "lm_head" in linears and "lm_head" not in converted
    config = bits_and_bytes_config(family.quantization_skip_modules)
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (
        True, "nf4", True,
    )  # fmt: skip
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-llava-siglip"])
def test_a_qlora_run_saves_a_plain_checkpoint_that_loads_on_cpu(name, tmp_path):
    """The run's save path with ``quantization=4bit`` in its config: LoRA merged, nothing load-time kept."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from exgra.training.checkpoint import save_model_dir

    torch.manual_seed(0)
    bundle = create_model(name)
    family = bundle.family
    targets = rf".*{family.language_model_pattern}.*\.(q_proj|v_proj)"
    model = get_peft_model(bundle.model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():  # a trained adapter: lora_B starts at zero, which would merge to nothing
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.05)
    bundle.model = model
    bundle.config = bundle.config.model_copy(update={"quantization": "4bit"})
    out = tmp_path / "final"
    save_model_dir(types.SimpleNamespace(model=model, alignment=None), bundle, out)

    saved = yaml.safe_load((out / "exgra_model.yaml").read_text())
    assert saved["quantization"] == "none"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert bundle.model is model and any("lora_A" in n for n, _ in model.named_parameters())  # untouched

    # Merged weights = peft's own merge of the same adapters.
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    weights = load_file(str(out / "model.safetensors"))
    for key, value in merged.items():
        if key in weights:  # tied weights are stored once
            torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
    assert not any("lora_" in key for key in weights)

    # Both loaders on CPU give the adapted model's logits (the unmerged forward as the oracle).
    loaded = load_model(out)
    assert loaded.config.quantization == "none"
    vision = family.preprocess_images(loaded, [_image()])
    inputs = family.generation_inputs(loaded, [family.prompt(loaded, "What is shown?")], vision)
    stock = AutoModelForImageTextToText.from_pretrained(out).eval()
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        torch.testing.assert_close(loaded.model.eval()(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stock(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


def _image():
    from PIL import Image

    return Image.new("RGB", (48, 40), (120, 30, 200))


@pytest.mark.parametrize(
    "name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-gemma3", "tiny-smolvlm", "tiny-llava-siglip"]
)
def test_a_real_4bit_model_saves_dequantised_with_its_adapters_merged(name, tmp_path):
    """Where bitsandbytes is installed (the ``gpu`` extra; its CPU backend needs no GPU): the family's
    config really quantises the decoder only, and the run's save writes plain bf16 weights whose logits
    are the 4-bit model's with its adapters, not the 4-bit model's without them."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from exgra.training.checkpoint import save_model_dir

    torch.manual_seed(0)
    bundle = create_model(name)
    family = bundle.family
    bundle.save(tmp_path / "base")
    # exgra refuses 4 bit without CUDA (the GPU kernels); transformers loads it on bitsandbytes' CPU backend.
    quantized = type(bundle.model).from_pretrained(
        tmp_path / "base",
        dtype=torch.bfloat16,
        quantization_config=bits_and_bytes_config(family.quantization_skip_modules),
        device_map={"": "cpu"},
    )
    four_bit = {id(m) for m in quantized.modules() if type(m).__name__ == "Linear4bit"}
    decoder_linears = {
        id(m) for m in family.language_model(quantized).modules() if type(m).__name__ == "Linear4bit"
    }
    assert four_bit and four_bit == decoder_linears
    loaded = load_model(tmp_path / "base")
    loaded.model = quantized
    loaded.config = loaded.config.model_copy(update={"quantization": "4bit", "dtype": "bfloat16"})
    vision = family.preprocess_images(loaded, [_image()])
    inputs = family.generation_inputs(loaded, [family.prompt(loaded, "What is shown?")], vision)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}

    def logits(model):
        # Train mode (no dropout in these models): in eval mode bitsandbytes' CPU backend repacks the 4-bit
        # weights in place into a CPU-only layout that transformers' dequantize does not read (GPUs never do).
        return model.train()(**inputs).logits.float()

    with torch.no_grad():
        without_adapters = logits(quantized)
    model = prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)
    targets = rf".*{family.language_model_pattern}.*\.(q_proj|v_proj)"
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.05)
        adapted = logits(model)
    save_model_dir(types.SimpleNamespace(model=model, alignment=None), loaded, tmp_path / "final")

    assert "quantization_config" not in json.loads((tmp_path / "final" / "config.json").read_text())
    weights = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert {value.dtype for value in weights.values()} == {torch.bfloat16}
    assert not any("lora_" in key or "absmax" in key or "quant" in key for key in weights)
    saved = load_model(tmp_path / "final")  # on CPU, quantization=none
    with torch.no_grad():
        error = (logits(saved.model) - adapted).abs().max()
    assert error < 0.1 * (without_adapters - adapted).abs().max(), error
