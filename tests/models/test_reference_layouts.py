"""Checkpoints in the reference's exact layouts (v1.0 plain, v1.0 DCI, v1.5 Mistral): conversion, the
reference's tokenisation and image conversion, and loading the result with stock transformers only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sentencepiece
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from exgra.data.collate import IGNORE_INDEX, tokenize_conversation
from exgra.data.templates import SYSTEM_MESSAGE, get_template
from exgra.models import load_model
from exgra.models.legacy import convert_legacy_checkpoint
from tests.models.reference_layouts import ADDED_V10, sentencepiece_model, write_v10, write_v15
from tests.models.test_legacy import _legacy_forward


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """v1.0 plain, v1.0 DCI and v1.5 checkpoints in the reference's layouts, each converted."""
    root = tmp_path_factory.mktemp("reference-layouts")
    out = {}
    for name in ("none", "dci", "v15"):
        parts = write_v15(root) if name == "v15" else write_v10(root, name)
        result = convert_legacy_checkpoint(
            parts[0], root / f"converted-{name}", str(parts[1]), progress=False
        )
        out[name] = (result.path, result, *parts)
    return out


def test_exgra_convert_command_reads_the_v10_layout(tmp_path, run_exgra):
    source, tower_dir, *_ = write_v10(tmp_path, "dci")
    result = run_exgra("convert", source, tmp_path / "out", "--vision-tower", tower_dir)
    assert result.exit_code == 0, result.stderr
    assert "dense connector dci" in result.stdout and "ignored 3 tensors" in result.stdout


def _file_modes_are_plain(directory) -> None:
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in directory.iterdir() if path.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


@pytest.mark.parametrize("connector", ["none", "dci"])
def test_v10_slow_tokenizer_checkpoint_converts_and_answers_like_the_reference(converted, connector):
    destination, result, _source, _tower_dir, tower, llama, projector = converted[connector]
    assert result.dense_connector == connector and len(result.ignored) == 3  # 2 inv_freq + the GNN
    bundle = load_model(destination)
    tokenizer = bundle.tokenizer
    assert len(tokenizer) == 32004 and {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED_V10} == ADDED_V10
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 32000)
    # The reference generated with the checkpoint's generation_config (eos 1, the stale v0 id), not 2.
    assert bundle.model.generation_config.eos_token_id == 1
    assert (destination / "tokenizer.model").read_bytes() == sentencepiece_model().read_bytes()
    _file_modes_are_plain(destination)

    template = get_template("legacy")
    prompt = template.prompt("Is there a fracture?\n<image>", bundle.image_tokens)
    encoded = tokenizer([prompt], return_tensors="pt")
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _legacy_forward(
            encoded["input_ids"], pixel_values, tokenizer, tower, llama, projector, connector
        )
        actual = bundle.model.eval()(**encoded, pixel_values=pixel_values).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_training_strings_tokenise_as_the_reference_slow_tokenizer(converted):
    """Oracle: the 4.28 slow tokenizer's rule applied by hand — split at added tokens, drop the
    whitespace beside them, SentencePiece-encode each piece (dummy prefix), BOS first."""
    bundle = load_model(converted["none"][0])
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model()))
    question = 'Is there a fracture? (Answer with either "Yes" or "No").'
    conversation = [{"from": "human", "value": question + "\n<image>"}, {"from": "gpt", "value": "no"}]
    segments = get_template("legacy").training_segments(conversation, bundle.image_tokens)
    ids, labels = tokenize_conversation(bundle.tokenizer, segments, 2048, tokenization="reference")
    answer = sp.encode("### Assistant: no\n### ")
    expected = (
        [1]
        + sp.encode(f"{SYSTEM_MESSAGE}\n\n### Human: {question}")
        + [32002]
        + [32001] * bundle.num_image_tokens
        + [32003]
        + answer
    )
    assert ids == expected
    assert [label for label in labels if label != IGNORE_INDEX] == answer
    assert bundle.tokenizer.convert_ids_to_tokens(answer[:1]) == ["▁###"]
    # Per-segment encoding (exgra's choice for other templates) gives the extra <0x0A> tokens.
    segment_ids, _ = tokenize_conversation(bundle.tokenizer, segments, 2048, tokenization="segments")
    assert len(segment_ids) > len(ids)


def _image_pixels(bundle, image):
    return np.asarray(bundle.image_processor.prepare(image))


def test_image_conversion_is_the_reference_under_legacy_and_exgra_on_request(converted):
    destination = converted["none"][0]
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 64
    sixteen = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000).astype(np.uint16)
    reference, exgra = load_model(destination), load_model(destination, image_conversion="exgra")
    assert reference.image_processor.conversion == "reference"
    # Reference (transformers 4.28 convert_to_rgb = PIL convert): alpha dropped, 16-bit clipped.
    assert (_image_pixels(reference, Image.fromarray(rgba))[..., 0] == 200).all()
    clipped = np.clip(sixteen, 0, 255).astype(np.uint8)
    assert (_image_pixels(reference, Image.fromarray(sixteen))[..., 1] == clipped).all()
    # exgra: composited on black (value * alpha / 255) and min-max rescaled.
    assert (
        np.abs(_image_pixels(exgra, Image.fromarray(rgba))[..., 0].astype(int) - round(200 * 64 / 255)).max()
        <= 1
    )
    rescaled = np.round(sixteen / sixteen.max() * 255).astype(np.uint8)
    assert np.abs(_image_pixels(exgra, Image.fromarray(sixteen))[..., 2].astype(int) - rescaled).max() <= 1


