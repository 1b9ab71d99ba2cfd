"""The one generation path: prompts + images -> answers, batched, with left padding and stop strings.

Everything that makes a model talk (``exgra eval vqa-*``, legacy zero-shot, ``exgra ask``, in-training
validation) goes through :class:`AnswerGenerator`, so a prompt, a stop rule or a padding detail is
decided in one place:

* prompts come from the model's conversation template (:func:`exgra.data.templates.get_template`) with
  the model's image tokens (``<im_start>`` + N x ``<im_patch>`` + ``<im_end>``);
* batches are padded on the **left** with an attention mask, so every row's last prompt token sits at
  the same position and generation continues from it; position ids follow the mask. The leading
  tokens every prompt shares with the template's opening (system prompt, example turns) are computed
  once and their key/value states reused (:class:`exgra.eval.kv_cache.PrefixStore`); such a batch puts
  its padding after that shared prefix instead of before it;
* the key/value cache grows in place (:class:`exgra.eval.kv_cache.GrowingLayer`), not by a copy of
  itself per step;
* greedy decoding by default (``do_sample=False``), the template's stop strings end a row, and the
  decoded continuation is cut at the first stop string;
* ``text`` is the cleaned answer (:meth:`ConversationTemplate.clean_answer`, e.g. the legacy
  ``Assistant:`` prefix removed); ``raw_text`` keeps what the reference would have written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import Field
from transformers import StoppingCriteria, StoppingCriteriaList

from exgra.choices import DtypeName, TemplateName
from exgra.config import Section
from exgra.data.templates import REFERENCE_TEMPLATES
from exgra.errors import ExgraError
from exgra.eval.kv_cache import PrefixStore, growing_cache
from exgra.models.dtypes import TORCH_DTYPES as _DTYPES
from exgra.vocabulary import strip_image_placeholder as question_text

__all__ = [
    "AnswerGenerator",
    "GeneratedAnswer",
    "GenerationSettings",
    "AskConfig",
    "ask_generator",
    "ask_model",
    "load_inference_model",
    "open_image_file",
    "question_text",
    "resolve_device",
    "resolve_dtype",
    "stop_trigger_ids",
    "vision_inputs",
]

# New tokens a generate call's key/value cache has room for at first (it grows by chunks after that).
_CACHE_RESERVE = 256
# The fewest shared leading tokens whose states are cached and reused (exgra.eval.kv_cache.PrefixStore).
_MIN_PREFIX = 16


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ExgraError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ExgraError(f"device {device!r} was requested but no CUDA GPU is visible")
    return resolved


def resolve_dtype(dtype: str, device: torch.device, reference: bool = False) -> torch.dtype:
    """``auto`` -> float32 on CPU (half precision is slow and lossy there); on a GPU bfloat16, or
    float16 for a ``reference`` template (the reference's eval loads its models in float16)."""
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        return torch.float16 if reference else torch.bfloat16
    if dtype not in _DTYPES:
        raise ExgraError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_inference_model(
    model_dir: str | Path, device: str | torch.device = "auto", dtype: str = "auto"
) -> Any:
    """Load a saved exgra model directory for inference (eval mode, on ``device`` in ``dtype``).

    Returns the :class:`exgra.models.ModelBundle`; its tokenizer pads on the left.
    """
    from transformers.utils import logging as hf_logging

    from exgra.models import load_model

    path = Path(model_dir)
    if path.exists() and not path.is_dir():
        raise ExgraError(f"--model {path} is a file, not a folder; give the folder of a saved model")
    if not path.is_dir():
        raise ExgraError(
            f"model directory not found: {path} (save one with ModelBundle.save or exgra convert)"
        )
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, reference=_saved_template(path) in REFERENCE_TEMPLATES)
    dtype_name = next(name for name, value in _DTYPES.items() if value == torch_dtype)
    # transformers' "Loading weights" bar on every ask/eval is noise for a model that loads in seconds.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        bundle = load_model(path, dtype=dtype_name)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    bundle.model.to(device=torch_device)
    bundle.model.eval()
    bundle.tokenizer.padding_side = "left"
    return bundle


