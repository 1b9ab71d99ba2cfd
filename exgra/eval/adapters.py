"""Thin adapters that let other evaluation harnesses drive exgra's generation in-process.

- :class:`MedEvalKitModel`: MedEvalKit's model interface (``generate_outputs(messages_list)``), where
  each message is ``{"prompt": str, "image": PIL.Image | path}`` (or ``"images": [...]``; an optional
  ``"system"`` is ignored: exgra models use their own conversation template).
- :class:`MultiMedEvalBatcher`: MultiMedEval's ``batcher(prompts)``, where each prompt is
  ``(conversation, images)`` with ``conversation`` a list of ``{"role", "content"}`` turns whose
  ``<img>`` markers stand for the images.

Both call :class:`exgra.eval.generate.AnswerGenerator` (batched, greedy, the model's template and stop
strings), so a number from a harness is produced by the same code as ``exgra eval``. exgra models take
one image per question: a prompt with several images is refused; one without an image is answered with
a mid-grey image (text-only tasks of a harness then run, and the report says so in
``text_only_prompts``). Harnesses that speak HTTP (lmms-eval, VLMEvalKit) use ``exgra serve`` instead
(docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from exgra.errors import ExgraError

__all__ = ["ExgraHarnessModel", "MedEvalKitModel", "MultiMedEvalBatcher"]

_MULTIMEDEVAL_IMAGE = "<img>"


def _as_image(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ExgraError(f"image not found: {path}")
        with Image.open(path) as opened:
            return opened.convert("RGB")
    raise ExgraError(f"an image must be a PIL image or a file path, got {type(image).__name__}")


class ExgraHarnessModel:
    """An exgra model ready to answer (question, image) pairs in batches, for harness adapters.

    ``model`` is a saved model directory or an already loaded :class:`exgra.models.ModelBundle`.
    """

    def __init__(
        self,
        model: str | Path | Any,
        batch_size: int = 8,
        max_new_tokens: int = 128,
        template: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        from exgra.eval.generate import AnswerGenerator, GenerationSettings, load_inference_model

        if batch_size < 1:
            raise ExgraError(f"batch_size must be at least 1, got {batch_size}")
        bundle = model
        if isinstance(model, (str, Path)):
            bundle = load_inference_model(model, device=device, dtype=dtype)
        self.generator = AnswerGenerator(
            bundle, template=template, settings=GenerationSettings(max_new_tokens=max_new_tokens)
        )
        self.batch_size = batch_size
        self.text_only_prompts = 0

    def _blank(self) -> Image.Image:
        self.text_only_prompts += 1
        return Image.new("RGB", (336, 336), (128, 128, 128))

    def answer(self, questions: Sequence[str], images: Sequence[Image.Image]) -> list[str]:
        """Answers in input order, generated ``batch_size`` at a time."""
        answers: list[str] = []
        for start in range(0, len(questions), self.batch_size):
            stop = start + self.batch_size
            batch = self.generator.answer(list(questions[start:stop]), list(images[start:stop]))
            answers += [answer.text for answer in batch]
        return answers


class MedEvalKitModel(ExgraHarnessModel):
    """MedEvalKit-style model: ``generate_output(messages)`` and ``generate_outputs(messages_list)``."""

    def process_messages(self, messages: dict[str, Any]) -> tuple[str, Image.Image]:
        if not isinstance(messages, dict) or not isinstance(messages.get("prompt"), str):
            raise ExgraError('a MedEvalKit message must be a dict with a text "prompt"')
        images = messages.get("images")
        if images is None:
            images = [messages["image"]] if messages.get("image") is not None else []
        if len(images) > 1:
            raise ExgraError(f"exgra models take one image per question; this message has {len(images)}")
        image = _as_image(images[0]) if images else self._blank()
        return messages["prompt"], image

    def generate_output(self, messages: dict[str, Any]) -> str:
        return self.generate_outputs([messages])[0]

    def generate_outputs(self, messages_list: Sequence[dict[str, Any]]) -> list[str]:
        pairs = [self.process_messages(messages) for messages in messages_list]
        return self.answer([q for q, _ in pairs], [i for _, i in pairs])


class MultiMedEvalBatcher(ExgraHarnessModel):
    """MultiMedEval-style ``batcher``: call it with ``[(conversation, images), ...]``; returns answers.

    The question is the last user turn with its ``<img>`` markers removed (earlier turns are not
    replayed: exgra's templates ask one question per image).
    """

    def __call__(self, prompts: Sequence[tuple[list[dict[str, str]], list[Any]]]) -> list[str]:
        questions, images = [], []
        for conversation, prompt_images in prompts:
            users = [turn for turn in conversation if turn.get("role") == "user"]
            if not users:
                raise ExgraError("a MultiMedEval conversation needs a user turn")
            if len(prompt_images) > 1:
                raise ExgraError(
                    f"exgra models take one image per question; this prompt has {len(prompt_images)}"
                )
            questions.append(users[-1]["content"].replace(_MULTIMEDEVAL_IMAGE, "").strip())
            images.append(_as_image(prompt_images[0]) if prompt_images else self._blank())
        return self.answer(questions, images)
