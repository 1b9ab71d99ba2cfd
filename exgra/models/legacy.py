"""Convert released LLaVA-Med / ExGra-Med checkpoints (REFERENCE §6) to HF-native safetensors.

The legacy layout is a ``LlavaLlamaForCausalLM`` directory: LLaMA weights under ``model.*`` and
``lm_head``, the projector under ``model.mm_projector.{0,2}`` (or ``model.mm_projector`` when linear),
no vision-tower weights (the tower is CLIP from ``mm_vision_tower``), a 32004-token vocabulary with
``[PAD] <im_patch> <im_start> <im_end>``, and no record of the dense connector: it is inferred from
``mm_hidden_size`` (3 x the tower width means DCI). GNN weights of stage-2 checkpoints are dropped.
``.bin`` shards are read with ``torch.load(weights_only=True)`` only.

LLaVA-Med v1.5 (``microsoft/llava-med-v1.5-mistral-7b``: ``model_type llava_mistral``,
``LlavaMistralForCausalLM``) has the same weight names on a Mistral-7B, a 336 px CLIP tower, no image
tokens in its 32000-token vocabulary (LLaVA-1.5 splices features at a -200 placeholder) and the
``mistral_instruct`` conversation mode. Conversion adds one ``<im_patch>`` token (embedding and LM-head
rows initialised to the mean row, as transformers' ``mean_resizing``), uses ``<unk>`` as the pad token
as LLaVA-Med v1.5 does, and records ``template=mistral_instruct`` and ``image_aspect_ratio=pad``.

The checkpoint's ``generation_config.json`` (or, without one, its config's ``eos_token_id``) decides the
EOS id of the converted model, because that is what the authors' own ``generate`` calls stopped on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPVisionModel, GenerationConfig, LlamaConfig, MistralConfig

from exgra.choices import WeightsDtype
from exgra.config import Section
from exgra.errors import ExgraError
from exgra.models.config import ModelConfig
from exgra.models.dtypes import TORCH_DTYPES as _DTYPES
from exgra.models.image_processor import ImageProcessor
from exgra.models.modeling import ExgraLlavaForConditionalGeneration
from exgra.models.registry import finish_bundle, hub_errors, llava_config_for
from exgra.models.tokenizer import IMAGE_PATCH_TOKEN, add_image_tokens
from exgra.outputs import check_output_folder, write_marker

__all__ = ["ConversionResult", "convert_legacy_checkpoint", "legacy_weight_name"]

# Tensors a legacy checkpoint may hold that the converted model does not use.
_IGNORED_PREFIXES = ("model.message_pass_node_features.", "model.vision_tower.", "model.vision_tower_")


@dataclass
class ConversionResult:
    """What :func:`convert_legacy_checkpoint` wrote and decided."""

    path: Path
    dense_connector: str
    projector_type: str
    vision_tower: str
    num_tensors: int
    ignored: list[str] = field(default_factory=list)


def legacy_weight_name(name: str) -> str | None:
    """Map a legacy weight name to the HF LLaVA name; ``None`` for tensors that are not converted."""
    if name.endswith("rotary_emb.inv_freq") or name.startswith(_IGNORED_PREFIXES):
        return None
    if name == "lm_head.weight":
        return name
    for part in ("embed_tokens.", "layers.", "norm."):
        if name.startswith("model." + part):
            return "model.language_model." + name[len("model.") :]
    if name.startswith("model.mm_projector."):
        rest = name[len("model.mm_projector.") :]
        if rest in ("weight", "bias"):
            return f"model.multi_modal_projector.linear_1.{rest}"
        index, _, leaf = rest.partition(".")
        linear = {"0": "linear_1", "2": "linear_2"}.get(index)
        return f"model.multi_modal_projector.{linear}.{leaf}" if linear else None
    return None


def _weight_files(source: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = source / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return [source / name for name in sorted(set(weight_map.values()))]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (source / single).is_file():
            return [source / single]
    files = sorted(source.glob("*.safetensors")) or sorted(source.glob("pytorch_model*.bin"))
    if not files:
        raise ExgraError(f"{source} has no weights (*.safetensors or pytorch_model*.bin)")
    return files


def _read_tensors(files: list[Path], progress: bool) -> Iterator[tuple[str, torch.Tensor]]:
    from rich.progress import track

    for path in track(files, description="reading weight shards", disable=not progress, transient=True):
        if not path.is_file():
            raise ExgraError(f"weight shard {path.name} listed in the index is missing from {path.parent}")
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:
            try:
                tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing here
                raise ExgraError(f"{path.name} is not a plain tensor checkpoint ({exc})") from exc
        yield from tensors.items()


def is_mistral_layout(legacy: dict[str, Any]) -> bool:
    """LLaVA-Med v1.5's ``llava_mistral`` layout (as opposed to the LLaMA-based v1.0 / ExGra-Med one)."""
    return legacy.get("model_type") == "llava_mistral" or "LlavaMistralForCausalLM" in legacy.get(
        "architectures", []
    )