def _saved_template(path: Path) -> str | None:
    import yaml

    from exgra.models.registry import EXGRA_CONFIG_FILE

    try:
        saved = yaml.safe_load((path / EXGRA_CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return saved.get("template") if isinstance(saved, dict) else None


class _StopOnStrings(StoppingCriteria):
    """Stop a row once its *generated* text contains a stop string (the prompt is not looked at).

    transformers' ``stop_strings`` also matches across the prompt boundary, so a legacy prompt ending
    in ``###`` followed by a generated ``#`` would stop at once; the reference checks only the
    continuation, as this does, and exactly as it does: the whole continuation is decoded, and not
    after the first new token (the reference's criterion only records the start length on its first
    call), so a first token holding ``###`` runs one step more before the cut.

    Decoding every row at every step made batched generation scale worse than stock ``generate``; a
    stop string can only become complete at a step whose new token holds its last character, so after
    the first check only rows whose newest token is in ``trigger_ids`` are decoded (``None``: every row).
    """

    def __init__(
        self,
        tokenizer: Any,
        stop_strings: Sequence[str],
        prompt_length: int,
        trigger_ids: torch.Tensor | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = list(stop_strings)
        self.prompt_length = prompt_length
        self.trigger_ids = trigger_ids

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if generated <= 1:
            return done
        if self.trigger_ids is None or generated == 2:
            # The first check also sees the first token, which no earlier check looked at.
            rows = list(range(input_ids.shape[0]))
        else:
            newest = input_ids[:, -1]
            rows = torch.isin(newest, self.trigger_ids.to(newest.device)).nonzero().flatten().tolist()
        if not rows:
            return done
        texts = self.tokenizer.batch_decode(input_ids[rows, self.prompt_length :], skip_special_tokens=True)
        for row, text in zip(rows, texts, strict=True):
            if any(stop in text for stop in self.stop_strings):
                done[row] = True
        return done


def stop_trigger_ids(tokenizer: Any, stop_strings: Sequence[str]) -> torch.Tensor | None:
    """Ids of the tokens whose text contains the last character of some stop string.

    ``None`` (check every row) when a stop string ends in a non-ASCII character, which a byte-level
    token may hold only in part.
    """
    finals = {stop[-1] for stop in stop_strings if stop}
    if not finals or any(not char.isascii() for char in finals):
        return None
    ids = sorted(tokenizer.get_vocab().values())
    texts = tokenizer.batch_decode([[token_id] for token_id in ids], skip_special_tokens=True)
    hits = [token_id for token_id, text in zip(ids, texts, strict=True) if any(c in text for c in finals)]
    return torch.tensor(hits, dtype=torch.long)


def vision_inputs(pixel_values: Any) -> dict[str, Any] | None:
    """What :meth:`AnswerGenerator.preprocess` returned (a LLaVA ``[I, 3, S, S]`` tensor or a family's
    vision dict) as the dict a family's ``prompt_text`` / ``generation_inputs`` read; ``None`` stays."""
    if pixel_values is None or isinstance(pixel_values, dict):
        return pixel_values
    return {"pixel_values": pixel_values}


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; recorded next to every answers file.

    Greedy by default. ``do_sample`` with ``temperature`` (and ``top_p``) reproduces sampling protocols
    such as the reference zero-shot classifier; ``seed`` is set before each batch.
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float | None = None
    seed: int = 2802
    # "fast": the checkpoint's tokenizer.json, as the reference's eval (AutoTokenizer's default) did;
    # "slow": the reference's training-time SentencePiece rule (reference_token_spans), which differs
    # around the image tokens (no "\n" token before <im_start>).
    prompt_tokenization: str = "fast"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GeneratedAnswer:
    """One answer: ``text`` (cleaned), ``raw_text`` (decoded, cut at the stop string), token count."""

    text: str
    raw_text: str
    num_new_tokens: int


class AnswerGenerator:
    """Batched answer generation for one model and one conversation template.

    ``bundle`` is a :class:`exgra.models.ModelBundle` (model in eval mode); ``template`` overrides the
    model's own template name (``legacy`` or ``chat``).
    """

    def __init__(
        self, bundle: Any, template: str | None = None, settings: GenerationSettings | None = None
    ) -> None:
        from exgra.data.templates import get_template
        from exgra.models.families import family_of

        self.bundle = bundle
        self.model = bundle.model
        self.tokenizer = bundle.tokenizer
        # The model family decides prompts, vision inputs, stop tokens and answer clean-up.
        self.family = family_of(bundle)
        native = bundle.template == "native"
        if native and template not in (None, "native"):
            raise ExgraError(
                f"this {self.family.name} model answers with its own chat template; --template {template} "
                "applies to LLaVA models only"
            )
        self.template_name = bundle.template if native else (template or bundle.template)
        self.template = None if native else get_template(self.template_name)
        self.settings = settings or GenerationSettings()
        self.image_tokens = "" if native else bundle.image_tokens
        self.stop_strings = self.family.stop_strings(bundle, self.template_name)
        self.prefix_store = PrefixStore()

    @property
    def eos_token_id(self) -> int | list[int] | None:
        """The checkpoint's own EOS id(s) (its ``generation_config``), else the tokenizer's."""
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        return configured if configured is not None else self.tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def run_settings(self) -> dict[str, Any]:
        """How this generator turns inputs into answers, for the run info beside an answers file."""
        processor = self.bundle.image_processor
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
            "stop_strings": list(self.stop_strings),
            "image_conversion": getattr(processor, "conversion", None),
            "image_aspect_ratio": getattr(processor, "aspect_ratio", None),
            # The reference's eval loaded AutoTokenizer with its default (fast); so does exgra by default.
            "tokenizer": type(self.tokenizer).__name__ + (" (fast)" if self.tokenizer.is_fast else " (slow)"),
        }

    def build_prompt(self, question: str) -> str:
        """The full prompt string for one question (template + image tokens)."""
        return self.family.prompt(self.bundle, question, self.template_name)

    def prompt_lengths(self, questions: Sequence[str]) -> list[int]:
        """Token count of each question's prompt (used to sort a run into length-homogeneous batches)."""
        prompts = [self.build_prompt(q) for q in questions]
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        """PIL images -> the family's vision inputs (``pixel_values [B, 3, S, S]`` for LLaVA)."""
        vision = self.family.preprocess_images(self.bundle, list(images))
        return vision["pixel_values"] if list(vision) == ["pixel_values"] else vision

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise prompts padded on the left: ``input_ids`` and ``attention_mask`` ``[B, L]``."""
        return self._pad(self.token_rows(prompts), shared=0)

    def token_rows(self, prompts: Sequence[str], tokenizer: Any = None) -> list[list[int]]:
        """Each prompt's token ids, unpadded (``settings.prompt_tokenization`` decides the rule).

        ``tokenizer``: a copy of the generator's own, for a caller on another thread (a Rust tokenizer
        used from two threads at once raises "Already borrowed")."""
        tokenizer = tokenizer or self.tokenizer
        if self.settings.prompt_tokenization == "slow":
            from exgra.models.tokenizer import reference_token_spans

            bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
            return [bos + [token for token, _ in reference_token_spans(tokenizer, p)] for p in prompts]
        return tokenizer(list(prompts))["input_ids"]

    def _pad(self, rows: Sequence[Sequence[int]], shared: int) -> dict[str, torch.Tensor]:
        """Rows padded to one length: the first ``shared`` tokens (the same in every row) stay in front,
        the padding goes between them and the rest (plain left padding when ``shared`` is 0); position
        ids follow the attention mask, so each row reads exactly its own tokens."""
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids, mask = [], []
        for row in rows:
            gap = width - len(row)
            ids.append([*row[:shared], *[pad] * gap, *row[shared:]])
            mask.append([1] * shared + [0] * gap + [1] * (len(row) - shared))
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    def shared_prefix(self, rows: Sequence[Sequence[int]]) -> int:
        """How many leading tokens every row shares with the template's opening (its system prompt and
        example turns, the same in every prompt), at least one token short of the shortest row; 0 when
        that is under ``_MIN_PREFIX`` tokens, too few to be worth a cache of their own.

        The opening is what two prompts with different questions share, so it ends before any token
        that a question's first word could change: a prompt gets the same prefix alone or batched.
        """
        if not hasattr(self, "_opening"):
            self._opening = self._template_opening()
        shared = min(len(self._opening), min(len(row) for row in rows) - 1)
        for row in rows:
            shared = next((i for i in range(shared) if row[i] != self._opening[i]), shared)
        return shared if shared >= _MIN_PREFIX else 0

    def _template_opening(self) -> list[int]:
        """The tokens that two one-turn prompts with different questions share."""
        try:
            first, second = (
                self.token_rows([self.build_conversation_prompt([("human", text)], images_per_turn=[0])])[0]
                for text in ("a", "Z")
            )
        except (ExgraError, ValueError, KeyError, TypeError):
            return []
        same = next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), 0)
        return first[:same]

    def _cut(self, text: str, extra_stops: Sequence[str] = ()) -> str:
        for stop in [*self.stop_strings, *extra_stops]:
            index = text.find(stop)
            if index >= 0:
                text = text[:index]
        return text.strip()

    def build_conversation_prompt(
        self,
        turns: Sequence[Any],
        system: str | None = None,
        images_per_turn: Sequence[int] | None = None,
    ) -> str:
        """The prompt of a multi-turn conversation (``exgra serve``, ``exgra ask --chat``); one turn
        with one image gives exactly :meth:`build_prompt`."""
        family, template = self.family, self.template_name
        return family.conversation_prompt(self.bundle, turns, system, images_per_turn, template)

    def join_vision(self, visions: Sequence[Any]) -> Any:
        """The vision inputs of several requests (each what :meth:`preprocess` returned) as one batch's."""
        if isinstance(visions[0], dict):
            return self.family.collate_vision(list(visions))
        return torch.cat(list(visions))

    @property
    def trigger_ids(self) -> torch.Tensor | None:
        """Cached :func:`stop_trigger_ids` of the template's stop strings."""
        if not hasattr(self, "_trigger_ids"):
            self._trigger_ids = stop_trigger_ids(self.tokenizer, self.stop_strings)
        return self._trigger_ids

    def generate(self, questions: Sequence[str], pixel_values: Any) -> list[GeneratedAnswer]:
        """Answer ``questions`` (one image each) in one batched call; ``pixel_values`` is what
        :meth:`preprocess` returned (``[B, 3, S, S]`` for LLaVA, the family's vision dict otherwise)."""
        vision = vision_inputs(pixel_values)
        images = (
            len(vision["image_grid_thw"]) if "image_grid_thw" in vision else vision["pixel_values"].shape[0]
        )
        if len(questions) != images:
            raise ValueError(f"{len(questions)} questions but {images} images")
        return self.generate_prompts([self.build_prompt(q) for q in questions], pixel_values)

    @torch.inference_mode()
    def generate_prompts(
        self,
        prompts: Sequence[str],
        pixel_values: Any,
        settings: GenerationSettings | None = None,
        row_max_new_tokens: Sequence[int] | None = None,
        row_stop_strings: Sequence[Sequence[str]] | None = None,
        streamer: Any = None,
        rows: Sequence[Sequence[int]] | None = None,
    ) -> list[GeneratedAnswer]:
        """Continue full ``prompts`` (already rendered, image tokens in place) in one batched call.

        ``pixel_values [I, 3, S, S]`` holds the images of all rows in prompt order (``None`` when no
        prompt has one). ``settings`` overrides the generator's. Per row, ``row_max_new_tokens`` (at
        most ``settings.max_new_tokens``) and extra ``row_stop_strings`` cut the answer afterwards;
        under greedy decoding a row's first tokens do not depend on how long the batch runs, so this
        equals generating the row alone with its own limits. ``streamer`` is passed to ``generate``.
        ``rows``: the prompts' :meth:`token_rows`, when the caller has them already (``exgra serve``
        tokenises each request once, to count its tokens); ignored for chat-template families.
        """
        if not prompts:
            return []
        settings = settings or self.settings
        prefix = None
        if self.template is None:
            # A chat-template family expands each image placeholder of its prompts itself (0, 1 or more).
            model_inputs = self.family.generation_inputs(self.bundle, prompts, vision_inputs(pixel_values))
        else:
            if rows is None:
                rows = self.token_rows(prompts)
            elif len(rows) != len(prompts):
                raise ValueError(f"{len(rows)} token rows for {len(prompts)} prompts")
            shared = self.shared_prefix(rows)
            prefix = self.prefix_store.states(self.model, rows[0][:shared]) if shared else None
            encoded = self._pad(rows, shared if prefix is not None else 0)
            model_inputs = {key: value.to(self.device) for key, value in encoded.items()}
            if pixel_values is not None:
                model_inputs["pixel_values"] = pixel_values.to(device=self.device, dtype=self.dtype)
        input_ids = model_inputs["input_ids"]
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if settings.do_sample:
            torch.manual_seed(settings.seed)
            kwargs["temperature"] = settings.temperature
            if settings.top_p is not None:
                kwargs["top_p"] = settings.top_p
        else:
            # Clear sampling defaults a checkpoint's generation_config may carry (they only warn).
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.stop_strings:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [
                    _StopOnStrings(
                        self.tokenizer, self.stop_strings, input_ids.shape[1], trigger_ids=self.trigger_ids
                    )
                ]
            )
        if streamer is not None:
            kwargs["streamer"] = streamer
        # The cache grows in place, not by a copy of itself per step, and starts with the shared prefix's
        # states, so generate runs only the rest of each prompt (see exgra.eval.kv_cache).
        reserve = min(settings.max_new_tokens, _CACHE_RESERVE)
        cache = growing_cache(self.model, reserve, prefix=prefix, batch_size=len(prompts))
        if cache is not None:
            kwargs["cache"] = cache
        elif prefix is not None:
            raise RuntimeError("a prefix cache was planned but the model's cache cannot hold it")
        output = self.model.generate(**model_inputs, **kwargs)
        new_tokens = output[:, input_ids.shape[1] :].cpu()
        answers = []
        for index, row in enumerate(new_tokens):
            if row_max_new_tokens is not None:
                row = row[: row_max_new_tokens[index]]
            extra_stops = list(row_stop_strings[index]) if row_stop_strings is not None else []
            count = int((row != self.tokenizer.pad_token_id).sum())
            decoded = self.tokenizer.decode(row, skip_special_tokens=True)
            raw = self._cut(decoded, extra_stops)
            answers.append(
                GeneratedAnswer(self.family.clean_answer(self.bundle, raw, self.template_name), raw, count)
            )
        return answers

    def answer(self, questions: Sequence[str], images: Sequence[Image.Image]) -> list[GeneratedAnswer]:
        """Convenience: preprocess PIL ``images`` and :meth:`generate` (one batch)."""
        return self.generate(questions, self.preprocess(images))


