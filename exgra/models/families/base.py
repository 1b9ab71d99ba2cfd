"""The model-family adapter: the one place that knows a VLM family's internals.

A family answers every question the rest of exgra asks about a model (see docs/models.md):

* **build / load**: :meth:`ModelFamily.build` (random tiny from config dicts, or pretrained weights from a
  local dir / hub id) and :meth:`ModelFamily.load` (a saved checkpoint);
* **samples**: :meth:`ModelFamily.sample_encoder` turns image + conversation into ``input_ids``,
  ``labels`` (assistant tokens only) and the family's vision tensors; :meth:`collate_vision` batches
  the vision tensors; :meth:`model_inputs` adds what the forward needs beside them (``token_type_ids``...);
* **features**: :meth:`lm_forward` runs the LM loss with the image features computed once and returns
  them mean-pooled per image (variable token counts work); :meth:`language_model` is the decoder stack
  whose last hidden state gives the pooled text features;
* **stages**: :meth:`parameter_group` names the group (vision / projector / llm / lora) of a parameter;
* **FSDP**: :meth:`decoder_layer_class`;
* **generation**: :meth:`prompt`, :meth:`preprocess_images`, :meth:`generation_inputs`,
  :meth:`stop_token_ids`, :meth:`clean_answer`.

:class:`ChatFamily` implements all of this for the HF-native families whose forward accepts
precomputed ``mm_encoder_outputs`` (Qwen2.5-VL, Qwen3-VL, Gemma 3): a subclass states its classes,
special tokens, chat template and how many tokens one image becomes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from exgra.data.collate import IGNORE_INDEX

__all__ = ["ChatFamily", "ModelFamily", "conversation_messages", "segments_from_chat_template"]

SampleEncoder = Callable[[Image.Image, Sequence[Any]], dict[str, Any]]

# Parameter-name markers shared by several families; a family overrides them where its names differ.
_LORA_MARKER = "lora_"


def _unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def conversation_messages(conversations: Sequence[Any]) -> list[dict[str, Any]]:
    """Record turns (``{"from", "value"}`` with ``<image>`` in the text) -> HF chat messages.

    ``<image>`` becomes a ``{"type": "image"}`` content part at its place in the turn.
    """
    from exgra.data.templates import IMAGE_PLACEHOLDER, _turn

    messages = []
    for turn in conversations:
        # Records' Turn objects name the role "speaker"; their JSON form is {"from", "value"}.
        role, value = _turn(turn.model_dump(by_alias=True) if hasattr(turn, "model_dump") else turn)
        parts: list[dict[str, Any]] = []
        pieces = value.split(IMAGE_PLACEHOLDER)
        for index, piece in enumerate(pieces):
            if index:
                parts.append({"type": "image"})
            text = piece.strip("\n") if len(pieces) > 1 else piece
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": "user" if role == "human" else "assistant", "content": parts})
    return messages


def segments_from_chat_template(
    render: Callable[[list[dict[str, Any]], bool], str], messages: list[dict[str, Any]]
) -> list[tuple[str, bool]]:
    """Split a chat-template rendering into (text, is_assistant_target) pieces.

    ``render(messages, add_generation_prompt)`` is the template. Each assistant turn's target is the
    difference between the rendering with that turn and the rendering up to the generation prompt
    before it (its answer and end-of-turn marker); everything else is context. Templates whose
    renderings are not prefixes of each other are refused rather than mis-masked.
    """
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = render(messages[:index], True)
            full = render(messages[: index + 1], False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            if len(prompt) > len(done):
                segments.append((prompt[len(done) :], False))
            segments.append((full[len(prompt) :], True))
            done = full
    final = render(messages, False)
    if len(final) > len(done):
        segments.append((final[len(done) :], False))
    return segments


class ModelFamily:
    """Interface of a model family; see the module docstring. Subclasses set the class attributes."""

    #: family name as written in ``ModelConfig.family`` (``llava``, ``qwen2.5-vl`` ...)
    name: str = ""
    #: transformers ``model_type`` values this family loads
    model_types: tuple[str, ...] = ()
    #: substrings of parameter names: vision tower, projector (checked in this order after LoRA)
    vision_markers: tuple[str, ...] = ("vision_tower",)
    projector_markers: tuple[str, ...] = ("multi_modal_projector",)
    #: regex fragment matching the language model's module path (LoRA targets)
    language_model_pattern: str = "language_model"
    #: module-path prefixes kept in bf16 under QLoRA (transformers' ``llm_int8_skip_modules``, which then
    #: replaces its default list: name the LM head too). Every family keeps its tower and projector.
    quantization_skip_modules: tuple[str, ...] = ()

    # ---- build / load
    def build(self, config: Any, device: str | None = None) -> Any:
        """A :class:`~exgra.models.ModelBundle` for ``config`` (random from its config dicts, or weights)."""
        raise NotImplementedError

    def load(self, path: Path, config: Any) -> Any:
        """The bundle of a saved checkpoint directory ``path`` (``config``: its resolved ModelConfig)."""
        raise NotImplementedError

    def save(self, bundle: Any, directory: Path) -> None:
        """Write a stock checkpoint of this family (weights, config, tokenizer, processor files)."""
        bundle.model.save_pretrained(directory, safe_serialization=True)
        bundle.tokenizer.save_pretrained(directory)
        bundle.image_processor.save_pretrained(directory)

    # ---- samples
    def sample_encoder(
        self,
        bundle: Any,
        max_length: int,
        human_turn_masking: str = "full",
        use_im_start_end: bool = True,
        tokenization: str = "auto",
    ) -> SampleEncoder:
        """A function ``(image, conversations) -> item`` (``input_ids``, ``labels``, vision tensors).

        It raises ``ValueError`` with a reason for a sample that cannot be used (e.g. image tokens cut off).
        """
        raise NotImplementedError

    def collate_vision(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Batch the per-sample vision tensors (default: concatenate ``pixel_values`` along dim 0)."""
        return {"pixel_values": torch.cat([item["pixel_values"] for item in items])}

    def vision_keys(self) -> tuple[str, ...]:
        """Names of the batch's vision tensors, as the forward and ``get_image_features`` take them."""
        return ("pixel_values",)

    def model_inputs(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """Forward keyword arguments beside ``input_ids``, ``attention_mask``, ``labels`` (default none)."""
        return {}

    # ---- features
    def lm_forward(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lm_loss, pooled_image [B_images, D])`` with the image features computed once."""
        raise NotImplementedError

    def image_token_features(self, model: Any, vision: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The projector's output per image, ``[N_i, D]`` each: the tokens put in the sequence."""
        raise NotImplementedError

    def pooled_image_features(self, model: Any, vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B_images, D]``: each image's tokens averaged (variable token counts work)."""
        return torch.stack([tokens.mean(dim=0) for tokens in self.image_token_features(model, vision)])

    def language_model(self, model: Any) -> nn.Module:
        """The decoder stack without LM head (also through a peft wrapper)."""
        return _unwrap(model).model.language_model

    def hidden_size(self, model: Any) -> int:
        return int(_unwrap(model).config.get_text_config().hidden_size)

    # ---- stages and distribution
    def parameter_group(self, name: str) -> str:
        """``lora``, ``vision``, ``projector`` or ``llm`` for a parameter name of this family's model."""
        if _LORA_MARKER in name:
            return "lora"
        if any(marker in name for marker in self.projector_markers):
            return "projector"
        if any(marker in name for marker in self.vision_markers):
            return "vision"
        return "llm"

    def decoder_layer_class(self, model: Any) -> str:
        """Class name of the language model's decoder layer (accelerate's FSDP ``transformer_layer_cls``)."""
        layers = self.language_model(model).layers
        return type(layers[0]).__name__

    # ---- generation
    def prompt(self, bundle: Any, question: str, template: str | None = None) -> str:
        """The prompt string for one question about one image (image placeholder not yet expanded)."""
        raise NotImplementedError

    def conversation_prompt(
        self,
        bundle: Any,
        turns: Sequence[tuple[str, str]],
        system: str | None = None,
        images_per_turn: Sequence[int] | None = None,
        template: str | None = None,
    ) -> str:
        """The prompt of a conversation ending with a human turn (``exgra serve``, ``exgra ask --chat``):
        ``(role, text)`` turns (``human`` / ``assistant``), each human turn's image count (0, 1 or more);
        one turn with one image gives exactly :meth:`prompt`."""
        raise NotImplementedError

    def preprocess_images(self, bundle: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """PIL images -> this family's vision tensors for one batch."""
        raise NotImplementedError

    def image_count(self, vision: dict[str, torch.Tensor]) -> int:
        """How many images ``vision`` holds."""
        return int(vision["pixel_values"].shape[0])

    def prompt_text(self, bundle: Any, prompt: str, vision: dict[str, torch.Tensor] | None) -> str:
        """``prompt`` with its image tokens in place, as the model reads it (to count its tokens)."""
        return prompt

    def generation_inputs(
        self, bundle: Any, prompts: Sequence[str], vision: dict[str, torch.Tensor] | None
    ) -> dict[str, Any]:
        """``model.generate`` keyword arguments for left-padded ``prompts``; ``vision`` holds every image
        placeholder's image in prompt order (``None`` when no prompt has one)."""
        raise NotImplementedError

    def select_images(
        self, vision: dict[str, torch.Tensor], indices: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """The vision tensors of images ``indices`` (repeats allowed), e.g. one copy per answer option."""
        index = torch.tensor(list(indices), dtype=torch.long)
        return {key: value[index.to(value.device)] for key, value in vision.items()}

    def stop_token_ids(self, bundle: Any) -> list[int]:
        """Token ids that end an answer."""
        return [bundle.tokenizer.eos_token_id]

    def stop_strings(self, bundle: Any, template: str | None = None) -> list[str]:
        """Strings that end an answer when they appear in the generated text (none by default)."""
        return []

    def clean_answer(self, bundle: Any, text: str, template: str | None = None) -> str:
        return text.strip()


def bits_and_bytes_config(skip_modules: Sequence[str] = ()) -> Any:
    """QLoRA's ``BitsAndBytesConfig``: 4-bit NF4 base weights with double quantisation and bf16 compute and
    storage (the recipe of MedGemma's fine-tuning notebook); ``skip_modules`` stay in bf16 (module-path
    prefixes, matched as transformers' ``llm_int8_skip_modules``). Building it needs no bitsandbytes."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
        llm_int8_skip_modules=list(skip_modules) or None,
    )


def quantization_kwargs(config: Any, skip_modules: Sequence[str] = ()) -> dict[str, Any]:
    """``from_pretrained`` arguments for ``model.quantization`` (:func:`bits_and_bytes_config` on the
    process's GPU); ``{}`` for ``none``. Without CUDA or bitsandbytes: one clear :class:`ConfigError`."""
    if config.quantization == "none":
        return {}
    from exgra.errors import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError("model.quantization=4bit (QLoRA) needs a CUDA GPU, and none is visible here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError("model.quantization=4bit needs bitsandbytes: pip install 'exgra[gpu]'") from exc
    import os

    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"quantization_config": bits_and_bytes_config(skip_modules), "device_map": device_map}


def _move(vision: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """Vision tensors on the model's device; floating ones in its dtype."""
    first = next(_unwrap(model).parameters())
    return {
        key: value.to(device=first.device, dtype=first.dtype if value.is_floating_point() else value.dtype)
        for key, value in vision.items()
    }


class ChatFamily(ModelFamily):
    """A HF-native family with a chat template and ``mm_encoder_outputs`` in its forward.

    Subclasses set :attr:`model_class`, :attr:`config_class`, :attr:`image_processor_class`,
    :attr:`special_tokens`, :attr:`image_placeholder` (what the chat template writes for an image),
    :attr:`image_token` (repeated once per image feature), :attr:`chat_template`, and implement
    :meth:`image_token_string`, :meth:`tiny_config` and :meth:`tiny_image_processor`.
    """

    model_class: type = object
    image_processor_class: type = object
    special_tokens: tuple[str, ...] = ()
    image_placeholder: str = ""
    image_token: str = ""
    end_of_turn: str = ""
    chat_template: str = ""

    # ---- helpers a subclass fills in
    def image_token_string(self, bundle: Any, vision: dict[str, torch.Tensor], index: int) -> str:
        """What the placeholder of image ``index`` of ``vision`` expands to (its image tokens)."""
        raise NotImplementedError

    def tiny_config(self, config: Any, tokenizer: Any) -> Any:
        """The transformers config of a random model from ``config.llm_config`` / ``vision_config``."""
        raise NotImplementedError

    def tiny_image_processor(self, config: Any) -> Any:
        raise NotImplementedError

    def vision_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {key: batch[key] for key in self.vision_keys()}

    # ---- build / load
    def _tokenizer(self, config: Any) -> Any:
        from exgra.models.registry import hub_errors
        from exgra.models.tokenizer import build_tiny_tokenizer

        source = config.tokenizer or config.llm
        if source:
            from transformers import AutoTokenizer

            with hub_errors(source, "tokenizer"):
                tokenizer = AutoTokenizer.from_pretrained(source)
        else:
            tokenizer = build_tiny_tokenizer(model_max_length=config.model_max_length)
        self.prepare_tokenizer(tokenizer)
        return tokenizer

    def prepare_tokenizer(self, tokenizer: Any) -> None:
        """Add the family's special tokens and chat template where a tokenizer lacks them."""
        vocab = tokenizer.get_vocab()
        missing = [token for token in self.special_tokens if token not in vocab]
        if missing:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": missing}, replace_extra_special_tokens=False
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = self.end_of_turn or tokenizer.eos_token
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = self.chat_template

    def build(self, config: Any, device: str | None = None) -> Any:
        from exgra.models.registry import DTYPES, finish_family_bundle, hub_errors

        if config.path:
            from exgra.models.registry import load_model, runtime_settings

            return load_model(config.path, **runtime_settings(config))
        if config.llm:
            # A released checkpoint of this family (local dir or hub id): model, tokenizer, processor.
            from transformers import AutoImageProcessor

            with hub_errors(config.llm, "model"):
                if device == "meta":
                    from transformers import AutoConfig

                    with torch.device("meta"):
                        model = self.model_class(AutoConfig.from_pretrained(config.llm))
                else:
                    quantization = quantization_kwargs(config, self.quantization_skip_modules)
                    model = self.model_class.from_pretrained(
                        config.llm, dtype=DTYPES[config.dtype], **quantization
                    )
                tokenizer = self._tokenizer(config)
                image_processor = AutoImageProcessor.from_pretrained(config.llm)
            return finish_family_bundle(self, model, tokenizer, image_processor, config)
        if config.quantization != "none":
            from exgra.errors import ConfigError

            quantization_kwargs(config)  # a clear line first where CUDA or bitsandbytes is missing
            raise ConfigError("model.quantization=4bit loads released weights: set model.llm=<dir or hub id>")
        tokenizer = self._tokenizer(config)
        hf_config = self.tiny_config(config, tokenizer)
        if device == "meta":
            with torch.device("meta"):
                model = self.model_class(hf_config)
        else:
            model = self.model_class(hf_config).to(DTYPES[config.dtype])
        return finish_family_bundle(self, model, tokenizer, self.tiny_image_processor(config), config)

    def load(self, path: Path, config: Any) -> Any:
        from transformers import AutoImageProcessor, AutoTokenizer

        from exgra.models.registry import DTYPES, finish_family_bundle

        quantization = quantization_kwargs(config, self.quantization_skip_modules)
        model = self.model_class.from_pretrained(path, dtype=DTYPES[config.dtype], **quantization)
        tokenizer = AutoTokenizer.from_pretrained(path)
        self.prepare_tokenizer(tokenizer)
        image_processor = AutoImageProcessor.from_pretrained(path)
        return finish_family_bundle(self, model, tokenizer, image_processor, config)

    #: tokenizer attributes the family's stock processor reads (e.g. Gemma 3's ``boi_token``)
    named_tokens: dict[str, str] = {}

    def processor_config(self, bundle: Any) -> dict[str, Any] | None:
        """``processor_config.json`` for the family's stock processor, where it loads without torchvision."""
        return None

    def save(self, bundle: Any, directory: Path) -> None:
        import json

        super().save(bundle, directory)
        # The processor-level chat template, where AutoProcessor looks for it.
        (directory / "chat_template.jinja").write_text(bundle.tokenizer.chat_template, encoding="utf-8")
        if self.named_tokens:
            path = directory / "tokenizer_config.json"
            data = json.loads(path.read_text(encoding="utf-8"))
            data["extra_special_tokens"] = dict(self.named_tokens)
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        processor = self.processor_config(bundle)
        if processor is not None:
            text = json.dumps(processor, indent=2) + "\n"
            (directory / "processor_config.json").write_text(text, encoding="utf-8")

    # ---- samples
    def render(self, bundle: Any, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return bundle.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _expand(
        self, bundle: Any, text: str, vision: dict[str, torch.Tensor], first_image: int
    ) -> tuple[str, int]:
        """Replace each image placeholder in ``text`` by its image tokens; returns text and images used."""
        pieces = text.split(self.image_placeholder)
        out = [pieces[0]]
        for offset, piece in enumerate(pieces[1:]):
            out.append(self.image_token_string(bundle, vision, first_image + offset))
            out.append(piece)
        return "".join(out), len(pieces) - 1

    def sample_encoder(
        self,
        bundle: Any,
        max_length: int,
        human_turn_masking: str = "full",
        use_im_start_end: bool = True,
        tokenization: str = "auto",
    ) -> SampleEncoder:
        tokenizer = bundle.tokenizer
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

        def encode(image: Image.Image, conversations: Sequence[Any]) -> dict[str, Any]:
            vision = self.preprocess_images(bundle, [image])
            messages = conversation_messages(conversations)
            segments = segments_from_chat_template(lambda m, g: self.render(bundle, m, g), messages)
            input_ids: list[int] = []
            labels: list[int] = []
            images = 0
            for text, is_target in segments:
                text, used = self._expand(bundle, text, vision, images)
                images += used
                ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                input_ids += ids
                labels += ids if is_target else [IGNORE_INDEX] * len(ids)
            if images != 1:
                raise ValueError(f"a training sample needs exactly one <image>, found {images}")
            expected = sum(1 for token in input_ids if token == image_token_id)
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            kept = sum(1 for token in input_ids if token == image_token_id)
            if kept != expected:
                raise ValueError(
                    f"conversation has {kept} of its {expected} image tokens after truncation to "
                    f"data.max_length={max_length}; raise max_length"
                )
            return {"input_ids": input_ids, "labels": labels, **vision}

        return encode

    def model_inputs(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        return {}

    # ---- features
    def _image_outputs(self, model: Any, vision: dict[str, torch.Tensor]) -> Any:
        return _unwrap(model).model.get_image_features(**_move(vision, model), return_dict=True)

    def image_token_features(self, model: Any, vision: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return list(self._image_outputs(model, vision).pooler_output)

    def lm_forward(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.vision_inputs(batch)
        image_outputs = self._image_outputs(model, vision)
        extras = {key: value for key, value in vision.items() if key != "pixel_values"}
        output = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            mm_encoder_outputs={"image": image_outputs},
            use_cache=False,
            **extras,
            **self.model_inputs(model, batch),
        )
        pooled = torch.stack([tokens.mean(dim=0) for tokens in image_outputs.pooler_output])
        return output.loss, pooled

    # ---- generation
    #: whether the chat template has a system role (otherwise the system text opens the first user turn)
    system_role: bool = True

    def prompt(self, bundle: Any, question: str, template: str | None = None) -> str:
        return self.conversation_prompt(bundle, [("human", question)], None, [1])

    def _user_text(self, text: str) -> str:
        # Client text must not smuggle image tokens in: their count must match the images.
        for token in (*self.special_tokens, "<image>"):
            text = text.replace(token, "")
        return text.strip()

    def conversation_prompt(
        self,
        bundle: Any,
        turns: Sequence[tuple[str, str]],
        system: str | None = None,
        images_per_turn: Sequence[int] | None = None,
        template: str | None = None,
    ) -> str:
        counts = list(images_per_turn) if images_per_turn is not None else [0] * len(turns)
        messages: list[dict[str, Any]] = []
        system_text = self._user_text(system) if system else ""
        if system_text and self.system_role:
            messages.append({"role": "system", "content": [{"type": "text", "text": system_text}]})
        for index, (role, text) in enumerate(turns):
            text = self._user_text(text)
            if role == "human":
                if system_text and not self.system_role and not messages:
                    text = f"{system_text}\n\n{text}".strip()
                images = counts[index] if index < len(counts) else 0
                parts: list[dict[str, Any]] = [{"type": "image"}] * images
                if text:
                    parts.append({"type": "text", "text": text})
                messages.append({"role": "user", "content": parts})
            else:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        return self.render(bundle, messages, True)

    def preprocess_images(self, bundle: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        from exgra.models.image_processor import to_rgb

        processed = bundle.image_processor([to_rgb(image) for image in images], return_tensors="pt")
        return {key: processed[key] for key in self.vision_keys()}

    def prompt_text(self, bundle: Any, prompt: str, vision: dict[str, torch.Tensor] | None) -> str:
        return self._expand(bundle, prompt, vision or {}, 0)[0]

    def generation_inputs(
        self, bundle: Any, prompts: Sequence[str], vision: dict[str, torch.Tensor] | None
    ) -> dict[str, Any]:
        available = self.image_count(vision) if vision is not None else 0
        placeholders = sum(prompt.count(self.image_placeholder) for prompt in prompts)
        if placeholders != available:
            raise ValueError(f"the prompts hold {placeholders} image placeholders for {available} images")
        texts, used = [], 0
        for prompt in prompts:
            # Each prompt's placeholders take the next images: vision holds them in prompt order.
            text, count = self._expand(bundle, prompt, vision or {}, used)
            texts.append(text)
            used += count
        tokenizer = bundle.tokenizer
        previous = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = previous
        device = next(_unwrap(bundle.model).parameters()).device
        batch = {key: encoded[key].to(device) for key in ("input_ids", "attention_mask")}
        moved = _move({key: vision[key] for key in self.vision_keys()}, bundle.model) if used else {}
        return {**batch, **moved, **self.model_inputs(bundle.model, batch)}

    def stop_token_ids(self, bundle: Any) -> list[int]:
        tokenizer = bundle.tokenizer
        ids = [tokenizer.convert_tokens_to_ids(self.end_of_turn)] if self.end_of_turn else []
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.append(tokenizer.eos_token_id)
        return ids
