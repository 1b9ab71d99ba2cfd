"""Tiny checkpoints written in the reference's exact on-disk layouts, with a real SentencePiece model.

* v1.0 (ExGra-Med / LLaVA-Med v1.0, REFERENCE §6): transformers-4.28 ``LlavaLlamaForCausalLM`` config
  with ``mm_*`` keys, ``pytorch_model-*.bin`` shards + index, ``generation_config.json`` with the stale
  LLaMA-v0 ids, and the slow LLaMA tokenizer as 4.28 saved it (``tokenizer.model`` only, the four
  added tokens in ``added_tokens.json`` / ``special_tokens_map.json``). Plain or DCI.
* v1.5 (``microsoft/llava-med-v1.5-mistral-7b``): ``llava_mistral`` config, safetensors shards with the
  vision tower inside, Mistral's 32000-token SentencePiece tokenizer and no image tokens.

The SentencePiece model is the 32k LLaMA-style ``tokenizer.model.v1`` inside the ``mistral_common``
wheel (a dev dependency), read from the installed package files without importing the package.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from exgra.models import ImageProcessor

HIDDEN, WIDTH = 64, 32
ADDED_V10 = {"[PAD]": 32000, "<im_patch>": 32001, "<im_start>": 32002, "<im_end>": 32003}


def sentencepiece_model() -> Path:
    """Path of the real 32k SentencePiece model shipped in the mistral_common wheel."""
    files = importlib.metadata.files("mistral_common") or []
    for file in files:
        if file.name == "tokenizer.model.v1":
            return Path(file.locate())
    raise FileNotFoundError("mistral_common is installed without data/tokenizer.model.v1")


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_slow_tokenizer(directory: Path, added: dict[str, int], pad: str | None) -> None:
    """The files transformers 4.28's ``LlamaTokenizer.save_pretrained`` wrote (no tokenizer.json)."""
    shutil.copyfile(sentencepiece_model(), directory / "tokenizer.model")
    specials = {
        name: _added_token(token) for name, token in (("bos", "<s>"), ("eos", "</s>"), ("unk", "<unk>"))
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        **{f"{name}_token": {"__type": "AddedToken", **value} for name, value in specials.items()},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special_map = {f"{name}_token": value for name, value in specials.items()}
    if pad is not None:
        special_map["pad_token"] = pad  # added with add_special_tokens({"pad_token": "[PAD]"}): a plain str
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    if added:
        (directory / "added_tokens.json").write_text(json.dumps(added, indent=2))


def write_tower(directory: Path, image_size: int = 32) -> CLIPVisionModel:
    tower = CLIPVisionModel(
        CLIPVisionConfig(
            image_size=image_size,
            patch_size=8,
            hidden_size=WIDTH,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
        )
    ).eval()
    tower.save_pretrained(directory)
    ImageProcessor.for_size(image_size).save_pretrained(directory)
    return tower


def projector_weights(mm_hidden: int) -> dict[str, torch.Tensor]:
    """Random weights of the reference's mlp2x_gelu projector, in its parameter names."""
    return {
        "model.mm_projector.0.weight": torch.randn(HIDDEN, mm_hidden) * 0.1,
        "model.mm_projector.0.bias": torch.randn(HIDDEN) * 0.1,
        "model.mm_projector.2.weight": torch.randn(HIDDEN, HIDDEN) * 0.1,
        "model.mm_projector.2.bias": torch.randn(HIDDEN) * 0.1,
    }


def write_shards(source: Path, state: dict[str, torch.Tensor], fmt: str) -> None:
    """``state`` as two shards and their index, in ``.bin`` (the reference's) or safetensors format."""
    names = sorted(state)
    shards = {"00001-of-00002": names[: len(names) // 2], "00002-of-00002": names[len(names) // 2 :]}
    weight_map = {}
    for shard, shard_names in shards.items():
        tensors = {name: state[name].contiguous() for name in shard_names}
        if fmt == "bin":
            filename = f"pytorch_model-{shard}.bin"
            torch.save(tensors, source / filename)
        else:
            filename = f"model-{shard}.safetensors"
            save_file(tensors, str(source / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard_names, filename))
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (source / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))


def write_v10(root: Path, connector: str) -> tuple[Path, Path, CLIPVisionModel, LlamaForCausalLM, dict]:
    """A v1.0 checkpoint (plain or DCI) and its CLIP directory; returns the parts for an oracle forward."""
    torch.manual_seed(11)
    source, tower_dir = root / f"v10-{connector}", root / "clip-224"
    source.mkdir(parents=True)
    tower = write_tower(tower_dir) if not tower_dir.exists() else CLIPVisionModel.from_pretrained(tower_dir)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32004,
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
    for layer in range(2):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # 4.28 buffer
    state["model.message_pass_node_features.conv1.lin_rel.weight"] = torch.randn(HIDDEN, HIDDEN)  # GNN
    config = {
        "_name_or_path": "./checkpoints/exgra-med",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_size": HIDDEN,
        "intermediate_size": 128,
        "initializer_range": 0.02,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_sequence_length": 2048,
        "vocab_size": 32004,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": -1,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.28.0.dev0",
        "use_cache": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14",
        "mm_hidden_size": mm_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": True,
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "multi_graph": True,
        "graph_num_features": HIDDEN,
    }
    (source / "config.json").write_text(json.dumps(config, indent=2))
    generation = {
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": -1,
        "transformers_version": "4.28.0.dev0",
    }
    (source / "generation_config.json").write_text(json.dumps(generation, indent=2))
    write_slow_tokenizer(source, ADDED_V10, pad="[PAD]")
    write_shards(source, state, "bin")
    return source, tower_dir, tower, llama, projector


def write_v15(root: Path) -> tuple[Path, Path, CLIPVisionModel, MistralForCausalLM, dict]:
    """A LLaVA-Med v1.5 (llava_mistral) checkpoint and its CLIP directory (48 px: 36 image tokens)."""
    torch.manual_seed(12)
    source, tower_dir = root / "v15", root / "clip-48"
    source.mkdir(parents=True)
    tower = write_tower(tower_dir, image_size=48)
    mistral = MistralForCausalLM(
        MistralConfig(
            vocab_size=32000,
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            rope_theta=1000000.0,
            sliding_window=None,
        )
    ).eval()
    projector = projector_weights(WIDTH)
    state = {**mistral.state_dict(), **projector}
    for name, tensor in tower.state_dict().items():
        state[f"model.vision_tower.vision_tower.{name}"] = tensor  # v1.5 saves the tower inside
    config = {
        "_name_or_path": "/data/llava-med-v1.5-mistral-7b",
        "architectures": ["LlavaMistralForCausalLM"],
        "model_type": "llava_mistral",
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "image_aspect_ratio": "pad",
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 32768,
        "mm_hidden_size": WIDTH,
        "mm_patch_merge_type": "flat",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.36.2",
        "tune_mm_mlp_adapter": False,
        "use_cache": True,
        "use_mm_proj": True,
        "vocab_size": 32000,
    }
    (source / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.36.2"}
    (source / "generation_config.json").write_text(json.dumps(generation, indent=2))
    write_slow_tokenizer(source, {}, pad=None)
    write_shards(source, state, "safetensors")
    return source, tower_dir, tower, mistral, projector


# llava-hf's processor chat template (llava-hf/llava-1.5-7b-hf): images first, then the text.
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def write_llava_hf(directory: Path) -> Path:
    """A tiny ``LlavaForConditionalGeneration`` checkpoint laid out as llava-hf publishes LLaVA-1.5.

    Everything is written by stock transformers: the LLaMA tokenizer (the real 32k SentencePiece model)
    with ``<image>`` (32000) and ``<pad>`` (32001) added, a ``LlavaProcessor`` (CLIP image processor,
    ``patch_size``, the ``default`` feature strategy, llava-hf's chat template), the model's
    ``save_pretrained`` (sharded, in transformers' llava-hf key layout ``language_model.model.*``), plus
    ``preprocessor_config.json`` and ``tokenizer.model`` as on the hub.
    """
    from transformers import (
        AddedToken,
        CLIPImageProcessorPil,
        LlamaTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    directory.mkdir(parents=True)
    spm = directory / "tokenizer.model"
    shutil.copyfile(sentencepiece_model(), spm)
    tokenizer = LlamaTokenizer.from_pretrained(directory, add_bos_token=True)
    tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=LLAVA_HF_CHAT_TEMPLATE,
    )
    processor.save_pretrained(directory)
    image_processor.save_pretrained(directory)
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        pad_token_id=32001,
    )
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, projection_dim=WIDTH,
    )  # fmt: skip
    config = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=32000,
        pad_token_id=32001,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=16,
    )
    torch.manual_seed(13)
    LlavaForConditionalGeneration(config).save_pretrained(directory, max_shard_size="2MB")
    return directory
