"""The served model: loading (in the background, 503 until ready), OpenAI messages -> the model's own
prompt, and submitting requests to the batching queue from asyncio code.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exgra.data.templates import IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_PLACEHOLDER, IMAGE_START_TOKEN
from exgra.errors import ExgraError
from exgra.eval.generate import AnswerGenerator, GeneratedAnswer, GenerationSettings, vision_inputs
from exgra.serve.batching import BatchQueue, PendingRequest, StreamSink
from exgra.serve.config import ServeConfig
from exgra.serve.errors import APIError
from exgra.serve.images import load_request_image
from exgra.serve.schemas import ChatCompletionRequest, ChatMessage

__all__ = ["Conversation", "ServeEngine", "conversation_from_messages", "load_served_model"]

logger = logging.getLogger("exgra.serve")

# Text a client sends must never smuggle image tokens into a prompt (their count must match the images).
_RESERVED = (IMAGE_PLACEHOLDER, IMAGE_START_TOKEN, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN)


def load_served_model(config: ServeConfig) -> AnswerGenerator:
    """A saved model directory or a registry name (``tiny`` builds a random model) -> a generator."""
    from exgra.eval.generate import load_inference_model, resolve_device

    if Path(config.model).is_dir():
        bundle = load_inference_model(config.model, device=config.device, dtype=config.dtype)
    else:
        from exgra.models import create_model, get_model_spec

        get_model_spec(config.model)  # a clear error naming the registry entries for a typo
        bundle = create_model(config.model)
        bundle.model.to(resolve_device(config.device)).eval()
        bundle.tokenizer.padding_side = "left"
    return AnswerGenerator(bundle, template=config.template)


def served_model_name(config: ServeConfig) -> str:
    return config.served_model_name or Path(config.model).name or config.model


def _clean_text(text: str) -> str:
    for token in _RESERVED:
        text = text.replace(token, "")
    return text


@dataclass
class Conversation:
    """Messages reduced to what a template renders: turns, the system text, image URLs per turn."""

    turns: list[tuple[str, str]]
    system: str | None
    images_per_turn: list[int]
    image_urls: list[str]


def conversation_from_messages(messages: list[ChatMessage]) -> Conversation:
    """OpenAI messages -> :class:`Conversation`; 400 for shapes the model cannot answer."""
    system_parts, turns, counts, urls = [], [], [], []
    for index, message in enumerate(messages):
        content = message.content
        texts, images = [], []
        if isinstance(content, str):
            texts.append(content)
        else:
            for part in content or []:
                if part.type == "text":
                    texts.append(part.text or "")
                else:
                    url = part.image_url.url if hasattr(part.image_url, "url") else part.image_url
                    if not url:
                        raise APIError(400, f"messages[{index}]: an image_url part needs a url", "messages")
                    images.append(url)
        text = _clean_text(" ".join(t.strip() for t in texts if t.strip()))
        if message.role in ("system", "developer"):
            if images:
                raise APIError(400, f"messages[{index}]: a system message cannot hold images", "messages")
            if turns:
                raise APIError(400, "system messages must come before the conversation", "messages")
            system_parts.append(text)
            continue
        if message.role == "assistant" and images:
            raise APIError(400, f"messages[{index}]: an assistant message cannot hold images", "messages")
        role = "human" if message.role == "user" else "assistant"
        if turns and turns[-1][0] == role:
            # Two user (or assistant) messages in a row are one turn, as chat UIs send them.
            turns[-1] = (role, f"{turns[-1][1]}\n{text}".strip())
            counts[-1] += len(images)
        else:
            turns.append((role, text))
            counts.append(len(images))
        urls.extend(images)
    if not turns or turns[-1][0] != "human":
        raise APIError(400, "the last message must be a user message", "messages")
    if not turns[-1][1] and not counts[-1]:
        raise APIError(400, "the last user message is empty", "messages")
    return Conversation(turns, "\n".join(system_parts) if system_parts else None, counts, urls)


class ServeEngine:
    """One model in memory behind one :class:`BatchQueue`; ``loader`` runs in a background thread."""

    def __init__(
        self, config: ServeConfig, loader: Callable[[ServeConfig], AnswerGenerator] = load_served_model
    ):
        self.config = config
        self.model_name = served_model_name(config)
        self.generator: AnswerGenerator | None = None
        self.queue: BatchQueue | None = None
        self.load_error: str | None = None
        self.created = int(time.time())
        self._loader = loader
        self._thread = threading.Thread(target=self._load, name="exgra-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        try:
            generator = self._loader(self.config)
        except Exception as exc:  # reported by /health and every request; the log has the details
            if isinstance(exc, (ExgraError, OSError)):
                # The user's to fix (a wrong folder, a malformed config.json): one line, no traceback.
                logger.error("loading the model failed: %s", exc)
            else:
                logger.exception("loading the model failed")
            self.load_error = str(exc) or type(exc).__name__
            return
        # The batch thread's tokenizer changes its padding state per call; request threads count prompt
        # tokens with their own copy (a Rust tokenizer used from two threads raises "Already borrowed").
        self._counting_tokenizer = copy.deepcopy(generator.tokenizer)
        self._counting_lock = threading.Lock()
        self.queue = BatchQueue(
            generator,
            max_batch_size=self.config.max_batch_size,
            window_s=self.config.batch_window_ms / 1000,
            max_queue=self.config.max_queue,
        )
        self.generator = generator
        logger.info("model %s ready (template %s)", self.model_name, generator.template_name)

    @property
    def ready(self) -> bool:
        return self.generator is not None

    def require_ready(self) -> AnswerGenerator:
        if self.load_error is not None:
            raise APIError(503, f"the model failed to load: {self.load_error}", code="model_load_failed")
        if self.generator is None:
            raise APIError(503, "the model is still loading; retry in a moment", code="model_loading")
        return self.generator

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()

    # ---- request -> PendingRequest -------------------------------------------------------------------

    def _settings(self, request: ChatCompletionRequest) -> tuple[GenerationSettings, tuple[Any, ...]]:
        config = self.config
        if request.n != 1:
            raise APIError(400, "only n=1 is supported", "n")
        both = request.max_tokens is not None and request.max_completion_tokens is not None
        if both and request.max_tokens != request.max_completion_tokens:
            raise APIError(400, "max_tokens and max_completion_tokens disagree; send one", "max_tokens")
        max_tokens = request.max_completion_tokens or request.max_tokens or config.default_max_tokens
        if max_tokens > config.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is above this server's limit of {config.max_tokens_limit}",
                "max_tokens",
            )
        # Omitted or 0 temperature decodes greedily, the way `exgra ask` and `exgra eval` do.
        if not request.temperature:
            return GenerationSettings(max_new_tokens=max_tokens), ("greedy",)
        seed = request.seed if request.seed is not None else secrets.randbits(31)
        settings = GenerationSettings(
            max_new_tokens=max_tokens,
            do_sample=True,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=seed,
        )
        # A seeded request runs alone, so its answer does not depend on who else was waiting.
        key = (
            ("seeded", id(settings))
            if request.seed is not None
            else ("sample", request.temperature, request.top_p)
        )
        return settings, key

    def _prepare(
        self, request: ChatCompletionRequest
    ) -> tuple[str, Any, GenerationSettings, tuple, list[int] | None, int]:
        generator = self.require_ready()
        if request.model != self.model_name:
            raise APIError(
                404,
                f"model '{request.model}' is not served here; this server serves '{self.model_name}'",
                "model",
                "model_not_found",
            )
        settings, key = self._settings(request)
        conversation = conversation_from_messages(request.messages)
        if len(conversation.image_urls) > self.config.max_images_per_request:
            raise APIError(
                400,
                f"{len(conversation.image_urls)} images in one request; this server accepts at most "
                f"{self.config.max_images_per_request} (--max-images-per-request)",
                "messages",
            )
        images = [load_request_image(url, self.config) for url in conversation.image_urls]
        pixel_values = generator.preprocess(images) if images else None
        prompt = generator.build_conversation_prompt(
            conversation.turns, conversation.system, conversation.images_per_turn
        )
        token_ids = self._prompt_token_ids(generator, prompt, pixel_values)
        prompt_tokens = len(token_ids)
        context = generator.tokenizer.model_max_length
        limit = getattr(getattr(generator.model.config, "text_config", None), "max_position_embeddings", None)
        context = min(context, limit) if limit else context
        if prompt_tokens + settings.max_new_tokens > context:
            raise APIError(
                400,
                f"the prompt has {prompt_tokens} tokens; with max_tokens={settings.max_new_tokens} it "
                f"exceeds the model's context of {context} tokens",
                "messages",
                "context_length_exceeded",
            )
        # A LLaVA-template prompt's ids are exactly what the batch tokenises: handed on, not made twice.
        rows = token_ids if generator.template is not None else None
        return prompt, pixel_values, settings, key, rows, prompt_tokens

    def _prompt_token_ids(self, generator: AnswerGenerator, prompt: str, pixel_values: Any) -> list[int]:
        """The tokens the model reads for ``prompt`` (counted for ``usage`` and the context check)."""
        with self._counting_lock:
            if generator.template is not None:
                return generator.token_rows([prompt], tokenizer=self._counting_tokenizer)[0]
            # A chat-template family: its image placeholders expanded (one per image feature), its
            # prompt already holding its special tokens.
            text = generator.family.prompt_text(generator.bundle, prompt, vision_inputs(pixel_values))
            return self._counting_tokenizer(text, add_special_tokens=False)["input_ids"]

    def announce(self) -> bool:
        """A completion request has started arriving (its body is still being read): batches that are
        collecting wait for it. ``False`` while no model is loaded (nothing to tell)."""
        if self.queue is None:
            return False
        self.queue.announce()
        return True

    def withdraw(self) -> None:
        """An announced request ended before it was queued (bad JSON, a refused image, ...)."""
        if self.queue is not None:
            self.queue.withdraw()

    async def submit(
        self,
        request: ChatCompletionRequest,
        on_text: Callable[[str], None] | None = None,
        announced: bool = False,
    ) -> tuple[asyncio.Future, PendingRequest, int, int]:
        """Queue ``request``; returns (future of the GeneratedAnswer, the queued request, prompt tokens,
        max tokens). The caller reports the answer's delivery with ``queue.replied``. ``announced``:
        :meth:`announce` was called for it (else this announces it)."""
        try:
            self.require_ready()
        except APIError:
            if announced:
                self.withdraw()
            raise
        assert self.queue is not None
        if not announced:
            self.queue.announce()
        try:
            if self.queue.idle():
                # Nothing else to serve: preparing here (~1 ms) saves two thread hand-offs, which on
                # a busy machine each wait for a CPU.
                prepared = self._prepare(request)
            else:
                prepared = await asyncio.to_thread(self._prepare, request)
        except BaseException:
            self.queue.withdraw()
            raise
        prompt, pixel_values, settings, key, token_ids, prompt_tokens = prepared
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def deliver(result: GeneratedAnswer | BaseException) -> None:
            def settle() -> None:
                if future.done():
                    return  # the client went away
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

            loop.call_soon_threadsafe(settle)

        stream = None
        if on_text is not None:
            stream = StreamSink(lambda text: loop.call_soon_threadsafe(on_text, text))
        pending = PendingRequest(
            prompt,
            pixel_values,
            settings,
            key,
            request.stop_strings(),
            deliver,
            stream,
            reports_reply=True,
            token_ids=token_ids,
        )
        if not self.queue.submit(pending, announced=True):
            raise APIError(503, "the server is busy (request queue full); retry later", code="overloaded")
        return future, pending, prompt_tokens, settings.max_new_tokens

    async def answer(
        self, request: ChatCompletionRequest, announced: bool = False
    ) -> tuple[GeneratedAnswer, int, int]:
        future, pending, prompt_tokens, max_tokens = await self.submit(request, announced=announced)
        try:
            return await future, prompt_tokens, max_tokens
        finally:
            self.queue.replied(pending)

    async def stream(
        self, request: ChatCompletionRequest, announced: bool = False
    ) -> tuple[AsyncIterator[str], asyncio.Future, int, int]:
        """Text deltas as they are generated; the future resolves to the final answer."""
        deltas: asyncio.Queue[str | None] = asyncio.Queue()
        future, pending, prompt_tokens, max_tokens = await self.submit(
            request, on_text=deltas.put_nowait, announced=announced
        )
        future.add_done_callback(lambda _: self.queue.replied(pending))

        async def iterate() -> AsyncIterator[str]:
            waiter = asyncio.ensure_future(deltas.get())
            while True:
                done, _ = await asyncio.wait({waiter, future}, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    yield waiter.result()
                    waiter = asyncio.ensure_future(deltas.get())
                    continue
                waiter.cancel()
                while not deltas.empty():
                    yield deltas.get_nowait()
                return

        return iterate(), future, prompt_tokens, max_tokens
