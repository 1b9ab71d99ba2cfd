"""Building and loading the registry's models, and :class:`ModelBundle`.

The entries themselves (:class:`ModelSpec`, :func:`list_models`) are plain data in
:mod:`exgra.model_specs`, re-exported here.

``create_model("tiny")`` builds a random tiny model offline in well under a second;
``create_model("exgra-med-7b-dci", path=DIR)`` loads a converted checkpoint; ``load_model(DIR)`` loads
any directory written by :meth:`ModelBundle.save` or ``exgra convert``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    SiglipVisionConfig,
)

from exgra.config import merge_dicts, validate_config
from exgra.data.templates import (
    REFERENCE_TEMPLATES,
    ConversationTemplate,
    chat_template,
    get_template,
    image_token_string,
)
from exgra.errors import ConfigError, ExgraError
from exgra.io import staged_output_dir
from exgra.model_specs import ModelConfig, ModelSpec, get_model_spec, list_models
from exgra.models.dtypes import TORCH_DTYPES as _DTYPES
from exgra.models.image_processor import ImageProcessor
from exgra.models.modeling import ExgraLlavaConfig, ExgraLlavaForConditionalGeneration, VisionProjector
from exgra.models.tokenizer import (
    IMAGE_PATCH_TOKEN,
    add_image_tokens,
    build_tiny_tokenizer,
    sentencepiece_model_file,
)

__all__ = [
    "EXGRA_CONFIG_FILE",
    "ModelBundle",
    "ModelSpec",
    "build_model",
    "create_model",
    "get_model_spec",
    "list_models",
    "load_model",
]

EXGRA_CONFIG_FILE = "exgra_model.yaml"
# Settings that may differ between saving and loading a model; the rest is fixed by the weights.
RUNTIME_KEYS = frozenset(
    {
        "name",
        "path",
        "template",
        "text_pooling",
        "dtype",
        "attn_implementation",
        "padding_side",
        "model_max_length",
        "image_conversion",
        "image_aspect_ratio",
        "quantization",
    }
)
DTYPES = _DTYPES
# Weight names of llava checkpoints written before transformers 4.52 and by transformers 5's stock
# LlavaForConditionalGeneration.save_pretrained (the llava-hf layout: ``language_model.model.*``,
# ``language_model.lm_head``, top-level ``vision_tower`` / ``multi_modal_projector``) -> the model's
# names. transformers applies this mapping to its own class only; exgra's subclass passes it explicitly.
LLAVA_HF_KEY_MAPPING = {
    r"^language_model\.lm_head": "lm_head",
    r"^language_model\.model": "model.language_model",
    r"^vision_tower": "model.vision_tower",
    r"^multi_modal_projector": "model.multi_modal_projector",
}


@dataclass
class ModelBundle:
    """A model with everything needed to feed it: tokenizer, image processor, template, config."""

    model: ExgraLlavaForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    image_processor: ImageProcessor
    template: str
    num_image_tokens: int
    config: ModelConfig

    @property
    def family(self) -> Any:
        """The :class:`~exgra.models.families.ModelFamily` adapter of this model."""
        from exgra.models.families import get_family

        return get_family(self.config.family)

    @property
    def image_patch_token(self) -> str:
        """The token the image features replace (``<im_patch>``; ``<image>`` in llava-hf checkpoints)."""
        token_id = getattr(self.model.config, "image_token_id", None)
        token = self.tokenizer.convert_ids_to_tokens(token_id) if token_id is not None else None
        return token or IMAGE_PATCH_TOKEN

    @property
    def image_tokens(self) -> str:
        """One image in a prompt: ``<im_start>`` + N x ``<im_patch>`` + ``<im_end>``."""
        return image_token_string(self.num_image_tokens, self.config.use_im_start_end, self.image_patch_token)

    @property
    def conversation_template(self) -> ConversationTemplate:
        return get_template(self.template)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write weights (safetensors), config, tokenizer, image processor and ``exgra_model.yaml``.

        The directory is written under a temporary name and renamed, so a crash never leaves a
        half-written checkpoint; an existing non-empty ``path`` is refused unless ``overwrite``.
        """
        from exgra.models.merge import standalone_model

        # LoRA merged, QLoRA's 4-bit weights dequantised: the checkpoint loads anywhere, CPU included.
        model = standalone_model(self.model, _DTYPES[self.config.dtype])
        with staged_output_dir(path, overwrite) as tmp:
            self.family.save(self if model is self.model else dataclasses.replace(self, model=model), tmp)
            # quantization is how a run loaded its base weights, not a property of the saved ones.
            sources = {"path": None, "llm": None, "tokenizer": None, "vision_tower": None}
            saved = self.config.model_copy(update={**sources, "quantization": "none"})
            (tmp / EXGRA_CONFIG_FILE).write_text(
                yaml.safe_dump(saved.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
            )
            _normal_file_modes(tmp)
        path = Path(path)
        return path

    def _save_processor(self, directory: Path) -> None:
        """Tokenizer, image processor and a ``LlavaProcessor`` with the chat template of ``template``.

        Stock ``AutoProcessor.from_pretrained(dir)`` then expands each ``<im_patch>`` of a rendered
        chat to the model's image-token count, as vLLM and lmms-eval expect of a LLaVA checkpoint.
        """
        from transformers import LlavaProcessor

        collapsed = image_token_string(1, self.config.use_im_start_end, self.image_patch_token)
        template = chat_template(self.template, collapsed)
        self.tokenizer.chat_template = template
        vision = self.model.config.vision_config
        processor = LlavaProcessor(
            image_processor=self.image_processor.processor,
            tokenizer=self.tokenizer,
            patch_size=vision.patch_size,
            vision_feature_select_strategy=self.model.config.vision_feature_select_strategy,
            chat_template=template,
            image_token=self.image_patch_token,
            # CLIP's CLS token, dropped by the "default" strategy; SigLIP has none ("full").
            num_additional_image_tokens=0 if "siglip" in vision.model_type else 1,
        )
        processor.save_pretrained(directory)
        model_file = sentencepiece_model_file(self.tokenizer)
        if model_file is not None and not (directory / "tokenizer.model").exists():
            # transformers 5 saves tokenizer.json only; keep the SentencePiece model for the
            # reference's slow-tokenizer training ids (exgra.models.tokenizer.reference_token_spans).
            shutil.copyfile(model_file, directory / "tokenizer.model")


def _normal_file_modes(directory: Path) -> None:
    """Give every file the mode a plain ``open()`` gives (0666 minus the umask).

    Some writers (safetensors of memory-mapped tensors, temporary files) create 0600 files; a checkpoint
    is meant to be shared and served, so all its files get the same ordinary mode.
    """
    umask = os.umask(0)
    os.umask(umask)
    for file in directory.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~umask)