def open_image_file(image_path: str | Path) -> Image.Image:
    """An image file the user named, as RGB (``exgra ask``); one clear error if missing or unreadable."""
    from exgra.data.records import load_image

    path = Path(image_path)
    if path.is_dir():
        raise ExgraError(f"--image {path} is a folder, not an image file")
    if not path.is_file():
        raise ExgraError(f"image not found: {path}")
    resolved = path.resolve()  # the user named this file: a symlink elsewhere is fine
    return load_image(resolved.parent, resolved.name, conversion=None)


class AskConfig(Section):
    """What ``exgra ask`` (and a Python caller) asks: one model, one image file, greedy decoding."""

    model_dir: Path = Field(description="directory of a saved exgra model")
    image_path: Path = Field(description="the image file the question is about")
    question: str = Field("", description="the question; empty for a chat session that reads turns")
    max_new_tokens: int = Field(256, ge=1)
    template: TemplateName | None = Field(None, description="default: the model's own template")
    dtype: DtypeName = "auto"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")


def ask_model(config: AskConfig) -> GeneratedAnswer:
    """Load a model and answer one question about one image file (greedy); the ``exgra ask`` command."""
    if not config.question.strip():
        raise ExgraError("the question is empty; pass the question as the last argument")
    image = open_image_file(config.image_path)
    generator = ask_generator(config)
    return generator.answer([config.question], [image])[0]


def ask_generator(config: AskConfig) -> AnswerGenerator:
    """The greedy generator ``exgra ask`` uses (also for ``--chat``)."""
    bundle = load_inference_model(config.model_dir, device=config.device, dtype=config.dtype)
    return AnswerGenerator(
        bundle, template=config.template, settings=GenerationSettings(max_new_tokens=config.max_new_tokens)
    )
