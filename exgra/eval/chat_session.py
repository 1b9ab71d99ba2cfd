"""Multi-turn chat about one image on the same prompt path as ``exgra serve`` (``exgra ask --chat``).

Each turn renders the whole conversation with the model's own template
(:meth:`AnswerGenerator.build_conversation_prompt`; the image belongs to the first user turn) and
continues it with :meth:`AnswerGenerator.generate_prompts`, so the first answer equals ``exgra ask``'s
and every answer equals what ``exgra serve`` gives for the same messages at temperature 0.
"""

from __future__ import annotations

from PIL import Image

from exgra.eval.generate import AnswerGenerator, GeneratedAnswer

__all__ = ["ChatSession"]


class ChatSession:
    """A conversation about ``image`` (``None``: text only) with an optional ``system`` message."""

    def __init__(
        self, generator: AnswerGenerator, image: Image.Image | None, system: str | None = None
    ) -> None:
        self.generator = generator
        self.system = system
        self.pixel_values = generator.preprocess([image]) if image is not None else None
        self.turns: list[tuple[str, str]] = []

    def ask(self, question: str) -> GeneratedAnswer:
        """Answer ``question`` given everything said so far; the answer joins the history."""
        turns = [*self.turns, ("human", question)]
        images_per_turn = [0] * len(turns)
        if self.pixel_values is not None:
            images_per_turn[0] = 1
        prompt = self.generator.build_conversation_prompt(turns, self.system, images_per_turn)
        answer = self.generator.generate_prompts([prompt], self.pixel_values)[0]
        self.turns = [*turns, ("assistant", answer.text)]
        return answer