def save_llava(bundle: ModelBundle, directory: Path) -> None:
    """Weights, config, tokenizer and image processor of a LLaVA-family bundle."""
    bundle.model.save_pretrained(directory, safe_serialization=True)
    if type(bundle.model.config) is LlavaConfig:
        # A plain llava checkpoint: name the stock class so any transformers pipeline picks it up.
        config_path = directory / "config.json"
        data = json.loads(config_path.read_text(encoding="utf-8"))
        data["architectures"] = ["LlavaForConditionalGeneration"]
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    bundle._save_processor(directory)


def runtime_settings(config: ModelConfig) -> dict[str, Any]:
    """The settings of ``config`` that may differ from a saved checkpoint's (see :data:`RUNTIME_KEYS`)."""
    runtime = {key: value for key, value in config.model_dump().items() if key in RUNTIME_KEYS}
    runtime.pop("path", None)
    return runtime


def create_model(name: str, *, device: str | None = None, **overrides: Any) -> ModelBundle:
    """Build the registry entry ``name`` with ``ModelConfig`` field ``overrides``.

    ``device="meta"`` builds the architecture without allocating weights (to inspect 7B entries).
    """
    spec = get_model_spec(name)
    config = spec.config(**overrides)
    if not spec.offline and not (config.path or config.llm) and device != "meta" and config.family != "llava":
        raise ConfigError(
            f"model '{name}' needs pretrained weights: pass path=<checkpoint dir> or llm=<{config.family} "
            "checkpoint dir or hub id>"
        )
    if not spec.offline and not (config.path or config.llm) and device != "meta":
        raise ConfigError(
            f"model '{name}' needs pretrained weights: pass path=<checkpoint dir> (see `exgra convert`) "
            "or llm=<LLaMA weights dir or hub name>"
        )
    return build_model(config, device=device)


