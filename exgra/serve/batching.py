"""Dynamic batching: concurrent requests grouped into one batched generate call, first come first served.

One worker thread owns the model. It takes the oldest waiting request, adds every later waiting request
that can share its decoding settings (up to ``max_batch_size``), and runs them as one call of
:meth:`exgra.eval.generate.AnswerGenerator.generate_prompts`, the same code ``exgra eval`` runs. Under
load (the previous batch held more than one request) it first collects: it waits until ``window``
seconds pass with no new arrival (at most ten windows in all), so the clients one batch answered, who
come back spread over more than a window, share the next batch; an idle server answers a lone request
at once, so single-request latency is that of a bare generate call. Requests that cannot share a
batch keep their place in the queue, so nobody is starved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from exgra.eval.generate import AnswerGenerator, GeneratedAnswer, GenerationSettings

__all__ = ["BatchQueue", "PendingRequest", "StreamSink"]

logger = logging.getLogger("exgra.serve")

# The longest a batch waits for more requests under load, in collection windows.
_MAX_WINDOWS = 10


@dataclass
class PendingRequest:
    """One request ready to generate: rendered prompt, its images, decoding settings, where results go.

    ``batch_key`` says which requests may share a batch (equal keys only); ``on_done`` receives a
    :class:`GeneratedAnswer` or an exception; ``stream`` (optional) receives text as it is generated.
    """

    prompt: str
    pixel_values: torch.Tensor | None  # [n_images, 3, S, S] or None
    settings: GenerationSettings
    batch_key: tuple[Any, ...]
    stop_strings: list[str]
    on_done: Callable[[GeneratedAnswer | BaseException], None]
    stream: StreamSink | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)
    # The caller reports (BatchQueue.replied) when this request's answer has reached its client.
    reports_reply: bool = False
    batch_serial: int = -1
    # The prompt's token ids when the caller made them already (AnswerGenerator.token_rows of ``prompt``).
    token_ids: list[int] | None = None


class StreamSink:
    """Turns a row's growing token list into safe text deltas for ``on_text``.

    Text is held back while it could still become a stop string or the template's role prefix, and
    while it ends in a half-decoded character, so the deltas always add up to the final answer.
    """

    def __init__(self, on_text: Callable[[str], None]) -> None:
        self.on_text = on_text
        self.tokens: list[int] = []
        self.emitted = ""

    def push(self, token: int, generator: AnswerGenerator, request: PendingRequest) -> None:
        if len(self.tokens) >= request.settings.max_new_tokens:
            return
        self.tokens.append(token)
        decoded = generator.tokenizer.decode(self.tokens, skip_special_tokens=True)
        stops = [*generator.stop_strings, *request.stop_strings]
        raw = generator._cut(decoded, request.stop_strings)
        if raw == decoded.strip():  # no stop string yet: hold back a tail that may start one
            for size in range(min(len(raw), max((len(stop) for stop in stops), default=0)), 0, -1):
                if any(stop.startswith(raw[-size:]) for stop in stops):
                    raw = raw[:-size]
                    break
        template = generator.template  # None for a chat-template family (no role prefix to drop)
        if template is not None and f"{template.assistant_role}:".startswith(raw.strip()):
            return  # may still become the role prefix that clean_answer drops
        safe = generator.family.clean_answer(generator.bundle, raw, generator.template_name)
        safe = safe.rstrip("\ufffd").rstrip()
        if len(safe) > len(self.emitted) and safe.startswith(self.emitted):
            self.on_text(safe[len(self.emitted) :])
            self.emitted = safe

    def finish(self, final_text: str) -> None:
        if final_text.startswith(self.emitted) and len(final_text) > len(self.emitted):
            self.on_text(final_text[len(self.emitted) :])
        self.emitted = final_text


class _BatchStreamer:
    """transformers streamer for a batch: the first ``put`` is the prompt, then one token per row."""

    def __init__(self, generator: AnswerGenerator, requests: list[PendingRequest]) -> None:
        self.generator = generator
        self.requests = requests
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        tokens = value.reshape(len(self.requests), -1)[:, -1].tolist()
        for request, token in zip(self.requests, tokens, strict=True):
            if request.stream is not None:
                try:
                    request.stream.push(int(token), self.generator, request)
                except Exception:  # a client's stream must never stop the batch
                    logger.exception("stream delta failed")

    def end(self) -> None:
        pass


class BatchQueue:
    """A FIFO of :class:`PendingRequest` served by one worker thread (see the module docstring)."""

    def __init__(
        self,
        generator: AnswerGenerator,
        max_batch_size: int = 16,
        window_s: float = 0.01,
        max_queue: int = 256,
    ) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.max_queue = max_queue
        self._waiting: deque[PendingRequest] = deque()
        self._condition = threading.Condition()
        self._stopped = False
        self._last_batch_size = 0
        self._announced = 0
        self._serial = 0  # numbers the batches
        self._replying = 0  # requests of the latest batch whose answers are still on their way out
        self._generating = False
        self._collecting = False  # the worker waits in _collect (the only wait that replies end)
        self.batch_sizes: deque[int] = deque(maxlen=10000)  # recent batch sizes, shown by /health
        self._thread = threading.Thread(target=self._run, name="exgra-batcher", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        with self._condition:
            return len(self._waiting)

    def idle(self) -> bool:
        """Nothing waits or runs, and at most one request (the caller's) is announced."""
        with self._condition:
            return not self._waiting and not self._generating and self._announced <= 1

    def announce(self) -> None:
        """A request is being prepared (images decoded, prompt rendered) and will be submitted soon."""
        with self._condition:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced request failed before it was submitted."""
        with self._condition:
            self._announced -= 1
            self._condition.notify()

    def replied(self, request: PendingRequest) -> None:
        """``request``'s answer has been handed to its client (only for ``reports_reply`` requests)."""
        with self._condition:
            if request.batch_serial == self._serial and self._replying > 0:
                self._replying -= 1
                if self._collecting:
                    # Only a collecting worker waits for replies; waking an idle one would make it
                    # compete for the GIL and a CPU with the event loop sending this very answer.
                    self._condition.notify()

    def submit(self, request: PendingRequest, announced: bool = False) -> bool:
        """Queue ``request``; ``False`` when the queue is full (the caller answers 503)."""
        with self._condition:
            if announced:
                self._announced -= 1
            if len(self._waiting) >= self.max_queue:
                self._condition.notify()
                return False
            self._waiting.append(request)
            self._condition.notify()
        return True

    def close(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        self._thread.join(timeout=5)

    def _take_batch(self) -> list[PendingRequest]:
        with self._condition:
            self._generating = False  # the worker is back: the previous batch is answered
            while not self._waiting and not self._stopped:
                self._condition.wait()
            if self._stopped:
                return []
            if self.max_batch_size > 1 and (self._last_batch_size > 1 or self._announced > 0):
                self._collecting = True
                try:
                    self._collect()
                finally:
                    self._collecting = False
            head = self._waiting.popleft()
            batch, kept = [head], deque()
            while self._waiting and len(batch) < self.max_batch_size:
                candidate = self._waiting.popleft()
                (batch if candidate.batch_key == head.batch_key else kept).append(candidate)
            kept.extend(self._waiting)
            self._waiting = kept
            self._serial += 1
            for request in batch:
                request.batch_serial = self._serial
            self._replying = sum(request.reports_reply for request in batch)
            self._generating = True
            return batch

    def _collect(self) -> None:
        """Under load, wait for more requests before a batch starts (the condition is held).

        Clients answered by one batch come back as a burst spread over more than one window (their
        answers go out one by one, then each sends, and its request is read and prepared); a batch
        started on the first of them runs a full batch's decoding steps for one row while the rest
        wait (batches of 1 + 31 instead of 32). So the wait goes on while the last batch's answers are
        still going out, an announced request is still being read or prepared, or fewer than half as
        many requests wait as the last batch held (on a busy machine the first client back can be
        more than a window ahead of the others), and otherwise until ``window`` seconds pass with no
        new arrival; never more than ``_MAX_WINDOWS`` windows in all.
        """
        started = last_arrival = time.monotonic()
        seen = len(self._waiting)
        while len(self._waiting) < self.max_batch_size and not self._stopped:
            now = time.monotonic()
            if len(self._waiting) != seen:
                seen, last_arrival = len(self._waiting), now
            # Fewer than half of the last batch's clients back: the rest are most likely on their way.
            expecting = self._announced > 0 or self._replying > 0 or 2 * seen < self._last_batch_size
            deadline = started + _MAX_WINDOWS * self.window_s
            if not expecting:
                deadline = min(deadline, last_arrival + self.window_s)
            if now >= deadline:
                return
            self._condition.wait(deadline - now)

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            self._last_batch_size = len(batch)
            self.batch_sizes.append(len(batch))
            try:
                answers = self._generate(batch)
            except Exception as exc:
                if len(batch) == 1:
                    logger.exception("generation failed")
                    batch[0].on_done(exc)
                    continue
                # One bad row must not fail its neighbours: retry each request alone.
                logger.warning("batched generation failed (%s); retrying one by one", type(exc).__name__)
                for request in batch:
                    try:
                        request.on_done(self._generate([request])[0])
                    except Exception as single_exc:
                        logger.exception("generation failed")
                        request.on_done(single_exc)
                continue
            for request, answer in zip(batch, answers, strict=True):
                request.on_done(answer)

    def _generate(self, batch: list[PendingRequest]) -> list[GeneratedAnswer]:
        longest = max(request.settings.max_new_tokens for request in batch)
        settings = batch[0].settings
        settings = GenerationSettings(
            max_new_tokens=longest,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
        )
        images = [request.pixel_values for request in batch if request.pixel_values is not None]
        pixel_values = self.generator.join_vision(images) if images else None
        streamer = _BatchStreamer(self.generator, batch) if any(r.stream for r in batch) else None
        rows = [request.token_ids for request in batch]
        return self.generator.generate_prompts(
            [request.prompt for request in batch],
            pixel_values,
            settings=settings,
            row_max_new_tokens=[request.settings.max_new_tokens for request in batch],
            row_stop_strings=[request.stop_strings for request in batch],
            streamer=streamer,
            rows=None if None in rows else rows,
        )
