"""Every model family end to end on its tiny preset: stage 2 with alignment, resume, stock load, eval, ask.

The oracles are independent of the adapter code: trained / frozen groups are checked on the saved
safetensors against the initial weights; the pooled image feature is compared with the rows of the
``inputs_embeds`` that the stock forward hands to the language model at the image-token positions;
stock loading runs in a fresh interpreter that never imports exgra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from exgra.models import create_model
from exgra.models.families import family_of
from exgra.training import load_train_config, run_training

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "exgra" / "configs"
FAMILY_MODELS = ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-gemma3", "tiny-smolvlm", "tiny-llava-siglip"]
STEPS = 20


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from exgra.data.demo_data import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("families-demo"), num_samples=24)


def _config(name: str, demo, *overrides: str):
    return load_train_config(
        "stage2",
        CONFIGS / "tiny_stage2.yaml",
        [
            f"model.name={name}",
            f"data.train_json={demo.pretrain}",
            f"data.image_folder={demo.image_folder}",
            "data.max_length=160",
            f"train.max_steps={STEPS}",
            "train.per_device_batch_size=4",
            "train.save_every=10",
            *overrides,
        ],
    )


def _initial_weights(config) -> dict[str, torch.Tensor]:
    from accelerate.utils import set_seed

    from exgra.models import build_model

    set_seed(config.train.seed)
    return {k: v.clone() for k, v in build_model(config.model).model.state_dict().items()}


def _saved_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The weights of a saved checkpoint under the model's own parameter names (transformers 5 writes
    some families in their released key layout, e.g. Gemma 3's ``language_model.model.*``)."""
    from exgra.models import load_model

    return load_model(directory).model.state_dict()


_RUNS: dict[str, Path] = {}


def _trained_run(name: str, demo, root: Path) -> Path:
    """The uninterrupted 20-step stage-2 run of ``name`` (once per module)."""
    if name not in _RUNS:
        result = run_training(_config(name, demo), root / f"{name}-full", show_progress=False)
        assert result.final_dir is not None
        _RUNS[name] = result.final_dir
    return _RUNS[name]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("family-runs")


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_stage2_trains_its_groups_and_resume_equals_uninterrupted(name, demo, runs_root):
    config = _config(name, demo)
    initial = _initial_weights(config)
    final_dir = _trained_run(name, demo, runs_root)
    family = family_of(config.model)
    final = _saved_weights(final_dir)
    changed = {n for n, before in initial.items() if n in final and not torch.equal(before, final[n])}
    groups = {family.parameter_group(n) for n in initial}
    assert {"vision", "projector", "llm"} <= groups
    assert {family.parameter_group(n) for n in changed} == {"projector", "llm"}
    frozen = [n for n in initial if family.parameter_group(n) == "vision"]
    assert frozen and all(torch.equal(initial[n], final[n]) for n in frozen)
    assert (final_dir / "alignment.safetensors").is_file()  # the GNN trained beside the model
    rows = [json.loads(line) for line in (final_dir.parent / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["align_loss"])) and r["align_loss"] > 0 for r in rows)

    # Stop after 10 steps (checkpoint), resume to 20: the same weights as the uninterrupted run.
    out = runs_root / f"{name}-resumed"

    def stop_at_ten(info):
        info.stop = info.step == 10

    first = run_training(config, out, show_progress=False, callbacks=[stop_at_ten])
    assert first.interrupted and first.step == 10
    second = run_training(config, out, resume=True, show_progress=False)
    resumed = _saved_weights(second.final_dir)
    assert resumed.keys() == final.keys()
    assert all(torch.equal(resumed[k], final[k]) for k in final)


