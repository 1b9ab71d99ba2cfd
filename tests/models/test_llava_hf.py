"""A llava-hf layout folder (LLaVA-1.5 as transformers publishes it) used as ``--model DIR`` / ``model.path``.

The folder is written by stock transformers itself (``reference_layouts.write_llava_hf``); the oracles
are stock transformers too: its own ``LlavaForConditionalGeneration`` / ``LlavaProcessor`` on the same
folder, and, after training, a fresh interpreter that never imports exgra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from exgra.data.records import load_image
from exgra.models import load_model
from exgra.training import load_train_config, run_training
from tests.models.reference_layouts import write_llava_hf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llava_hf(tmp_path_factory) -> Path:
    return write_llava_hf(tmp_path_factory.mktemp("llava-hf") / "llava-1.5-tiny-hf")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from exgra.data.demo_data import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("llava-hf-demo"), num_samples=12)


def _image(demo):
    path = sorted(Path(demo.image_folder).rglob("*.png"))[0]
    return path, load_image(path.parent, path.name)


def test_the_folder_loads_with_its_own_weights_tokens_and_processor(llava_hf, demo):
    bundle = load_model(llava_hf)
    stock = LlavaForConditionalGeneration.from_pretrained(llava_hf).eval()
    mine, theirs = bundle.model.state_dict(), stock.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    layout = (bundle.template, bundle.config.use_im_start_end, bundle.image_patch_token)
    assert layout == ("chat", False, "<image>")

    # The stock processor's expansion of one <image> is the image-token count of exgra's prompt.
    processor = AutoProcessor.from_pretrained(llava_hf)
    _, image = _image(demo)
    text = "USER: <image>\nWhat is shown? ASSISTANT:"
    stock_inputs = processor(text=text, images=[image], return_tensors="pt")
    stock_count = int((stock_inputs["input_ids"] == 32000).sum())
    family = bundle.family
    vision = family.preprocess_images(bundle, [image])
    inputs = family.generation_inputs(bundle, [family.prompt(bundle, "What is shown?")], vision)
    assert int((inputs["input_ids"] == 32000).sum()) == stock_count == 16
    torch.testing.assert_close(inputs["pixel_values"], stock_inputs["pixel_values"], rtol=0, atol=0)
    with torch.no_grad():
        expected = stock(**stock_inputs).logits
        got = bundle.model.eval()(**stock_inputs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_llava_15_preset_loads_the_folder_with_path(llava_hf):
    from exgra.models import create_model

    bundle = create_model("llava-1.5-7b", path=str(llava_hf), dtype="float32")
    stock = LlavaForConditionalGeneration.from_pretrained(llava_hf).state_dict()
    assert all(torch.equal(value, stock[name]) for name, value in bundle.model.state_dict().items())
    # The preset's runtime settings: LLaVA-1.5's chat template and its pad-to-square images.
    assert (bundle.template, bundle.image_processor.aspect_ratio) == ("chat", "pad")


def test_ask_and_eval_answer_ask_as_stock_greedy_generation(llava_hf, demo, tmp_path, run_exgra):
    path, image = _image(demo)
    asked = run_exgra("ask", "--model", llava_hf, "--image", path, "--max-new-tokens", "6", "What is shown?")
    assert asked.exit_code == 0, asked.stderr

    bundle = load_model(llava_hf)
    prompt = bundle.family.prompt(bundle, "What is shown?")
    processor = AutoProcessor.from_pretrained(llava_hf)
    ids = processor.tokenizer(prompt, return_tensors="pt")
    pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    stock = LlavaForConditionalGeneration.from_pretrained(llava_hf).eval()
    with torch.no_grad():
        out = stock.generate(**ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=False)
    text = processor.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    # Vicuna v1 ends an answer at </s> or at the next "USER:" turn.
    expected = text.split("</s>")[0].split("USER:")[0].strip()
    assert asked.stdout.strip() == expected

    output = tmp_path / "answers.jsonl"
    evaluated = run_exgra(
        "eval", "vqa", "--model", llava_hf, "--data", demo.test, "--images", demo.image_folder,
        "--output", output, "--max-new-tokens", "3", "--limit", "3", "--no-score",
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.stderr
    expected_lines = min(3, len(json.loads(Path(demo.test).read_text())))
    assert len(output.read_text().splitlines()) == expected_lines >= 1


_STOCK = """
import json, sys, torch
from safetensors.torch import load_file, save_file
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
path, image, ids = sys.argv[1], Image.open(sys.argv[2]).convert("RGB"), load_file(sys.argv[3])["input_ids"]
processor = AutoProcessor.from_pretrained(path)
model = AutoModelForImageTextToText.from_pretrained(path).eval()
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
pixel_values = processor(text=[text], images=[image], return_tensors="pt")["pixel_values"]
with torch.no_grad():
    logits = model(input_ids=ids, pixel_values=pixel_values).logits