def _text_config(legacy: dict[str, Any], vocab_size: int, tokenizer: Any) -> LlamaConfig | MistralConfig:
    heads = legacy.get("num_attention_heads", 32)
    # The config's bos/eos/pad ids are stale LLaMA-v0 values (REFERENCE §1.1): take them from the tokenizer.
    shared = {
        "vocab_size": vocab_size,
        "hidden_size": legacy["hidden_size"],
        "intermediate_size": legacy["intermediate_size"],
        "num_hidden_layers": legacy["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": legacy.get("num_key_value_heads", heads),
        "hidden_act": legacy.get("hidden_act", "silu"),
        "rope_theta": legacy.get("rope_theta", 10000.0),
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if is_mistral_layout(legacy):
        return MistralConfig(
            **shared,
            max_position_embeddings=legacy.get("max_position_embeddings", 32768),
            rms_norm_eps=legacy.get("rms_norm_eps", 1e-5),
            sliding_window=legacy.get("sliding_window"),
        )
    return LlamaConfig(
        **shared,
        max_position_embeddings=legacy.get(
            "max_position_embeddings", legacy.get("max_sequence_length", 2048)
        ),
        rms_norm_eps=legacy.get("rms_norm_eps", 1e-6),
    )


def _append_mean_rows(state: dict[str, torch.Tensor], rows: int) -> None:
    """Grow the embedding and LM-head matrices to ``rows`` with their mean row (the added image token)."""
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if name in state:
            matrix = state[name]
            extra = (
                matrix.float().mean(dim=0, keepdim=True).to(matrix.dtype).expand(rows - matrix.shape[0], -1)
            )
            state[name] = torch.cat([matrix, extra], dim=0)


def _generation_config(source: Path, legacy: dict[str, Any], tokenizer: Any) -> GenerationConfig:
    """The EOS/BOS ids the checkpoint's authors generated with; pad from the tokenizer (legacy pad is -1)."""
    values: dict[str, Any] = {}
    path = source / "generation_config.json"
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ExgraError(f"{path} is not valid JSON: {exc}") from exc
    eos = values.get("eos_token_id", legacy.get("eos_token_id"))
    bos = values.get("bos_token_id", legacy.get("bos_token_id"))
    valid = lambda value: isinstance(value, int) and 0 <= value < len(tokenizer)  # noqa: E731
    return GenerationConfig(
        bos_token_id=bos if valid(bos) else tokenizer.bos_token_id,
        eos_token_id=eos if valid(eos) else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def convert_legacy_checkpoint(
    source: str | Path,
    destination: str | Path,
    vision_tower: str | None = None,
    overwrite: bool = False,
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    dense_connector: Literal["dci", "sci"] = "dci",
    progress: bool = True,
) -> ConversionResult:
    """Convert the legacy checkpoint directory ``source`` into an exgra checkpoint at ``destination``.

    ``vision_tower`` (a local CLIP directory or hub name) replaces the checkpoint's
    ``mm_vision_tower``. ``dtype`` defaults to the checkpoint's own. ``dense_connector`` resolves the
    ambiguity of a 3 x wide projector input (released checkpoints use DCI). ``progress`` shows a
    progress bar over the weight shards.
    """
    source, destination = Path(source), Path(destination)
    if source.is_file():
        raise ExgraError(f"{source} is a file; point SRC at a LLaVA-Med / ExGra-Med checkpoint directory")
    if not source.is_dir():
        raise ExgraError(f"checkpoint directory not found: {source}")
    # Only an earlier `exgra convert` output, and nothing else, is ever replaced (exgra.outputs).
    check_output_folder(
        destination, "convert", overwrite=overwrite, inputs={"SRC": source}, option="DESTINATION"
    )
    config_path = source / "config.json"
    if not config_path.is_file():
        raise ExgraError(
            f"{source} has no config.json; point SRC at a LLaVA-Med / ExGra-Med checkpoint directory"
        )
    try:
        legacy = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExgraError(f"{config_path} is not valid JSON: {exc}") from exc
    if "text_config" in legacy:
        raise ExgraError(f"{source} is already an HF-native LLaVA checkpoint; load it with load_model")
    if "mm_hidden_size" not in legacy and "mm_vision_tower" not in legacy:
        raise ExgraError(f"{source} is not a legacy LLaVA checkpoint (config.json has no mm_vision_tower)")
    tower_source = vision_tower or legacy.get("mm_vision_tower")
    if not tower_source:
        raise ExgraError(f"{source} names no vision tower; pass --vision-tower with a CLIP directory")
    projector_type = legacy.get("mm_projector_type", "linear")
    if projector_type not in ("linear", "mlp2x_gelu"):
        raise ExgraError(
            f"projector type '{projector_type}' is not supported; exgra converts linear and mlp2x_gelu"
        )

    with hub_errors(tower_source, "vision tower (pass --vision-tower DIR when offline)"):
        tower = CLIPVisionModel.from_pretrained(tower_source)
    width = tower.config.hidden_size
    mm_hidden = legacy.get("mm_hidden_size", width)
    if mm_hidden == width:
        connector = "none"
    elif mm_hidden == 3 * width:
        connector = dense_connector
    else:
        raise ExgraError(
            f"mm_hidden_size {mm_hidden} fits neither the tower width {width} nor 3 x {width} (DCI)"
        )

    mistral = is_mistral_layout(legacy)
    if mistral and legacy.get("mm_vision_select_feature", "patch") != "patch":
        raise ExgraError(
            f"mm_vision_select_feature '{legacy['mm_vision_select_feature']}' is not supported (only 'patch')"
        )
    with hub_errors(str(source), "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source)
    if mistral:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token  # what LLaVA-Med v1.5 trained and evaluated with
        if IMAGE_PATCH_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_tokens([IMAGE_PATCH_TOKEN], special_tokens=True)
    else:
        add_image_tokens(tokenizer)

    state: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for name, tensor in _read_tensors(_weight_files(source), progress):
        target = legacy_weight_name(name)
        if target is None:
            ignored.append(name)
        else:
            state[target] = tensor
    embed = state.get("model.language_model.embed_tokens.weight")
    if embed is None:
        raise ExgraError(f"{source} has no model.embed_tokens.weight; it is not a LLaVA checkpoint")
    if embed.shape[0] < len(tokenizer):
        if not mistral:
            raise ExgraError(
                f"the tokenizer has {len(tokenizer)} tokens but the embeddings only {embed.shape[0]} rows"
            )
        _append_mean_rows(state, len(tokenizer))
        embed = state["model.language_model.embed_tokens.weight"]
    target_dtype = _DTYPES[dtype] if dtype else embed.dtype
    dtype_name = next(name for name, value in _DTYPES.items() if value == target_dtype)

    config = ModelConfig(
        name=source.name,
        dense_connector=connector,
        projector_type=projector_type,
        vision_select_layer=legacy.get("mm_vision_select_layer", -2),
        use_im_start_end=legacy.get("mm_use_im_start_end", not mistral),
        template="mistral_instruct" if mistral else "legacy",
        image_aspect_ratio="pad" if legacy.get("image_aspect_ratio") == "pad" else "square",
        dtype=dtype_name,
    )
    text_config = _text_config(legacy, embed.shape[0], tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PATCH_TOKEN)
    llava_config = llava_config_for(config, text_config, tower.config, image_token_id)
    with torch.device("meta"):
        model = ExgraLlavaForConditionalGeneration(llava_config)
    state = {name: tensor.to(target_dtype) for name, tensor in state.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in result.missing_keys if not name.startswith("model.vision_tower.")]
    if missing or result.unexpected_keys:
        problems = missing[:3] or result.unexpected_keys[:3]
        raise ExgraError(f"{source} does not match the LLaVA layout it declares (e.g. {', '.join(problems)})")
    model.model.vision_tower = tower.to(target_dtype)
    # Non-persistent buffers (rotary frequencies) are not in checkpoints: recreate them off the meta device.
    language_model = model.model.language_model
    language_model.rotary_emb = type(language_model.rotary_emb)(config=language_model.config)
    leftover = [
        name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta
    ]
    if leftover:
        raise ExgraError(f"{source} lacks weights for {', '.join(leftover[:3])}")
    model.eval()

    model.generation_config = _generation_config(source, legacy, tokenizer)
    image_processor = ImageProcessor.from_pretrained(tower_source, image_size=tower.config.image_size)
    bundle = finish_bundle(model, tokenizer, image_processor, config)
    path = bundle.save(destination, overwrite=overwrite)
    write_marker(path, "convert")
    return ConversionResult(path, connector, projector_type, str(tower_source), len(state), ignored)


class ConvertConfig(Section):
    """What ``exgra convert`` does (validated); see :func:`convert_legacy_checkpoint`."""

    source: Path
    destination: Path
    vision_tower: str | None = None
    overwrite: bool = False
    dtype: WeightsDtype | None = None
    dense_connector: Literal["dci", "sci"] = "dci"
    progress: bool = True


def run_convert(config: ConvertConfig) -> ConversionResult:
    """The ``exgra convert`` entry point."""
    return convert_legacy_checkpoint(**config.model_dump())