def _one_batch(bundle, demo, count: int = 3):
    from exgra.data.collate import TrainingCollator
    from exgra.data.datasets import SupervisedDataset
    from exgra.data.records import load_pretrain_records

    records = load_pretrain_records(demo.pretrain, require_long=True)[:count]
    family = bundle.family
    dataset = SupervisedDataset(
        records,
        demo.image_folder,
        bundle.tokenizer,
        None,
        None,
        0,
        160,
        alignment_texts=True,
        encoder=family.sample_encoder(bundle, 160),
    )
    items = [dataset[i] for i in range(len(dataset))]
    assert not [i for i in items if "bad_record" in i]
    return TrainingCollator(bundle.tokenizer.pad_token_id, family.collate_vision)(items)


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_labels_are_the_assistant_tokens_only(name, demo):
    bundle = create_model(name)
    batch = _one_batch(bundle, demo, 1)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    targets = bundle.tokenizer.decode(ids[labels != -100])
    from exgra.data.records import load_pretrain_records

    record = load_pretrain_records(demo.pretrain)[0]
    answer = record.conversations[1].value
    assert targets.strip().startswith(answer.strip()[:20])
    # Nothing of the question is a target; the image tokens are context.
    assert record.conversations[0].value.replace("<image>", "").strip()[:20] not in targets


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_align_loss_gradient_reaches_projector_and_language_model(name, demo):
    from exgra.alignment import MultiGraphAlignment
    from exgra.alignment.config import AlignmentConfig
    from exgra.training.steps import TrainingModule

    torch.manual_seed(0)
    bundle = create_model(name)
    family = bundle.family
    alignment = MultiGraphAlignment(AlignmentConfig(), feature_dim=family.hidden_size(bundle.model))
    module = TrainingModule(
        bundle.model, alignment, family=family, pad_token_id=bundle.tokenizer.pad_token_id
    )
    losses = module(_one_batch(bundle, demo))
    assert torch.isfinite(losses["align_loss"]) and float(losses["align_loss"].detach()) > 0
    losses["align_loss"].backward()
    reached = {
        family.parameter_group(n)
        for n, p in bundle.model.named_parameters()
        if p.grad is not None and float(p.grad.abs().sum()) > 0
    }
    assert {"projector", "llm"} <= reached


@pytest.mark.parametrize("name", [n for n in FAMILY_MODELS if "llava" not in n])
def test_pooled_image_features_are_the_tokens_put_in_the_sequence(name, demo):
    """Oracle: the stock forward's own ``inputs_embeds`` rows at the image-token positions, per image."""
    torch.manual_seed(0)
    bundle = create_model(name)
    family, model = bundle.family, bundle.model.eval()
    batch = _one_batch(bundle, demo)
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"].detach()

    handle = family.language_model(model).register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        vision = {k: batch[k] for k in family.vision_keys()}
        extras = {k: v for k, v in vision.items() if k != "pixel_values"}
        model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            **extras,
            **family.model_inputs(model, batch),
        )
        pooled = family.pooled_image_features(model, vision)
    handle.remove()
    image_positions = batch["input_ids"] == model.config.image_token_id
    expected = torch.stack([captured["embeds"][row][image_positions[row]].mean(0) for row in range(3)])
    counts = image_positions.sum(1)
    assert pooled.shape == expected.shape
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    if "qwen" in name:  # dynamic resolution: the demo's images differ in size, and so do token counts
        assert counts.min() >= 4