assert not any(name.startswith("exgra") for name in sys.modules), "exgra was imported"
save_file({"logits": logits, "pixel_values": pixel_values}, sys.argv[4])
print(json.dumps(text))
"""


def test_stage2_and_finetune_from_the_folder_then_stock_reload(llava_hf, demo, tmp_path, run_exgra):
    torch.set_num_threads(1)
    config = load_train_config(
        "stage2",
        ROOT / "exgra" / "configs" / "tiny_stage2.yaml",
        [
            f"model.path={llava_hf}",
            f"data.train_json={demo.pretrain}",
            f"data.image_folder={demo.image_folder}",
            "data.max_length=200",
            "train.max_steps=4",
            "train.per_device_batch_size=2",
            "train.save_every=4",
        ],
    )
    result = run_training(config, tmp_path / "stage2", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["align_loss"])) for r in rows)
    before = LlavaForConditionalGeneration.from_pretrained(llava_hf).state_dict()
    bundle = load_model(result.final_dir)
    after = bundle.model.state_dict()
    changed = {
        n.split(".")[1] for n in before if n.startswith("model.") and not torch.equal(before[n], after[n])
    }
    assert changed == {"language_model", "multi_modal_projector"}  # the tower stays frozen in stage 2

    tuned = run_exgra(
        "finetune", "--config", ROOT / "exgra" / "configs" / "tiny_finetune.yaml",
        "--output-dir", tmp_path / "ft", f"model.path={result.final_dir}", f"data.train_json={demo.train}",
        f"data.image_folder={demo.image_folder}", f"data.val_json={demo.val}",
        "train.max_steps=2", "train.eval_every=2", "train.eval_max_new_tokens=2",
        "train.save_every=2",
    )  # fmt: skip
    assert tuned.exit_code == 0, tuned.stderr
    final = tmp_path / "ft" / "final"

    # The saved checkpoint loads in stock transformers (no exgra): its processor renders exgra's prompt and
    # prepares exgra's pixels, and its model gives exgra's logits.
    from safetensors.torch import save_file

    path, image = _image(demo)
    bundle = load_model(final)
    family = bundle.family
    prompt = family.prompt(bundle, "What is shown?")
    inputs = family.generation_inputs(bundle, [prompt], family.preprocess_images(bundle, [image]))
    save_file({"input_ids": inputs["input_ids"]}, str(tmp_path / "ids"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", _STOCK, str(final), str(path), str(tmp_path / "ids"), str(tmp_path / "o")],
        capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    stock = load_file(str(tmp_path / "o"))
    # One <image> that the stock processor expands to the image-token count.
    collapsed = prompt.replace("<image>" * bundle.num_image_tokens, "<image>")
    assert json.loads(done.stdout.strip().splitlines()[-1]) == bundle.tokenizer.bos_token + collapsed
    torch.testing.assert_close(inputs["pixel_values"], stock["pixel_values"], rtol=0, atol=0)
    with torch.no_grad():
        logits = bundle.model.eval()(**inputs).logits
    torch.testing.assert_close(logits, stock["logits"], rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_llava_qlora_without_cuda_fails_with_one_clear_line(llava_hf, demo, tmp_path, run_exgra):
    common = [
        "--config", ROOT / "exgra" / "configs" / "tiny_stage2.yaml", "model.quantization=4bit",
        "train.lora.enabled=true", f"data.train_json={demo.pretrain}",
        f"data.image_folder={demo.image_folder}",
    ]  # fmt: skip
    for index, source in enumerate(
        [f"model.path={llava_hf}", "model.name=llava-med-v1.5-7b", "model.name=llava-1.5-7b"]
    ):
        extra = [] if source.startswith("model.path") else ["model.llm=/nowhere"]
        result = run_exgra(
            "train", "stage2", "--output-dir", tmp_path / f"run{index}", source, *extra, *common
        )
        assert result.exit_code == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "CUDA" in lines[0] and "Traceback" not in result.stderr
        assert not (tmp_path / f"run{index}").exists() or not any((tmp_path / f"run{index}").iterdir())