def _load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    source = config.tokenizer or config.llm
    if source is None:
        return build_tiny_tokenizer(model_max_length=config.model_max_length)
    with hub_errors(source, "tokenizer"):
        return AutoTokenizer.from_pretrained(source, model_max_length=config.model_max_length)


@contextlib.contextmanager
def hub_errors(source: str, what: str) -> Iterator[None]:
    """Turn a missing local directory / unreachable hub repo into one clear error."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise ExgraError(f"could not load the {what} from '{source}': {str(exc).splitlines()[0]}") from exc


def llava_config_for(
    config: ModelConfig, text_config: PretrainedConfig, vision_config: PretrainedConfig, image_token_id: int
) -> LlavaConfig:
    num_tokens = (vision_config.image_size // vision_config.patch_size) ** 2
    kwargs: dict[str, Any] = {
        "vision_config": vision_config,
        "text_config": text_config,
        "image_token_index": image_token_id,
        "image_seq_length": num_tokens,
        "vision_feature_layer": config.vision_select_layer,
        # CLIP's CLS token is dropped ("default"); SigLIP has none, so every patch is an image token.
        "vision_feature_select_strategy": "full" if "siglip" in vision_config.model_type else "default",
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "tie_word_embeddings": False,
    }
    if config.dense_connector == "none" and config.projector_type == "mlp2x_gelu":
        return LlavaConfig(**kwargs)
    return ExgraLlavaConfig(
        **kwargs, dense_connector=config.dense_connector, projector_type=config.projector_type
    )


def build_model(config: ModelConfig, device: str | None = None) -> ModelBundle:
    """Build (or, with ``config.path``, load) the model that ``config`` describes, through its family."""
    from exgra.models.families import get_family

    if config.path:
        return load_model(config.path, **runtime_settings(config))
    return get_family(config.family).build(config, device)


def build_llava(config: ModelConfig, device: str | None = None) -> ModelBundle:
    """Build a LLaVA-family model (random from config dicts, or LLM + tower weights)."""
    meta = device == "meta"
    tokenizer = _load_tokenizer(config)
    add_image_tokens(tokenizer)
    dtype = _DTYPES[config.dtype]

    llm = None
    if config.llm and not meta:
        with hub_errors(config.llm, "language model"):
            llm = AutoModelForCausalLM.from_pretrained(config.llm, dtype=dtype)
        if llm.get_input_embeddings().num_embeddings < len(tokenizer):
            llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        text_config = llm.config
    elif config.llm and not config.llm_config:
        with hub_errors(config.llm, "language model config"):
            text_config = AutoConfig.from_pretrained(config.llm)
    else:
        fields = dict(config.llm_config)
        fields["vocab_size"] = max(int(fields.get("vocab_size", 0)), len(tokenizer))
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        text_class = MistralConfig if config.llm_type == "mistral" else LlamaConfig
        text_config = _sub_config(
            text_class, "llm_config", {**fields, "pad_token_id": tokenizer.pad_token_id, **ids}
        )

    tower = None
    if config.vision_tower and not meta:
        with hub_errors(config.vision_tower, "vision tower"):
            tower = CLIPVisionModel.from_pretrained(config.vision_tower, dtype=dtype)
        vision_config = tower.config
    elif config.vision_tower and not config.vision_config:
        with hub_errors(config.vision_tower, "vision tower config"):
            vision_config = CLIPVisionConfig.from_pretrained(config.vision_tower)
    else:
        vision_class = SiglipVisionConfig if config.vision_type == "siglip" else CLIPVisionConfig
        vision_config = _sub_config(vision_class, "vision_config", config.vision_config)

    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PATCH_TOKEN)
    llava_config = llava_config_for(config, text_config, vision_config, image_token_id)
    if meta:
        with torch.device("meta"):
            model = ExgraLlavaForConditionalGeneration(llava_config)
    elif llm is not None:
        # Build the shell without allocating a second copy of the LLM, then plug the parts in.
        with torch.device("meta"):
            model = ExgraLlavaForConditionalGeneration(llava_config)
        model.model.language_model = llm.model
        model.lm_head = llm.lm_head
        model.model.vision_tower = tower if tower is not None else AutoModel.from_config(vision_config)
        projector = model.model.multi_modal_projector
        in_features, out_features = projector.linear_1.in_features, projector.linear_1.out_features
        model.model.multi_modal_projector = VisionProjector(in_features, out_features, config.projector_type)
    else:
        model = ExgraLlavaForConditionalGeneration(llava_config)
        if tower is not None:
            model.model.vision_tower = tower

    if not meta:
        model.to(dtype)
        _set_attention(model, config.attn_implementation)
    image_processor = (
        ImageProcessor.from_pretrained(config.vision_tower, image_size=vision_config.image_size)
        if config.vision_tower and not meta
        else ImageProcessor.for_size(vision_config.image_size, siglip=config.vision_type == "siglip")
    )
    return finish_bundle(model, tokenizer, image_processor, config)


def _sub_config(
    config_class: type[PretrainedConfig], key: str, fields: Mapping[str, Any]
) -> PretrainedConfig:
    known = {item.name for item in dataclasses.fields(config_class)} | {"rope_theta"}
    for name in fields:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key model.{key}.{name} for {config_class.__name__}{hint}")
    try:
        built = config_class(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid model.{key} for {config_class.__name__}: {exc}") from exc
    image_size, patch_size = getattr(built, "image_size", None), getattr(built, "patch_size", None)
    if image_size is not None and patch_size and image_size % patch_size:
        raise ConfigError(
            f"model.{key}: image_size {image_size} is not a multiple of patch_size {patch_size}"
        )
    return built


def _set_attention(model: ExgraLlavaForConditionalGeneration, implementation: str) -> None:
    try:
        model.set_attn_implementation(implementation)
    except (ImportError, ValueError) as exc:
        raise ExgraError(f"attention implementation '{implementation}' is unavailable: {exc}") from exc


def finish_family_bundle(
    family: Any, model: Any, tokenizer: PreTrainedTokenizerBase, image_processor: Any, config: ModelConfig
) -> ModelBundle:
    """The bundle of a chat-template family: its tokenizer pads as configured, answers end at end-of-turn."""
    tokenizer.padding_side = config.padding_side
    tokenizer.model_max_length = config.model_max_length
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = None  # set below, once the bundle exists
    config = config.model_copy(update={"family": family.name, "template": "native"})
    bundle = ModelBundle(model, tokenizer, image_processor, "native", 0, config)
    generation.eos_token_id = family.stop_token_ids(bundle)
    return bundle


def finish_bundle(
    model: ExgraLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    image_processor: ImageProcessor,
    config: ModelConfig,
) -> ModelBundle:
    tokenizer.padding_side = config.padding_side
    tokenizer.model_max_length = config.model_max_length
    model.text_pooling = config.text_pooling
    generation = model.generation_config
    # A checkpoint's own generation_config wins (converted reference checkpoints keep the EOS id their
    # authors generated with); ids it lacks, or the invalid legacy pad id -1, come from the tokenizer.
    if generation.pad_token_id is None or _negative(generation.pad_token_id):
        generation.pad_token_id = tokenizer.pad_token_id
    if generation.bos_token_id is None:
        generation.bos_token_id = tokenizer.bos_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    conversion = config.image_conversion
    if conversion == "auto":
        conversion = "reference" if config.template in REFERENCE_TEMPLATES else "exgra"
    image_processor = image_processor.configured(conversion, config.image_aspect_ratio)
    vision = model.config.vision_config
    num_tokens = (vision.image_size // vision.patch_size) ** 2
    return ModelBundle(model, tokenizer, image_processor, config.template, num_tokens, config)


def _negative(token_id: Any) -> bool:
    ids = token_id if isinstance(token_id, list) else [token_id]
    return any(value < 0 for value in ids)


def _saved_config(path: Path, hf_config: PretrainedConfig, family: str = "llava") -> ModelConfig:
    config_file = path / EXGRA_CONFIG_FILE
    if config_file.is_file():
        data = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        return validate_config(ModelConfig, data, str(config_file))
    if family != "llava":
        return ModelConfig(name=path.name, family=family, template="native")
    # A llava checkpoint written by other tools: describe it from its transformers config.
    fields: dict[str, Any] = {}
    if _llava_hf_layout(path):
        # llava-hf (LLaVA-1.5 as transformers publishes it): N x <image> without <im_start>/<im_end>,
        # Vicuna-v1 conversations (exgra's "chat"), images prepared as its processor files say.
        fields = {"template": "chat", "use_im_start_end": False}
    return ModelConfig(
        name=path.name,
        dense_connector=getattr(hf_config, "dense_connector", "none"),
        projector_type=getattr(hf_config, "projector_type", "mlp2x_gelu"),
        vision_select_layer=hf_config.vision_feature_layer,
        **fields,
    )


def _llava_hf_layout(path: Path) -> bool:
    """A llava checkpoint whose tokenizer has no ``<im_patch>`` (the llava-hf layout uses ``<image>``)."""
    with hub_errors(str(path), "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(path)
    return IMAGE_PATCH_TOKEN not in tokenizer.get_vocab()


def load_model(path: str | Path, **overrides: Any) -> ModelBundle:
    """Load a directory written by :meth:`ModelBundle.save` or ``exgra convert``.

    ``overrides`` may change how the model runs (``dtype``, ``attn_implementation``, ``template``,
    ``text_pooling``, ``padding_side``, ``model_max_length``), not its architecture.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExgraError(f"model {path} is a file, not a folder; give the folder of a saved model")
    if not path.is_dir():
        raise ExgraError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise ExgraError(f"{path} has no config.json; it is not a saved model directory")
    fixed = sorted(set(overrides) - RUNTIME_KEYS)
    if fixed:
        allowed = ", ".join(sorted(RUNTIME_KEYS))
        raise ConfigError(f"cannot change {', '.join(fixed)} of a saved model; only {allowed} may differ")
    from exgra.models.families import family_for_model_type

    hf_config = AutoConfig.from_pretrained(path)
    family = family_for_model_type(hf_config.model_type, str(path))
    base = _saved_config(path, hf_config, family.name)
    config = validate_config(
        ModelConfig, merge_dicts(base.model_dump(), {**overrides, "path": str(path)}), str(path)
    )
    return family.load(path, config)