_STOCK = """
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoTokenizer, AutoImageProcessor
path, inputs = sys.argv[1], load_file(sys.argv[2])
model = AutoModelForImageTextToText.from_pretrained(path).eval()
AutoTokenizer.from_pretrained(path); AutoImageProcessor.from_pretrained(path)
with torch.no_grad():
    logits = model(**inputs).logits
assert not any(name.startswith("exgra") for name in sys.modules), "exgra was imported"
name = torch.tensor(list(type(model).__name__.encode()))
save_file({"logits": logits.contiguous(), "name": name}, sys.argv[3])
"""


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_saved_checkpoint_loads_in_stock_transformers_with_identical_logits(name, demo, runs_root, tmp_path):
    from exgra.models import load_model

    final_dir = _trained_run(name, demo, runs_root)
    bundle = load_model(final_dir)
    batch = _one_batch(bundle, demo, 2)
    family = bundle.family
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", *family.vision_keys())}
    inputs.update(family.model_inputs(bundle.model, batch))
    with torch.no_grad():
        expected = bundle.model.eval()(**inputs).logits
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp_path / "inputs.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _STOCK,
            str(final_dir),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    stock = load_file(str(tmp_path / "o"))
    assert bytes(stock["name"].tolist()).decode() == type(bundle.model).__name__.removeprefix("Exgra")
    torch.testing.assert_close(stock["logits"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_eval_and_ask_answer_with_the_trained_model(name, demo, runs_root, tmp_path, run_exgra):
    final_dir = _trained_run(name, demo, runs_root)
    output = tmp_path / "answers.jsonl"
    result = run_exgra(
        "eval", "vqa", "--model", final_dir, "--data", demo.test, "--images", demo.image_folder,
        "--output", output, "--max-new-tokens", "4", "--batch-size", "3", "--limit", "5", "--no-score",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    expected = min(5, len(json.loads(Path(demo.test).read_text())))
    assert len(lines) == expected and all(isinstance(line["text"], str) for line in lines)
    image = sorted(Path(demo.image_folder).rglob("*.png"))[0]
    asked = run_exgra(
        "ask", "--model", final_dir, "--image", image, "--max-new-tokens", "4", "What is shown?"
    )
    assert asked.exit_code == 0, asked.stderr
    assert asked.stdout.strip() or asked.stdout == "\n"  # an answer line (random weights may say nothing)


@pytest.mark.parametrize("name", [n for n in FAMILY_MODELS if "llava" not in n])
def test_zero_shot_option_scores_match_one_unpadded_forward_per_option(
    name, demo, runs_root, tmp_path, run_exgra
):
    """Batched, left-padded, images selected per option == each option scored alone (no padding)."""
    from exgra.data.records import load_image
    from exgra.eval.generate import AnswerGenerator, load_inference_model
    from exgra.eval.zero_shot import option_log_likelihoods

    final_dir = _trained_run(name, demo, runs_root)
    generator = AnswerGenerator(load_inference_model(final_dir, device="cpu"))
    family, bundle = generator.family, generator.bundle
    names = sorted(p.name for p in Path(demo.image_folder).iterdir())[:2]
    images = [load_image(demo.image_folder, n) for n in names]
    questions = ["What is shown?", "Which organ?"]
    options = [["a chest", "cells"], ["the liver", "a retina image", "no"]]
    batched = option_log_likelihoods(generator, questions, generator.preprocess(images), options)
    tokenizer = bundle.tokenizer
    for image, question, choices, scores in zip(images, questions, options, batched, strict=True):
        vision = family.preprocess_images(bundle, [image])
        context = generator.build_prompt(question)
        for choice, (total, count) in zip(choices, scores, strict=True):
            inputs = family.generation_inputs(bundle, [f"{context} {choice}"], vision)
            with torch.no_grad():
                logits = bundle.model(**inputs).logits[0].float()
            ids = inputs["input_ids"][0]
            option_ids = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            assert count >= 1 and ids[-count:].tolist()[-1] == option_ids[-1]
            log_probs = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[1:, None])[:, 0]
            assert total == pytest.approx(float(log_probs[-count:].sum()), abs=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("preset", ["qwen2.5-vl-7b", "qwen3-vl-8b", "medgemma-4b", "smolvlm-256m"])
def test_qlora_without_cuda_fails_with_one_clear_line(preset, demo, tmp_path, run_exgra):
    result = run_exgra(
        "train", "stage2", "--config", CONFIGS / "tiny_stage2.yaml", "--output-dir", tmp_path / "run",
        f"model.name={preset}", "model.llm=/nowhere", "model.quantization=4bit",
        "train.lora.enabled=true",
        f"data.train_json={demo.pretrain}", f"data.image_folder={demo.image_folder}",
    )  # fmt: skip
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CUDA" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    no_lora = run_exgra(
        "train", "stage2", "--config", CONFIGS / "tiny_stage2.yaml", "--output-dir", tmp_path / "run2",
        f"model.name={preset}", "model.quantization=4bit",
        f"data.train_json={demo.pretrain}", f"data.image_folder={demo.image_folder}",
    )  # fmt: skip
    assert no_lora.exit_code == 1 and "train.lora.enabled=true" in no_lora.stderr


@pytest.mark.parametrize(
    ("accelerate_config", "name"),
    [
        ("fsdp_qwen2_5_vl.yaml", "tiny-qwen2.5-vl"),
        ("fsdp_qwen3_vl.yaml", "tiny-qwen3-vl"),
        ("fsdp_gemma3.yaml", "tiny-gemma3"),
        ("fsdp_smolvlm.yaml", "tiny-smolvlm"),
        ("fsdp_llava_mistral.yaml", "tiny-llava-siglip"),
    ],
)
def test_fsdp_configs_wrap_the_family_decoder_layer(accelerate_config, name):
    import yaml

    data = yaml.safe_load((CONFIGS / "accelerate" / accelerate_config).read_text())
    bundle = create_model(name)
    wrapped = data["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    assert wrapped == bundle.family.decoder_layer_class(bundle.model)
    assert wrapped in {type(m).__name__ for m in bundle.model.modules()}


@pytest.mark.parametrize(
    "recipe",
    sorted(
        p.name
        for p in CONFIGS.glob("*.yaml")
        if "_v1_5" in p.name or "medgemma" in p.name or "qwen2_5" in p.name
    ),
)
def test_family_recipes_validate_and_open_with_their_command(recipe):
    text = (CONFIGS / recipe).read_text()
    stage = "finetune" if recipe.startswith("finetune") else "stage2"
    first = text.splitlines()[0]
    assert first.startswith("# ") and f"--config exgra/configs/{recipe}" in first
    assert ("exgra finetune" if stage == "finetune" else "exgra train stage2") in first
    config = load_train_config(stage, CONFIGS / recipe, [])
    assert config.alignment.enabled == (stage == "stage2")
    assert config.train.lora.enabled == ("lora" in recipe)
    assert (config.model.quantization == "4bit") == ("qlora" in recipe)
    second = text.splitlines()[1]
    match = [part for part in (first + " " + second).split() if part.startswith("exgra/configs/accelerate/")]
    for path in match:
        assert (ROOT / path).is_file()


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_stage1_trains_only_the_projector_and_finetune_validates(name, demo, tmp_path, run_exgra):
    common = [f"model.name={name}", f"data.image_folder={demo.image_folder}", "train.max_steps=2"]
    common += ["train.per_device_batch_size=4", "data.max_length=160"]
    stage1 = load_train_config(
        "stage1", CONFIGS / "tiny_stage1.yaml", [*common, f"data.train_json={demo.pretrain}"]
    )
    initial = _initial_weights(stage1)
    result = run_training(stage1, tmp_path / "stage1", show_progress=False)
    family = family_of(stage1.model)
    final = _saved_weights(result.final_dir)
    changed = {family.parameter_group(n) for n, v in initial.items() if not torch.equal(v, final[n])}
    assert changed == {"projector"}
    tuned = run_exgra(
        "finetune", "--config", CONFIGS / "tiny_finetune.yaml", "--output-dir", tmp_path / "ft",
        *common, f"model.path={result.final_dir}", f"data.train_json={demo.train}",
        f"data.val_json={demo.val}", "train.eval_every=2", "train.eval_max_items=3",
    )  # fmt: skip
    assert tuned.exit_code == 0, tuned.stderr
    metrics = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_average" in row for row in metrics)
    assert (tmp_path / "ft" / "best" / "config.json").is_file()


def test_gemma3_checkpoint_loads_with_the_stock_processor(demo, runs_root, tmp_path):
    """Gemma 3's processor needs no torchvision: AutoProcessor prepares exactly exgra's inputs."""
    final_dir = _trained_run("tiny-gemma3", demo, runs_root)
    script = """
import sys, torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained(sys.argv[1])
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
out = processor(text=[text], images=[Image.open(sys.argv[2])], return_tensors="pt", add_special_tokens=False)
assert not any(name.startswith("exgra") for name in sys.modules)
save_file({"input_ids": out["input_ids"], "pixel_values": out["pixel_values"]}, sys.argv[3])
"""
    stock, (_, mine) = _stock_and_exgra_inputs(script, final_dir, demo, tmp_path)
    assert torch.equal(mine["input_ids"], stock["input_ids"])
    torch.testing.assert_close(mine["pixel_values"], stock["pixel_values"], rtol=0, atol=0)


def _stock_and_exgra_inputs(script: str, final_dir: Path, demo, tmp_path: Path):
    """``script DIR IMAGE OUT`` run in a fresh interpreter without exgra (its saved tensors), and exgra's
    bundle with its generation inputs for "What is shown?" about the same image."""
    from exgra.data.records import load_image
    from exgra.models import load_model

    image = sorted(Path(demo.image_folder).rglob("*.png"))[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(final_dir), str(image), str(tmp_path / "o")],
        capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    bundle = load_model(final_dir)
    family = bundle.family
    vision = family.preprocess_images(bundle, [load_image(image.parent, image.name)])
    mine = family.generation_inputs(bundle, [family.prompt(bundle, "What is shown?")], vision)
    return load_file(str(tmp_path / "o")), (bundle, mine)


# Qwen2.5-VL, Qwen3-VL and SmolVLM processors need torchvision (their video processors), which cannot be
# installed beside the CPU torch (docs/models.md); the stock pieces they are made of load and are checked:
# AutoTokenizer's chat template, the PIL image processor, the processor's image-token expansion rule.
_STOCK_PIECES = """
import json, sys, torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
path, image = sys.argv[1], Image.open(sys.argv[2]).convert("RGB")
config = AutoConfig.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
image_processor = AutoImageProcessor.from_pretrained(path)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
if config.model_type == "smolvlm":
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string
    vision = image_processor([[image]], return_tensors="pt", return_row_col_info=True)
    seq = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 // config.scale_factor**2
    rows, cols = vision["rows"][0][0], vision["cols"][0][0]
    tokens = ("<fake_token_around_image>", "<image>", "<global-img>")
    block = get_image_prompt_string(rows, cols, seq, *tokens)
    text = text.replace("<image>", block)
    tensors = {"pixel_values": vision["pixel_values"], "pixel_attention_mask": vision["pixel_attention_mask"]}
else:  # Qwen2.5-VL / Qwen3-VL processors: one <|image_pad|> per merged patch group
    vision = image_processor([image], return_tensors="pt")
    merge = image_processor.merge_size
    count = int(vision["image_grid_thw"][0].prod()) // merge**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * count)
    tensors = {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
model = AutoModelForImageTextToText.from_pretrained(path).eval()
qwen3 = config.model_type == "qwen3_vl"
extra = {"mm_token_type_ids": (ids == config.image_token_id).long()} if qwen3 else {}
with torch.no_grad():
    logits = model(input_ids=ids, **tensors, **extra).logits
assert not any(name.startswith("exgra") for name in sys.modules), "exgra was imported"
save_file({"input_ids": ids, "logits": logits, **tensors}, sys.argv[3])
"""


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-smolvlm"])
def test_stock_tokenizer_and_image_processor_prepare_exgras_inputs(name, demo, runs_root, tmp_path):
    final_dir = _trained_run(name, demo, runs_root)
    stock, (bundle, mine) = _stock_and_exgra_inputs(_STOCK_PIECES, final_dir, demo, tmp_path)
    family = bundle.family
    assert torch.equal(mine["input_ids"], stock["input_ids"])
    for key in family.vision_keys():
        torch.testing.assert_close(mine[key], stock[key], rtol=0, atol=0)
    with torch.no_grad():
        logits = bundle.model.eval()(**mine).logits
    torch.testing.assert_close(logits, stock["logits"], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "family", "released_parameters"),
    # Sizes as published with the releases (model cards): 8.29 B, 8.77 B, 4.30 B, 256 M.
    [("qwen2.5-vl-7b", "qwen2.5-vl", 8.29e9), ("qwen3-vl-8b", "qwen3-vl", 8.77e9),
     ("medgemma-4b", "gemma3", 4.30e9), ("smolvlm-256m", "smolvlm", 256e6)],
)  # fmt: skip
def test_real_presets_build_the_released_architecture_on_meta(name, family, released_parameters):
    bundle = create_model(name, device="meta")
    assert bundle.family.name == family and bundle.config.dtype == "bfloat16"
    parameters = sum(p.numel() for p in bundle.model.parameters())
    assert abs(parameters - released_parameters) / released_parameters < 0.01
    with pytest.raises(Exception, match="needs pretrained weights"):
        create_model(name)


def test_a_llava_template_on_a_chat_family_model_is_one_clear_error(demo, runs_root, run_exgra):
    final_dir = _trained_run("tiny-qwen2.5-vl", demo, runs_root)
    image = sorted(Path(demo.image_folder).rglob("*.png"))[0]
    result = run_exgra("ask", "--model", final_dir, "--image", image, "--template", "legacy", "What?")
    assert result.exit_code == 1 and "own chat template" in result.stderr