def test_v15_mistral_checkpoint_converts_to_stock_llava(converted):
    destination, result, _source, tower_dir, tower, mistral, projector = converted["v15"]
    assert result.dense_connector == "none" and len(result.ignored) == len(tower.state_dict())
    config = json.loads((destination / "config.json").read_text())
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["text_config"]["model_type"] == "mistral"
    bundle = load_model(destination)
    assert bundle.template == "mistral_instruct" and not bundle.config.use_im_start_end
    assert bundle.config.image_aspect_ratio == "pad" and bundle.num_image_tokens == 36
    assert len(bundle.tokenizer) == 32001 and bundle.tokenizer.pad_token == "<unk>"
    assert bundle.model.generation_config.eos_token_id == 2
    from exgra.models import create_model

    assert create_model("llava-med-v1.5-7b", path=str(destination)).template == "mistral_instruct"
    _file_modes_are_plain(destination)

    prompt = get_template("mistral_instruct").prompt("What organ is shown?", bundle.image_tokens)
    assert prompt.startswith("[INST] <im_patch>") and prompt.endswith("\nWhat organ is shown? [/INST]")
    ids = bundle.tokenizer([prompt], return_tensors="pt")["input_ids"]
    pixel_values = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # LLaVA-1.5's forward: CLIP hidden_states[-2] without CLS -> mlp2x_gelu -> at the image positions.
        features = tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        hidden = F.linear(
            features, projector["model.mm_projector.0.weight"], projector["model.mm_projector.0.bias"]
        )
        image = F.linear(
            F.gelu(hidden), projector["model.mm_projector.2.weight"], projector["model.mm_projector.2.bias"]
        )
        is_image = ids == 32000
        embeds = mistral.model.embed_tokens(ids.masked_fill(is_image, 0))
        embeds[is_image] = image.reshape(-1, image.shape[-1])
        expected = mistral(inputs_embeds=embeds).logits
        actual = bundle.model.eval()(input_ids=ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(actual[..., :32000], expected, rtol=1e-5, atol=1e-5)

    # image_aspect_ratio=pad: a wide image is centred on a square of the mean colour, then CLIP-processed.
    wide = Image.fromarray(np.full((10, 30, 3), 40, dtype=np.uint8))
    clip = CLIPImageProcessorPil.from_pretrained(str(tower_dir))
    square = np.zeros((30, 30, 3), dtype=np.uint8)
    square[:] = [int(value * 255) for value in clip.image_mean]
    square[10:20] = 40
    expected_pixels = clip(Image.fromarray(square), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(bundle.image_processor([wide]), expected_pixels)


_STOCK = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    def run(directory):
        processor = AutoProcessor.from_pretrained(directory)
        model = AutoModelForImageTextToText.from_pretrained(directory).eval()
        image = Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3))
        content = [{"type": "image"}, {"type": "text", "text": "What organ is shown?"}]
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=text, images=[image], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logits = model(**inputs).logits
        return {"text": text, "ids": inputs["input_ids"][0].tolist(), "last": logits[0, -1].tolist(),
                "pixels": inputs["pixel_values"].sum().item(), "class": type(model).__name__}

    results = [run(directory) for directory in sys.argv[1:]]
    print(json.dumps({"exgra_imported": any(m.startswith("exgra") for m in sys.modules), "results": results}))
    """
)


def test_stock_transformers_loads_what_exgra_writes(converted, tmp_path):
    """AutoProcessor + AutoModelForImageTextToText in a process that never imports exgra, on a converted
    v1.0 checkpoint, a converted v1.5 checkpoint and a model written by ModelBundle.save."""
    from exgra.models import create_model

    torch.manual_seed(0)
    tiny = create_model("tiny", vision_config={"image_size": 48}).save(tmp_path / "tiny")
    _file_modes_are_plain(tiny)
    directories = {"none": converted["none"][0], "v15": converted["v15"][0], "tiny": tiny}
    done = subprocess.run(
        [sys.executable, "-c", _STOCK, *map(str, directories.values())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["exgra_imported"]
    image = Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3))
    for (name, destination), stock in zip(directories.items(), report["results"], strict=True):
        assert stock["class"] == "LlavaForConditionalGeneration"
        bundle = load_model(destination)
        prompt = bundle.conversation_template.prompt("What organ is shown?", bundle.image_tokens)
        collapsed = bundle.tokenizer.bos_token + prompt.replace("<im_patch>", "")
        assert stock["text"].replace("<im_patch>", "") == collapsed
        ids = bundle.tokenizer([prompt])["input_ids"][0]
        if name == "v15":
            # Stock Mistral behaviour: text right after a literal <s> gets no "▁" ("[" not "▁["); exgra's
            # own prompts (BOS added by the tokenizer) keep the reference's "▁[" (docs/models.md).
            assert stock["ids"][2:] == ids[2:] and stock["ids"][1] != ids[1]
        else:
            assert stock["ids"] == ids
        pixel_values = bundle.image_processor([image])
        assert abs(stock["pixels"] - pixel_values.sum().item()) < 1e-2
        with torch.no_grad():
            stock_ids = torch.tensor([stock["ids"]])
            last = bundle.model.eval()(input_ids=stock_ids, pixel_values=pixel_values).logits[0, -1]
        torch.testing.assert_close(torch.tensor(stock["last"]), last, rtol=1e-4, atol=1e-4)