def load_llava(path: Path, config: ModelConfig) -> ModelBundle:
    """Load a ``llava`` / ``exgra_llava`` checkpoint directory."""
    from safetensors import SafetensorError

    from exgra.models.families import get_family
    from exgra.models.families.base import quantization_kwargs

    hf_config = AutoConfig.from_pretrained(path)
    quantization = quantization_kwargs(config, get_family("llava").quantization_skip_modules)
    try:
        model, info = ExgraLlavaForConditionalGeneration.from_pretrained(
            path,
            config=hf_config,
            dtype=_DTYPES[config.dtype],
            key_mapping=LLAVA_HF_KEY_MAPPING,
            output_loading_info=True,
            **quantization,
        )
    except SafetensorError as exc:  # a truncated or damaged weights file (issue #12.10)
        raise ExgraError(
            f"the weights in {path} cannot be read ({exc}); the file is damaged or incomplete: "
            "download or save the model again"
        ) from exc
    if info["missing_keys"]:
        # Never answer with silently random weights (e.g. a layout whose names nothing maps).
        missing = sorted(info["missing_keys"])
        raise ExgraError(
            f"{path} lacks {len(missing)} weights of its model (e.g. {missing[0]}); "
            "the checkpoint is incomplete or in an unknown layout"
        )
    _set_attention(model, config.attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = ImageProcessor.from_pretrained(path, image_size=hf_config.vision_config.image_size)
    return finish_bundle(model, tokenizer, image_processor, config)
