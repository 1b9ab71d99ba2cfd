"""Conversation templates: how conversations become training text and questions become prompts.

``legacy`` reproduces the reference's training template (LLaVA v0 ``conv_v1_2``) and its ``simple``
evaluation prompt (REFERENCE §4.2, §7.1) so released LLaVA-Med / ExGra-Med checkpoints answer as they
were trained. ``chat`` is the Vicuna-v1 style template of LLaVA-1.5 for new models.
``mistral_instruct`` is LLaVA's ``mistral_instruct`` conversation mode, the one LLaVA-Med v1.5 uses
(``[INST] <image>\nquestion [/INST] answer </s>``).

:func:`chat_template` renders each template as a Jinja chat template for the tokenizer/processor of a
saved checkpoint, so ``processor.apply_chat_template`` (vLLM, lmms-eval) builds the same prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exgra.errors import ConfigError
from exgra.vocabulary import (
    IMAGE_END_TOKEN,
    IMAGE_PATCH_TOKEN,
    IMAGE_PLACEHOLDER,
    IMAGE_START_TOKEN,
    strip_image_placeholder,
)

__all__ = [
    "IMAGE_PLACEHOLDER",
    "REFERENCE_TEMPLATES",
    "ConversationTemplate",
    "chat_template",
    "get_template",
    "image_token_string",
    "list_templates",
]


SYSTEM_MESSAGE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
CHAT_SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)

_HUMAN_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant", "model"}


def image_token_string(
    num_tokens: int, use_start_end: bool = True, patch_token: str = IMAGE_PATCH_TOKEN
) -> str:
    """`<im_start>` + `num_tokens` x `<im_patch>` + `<im_end>`; only the patches if not `use_start_end`.

    ``patch_token`` is the model's image token (``<image>`` in llava-hf checkpoints).
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    patches = patch_token * num_tokens
    return f"{IMAGE_START_TOKEN}{patches}{IMAGE_END_TOKEN}" if use_start_end else patches


def _turn(turn: Any) -> tuple[str, str]:
    """(role, text) of a conversation turn: a ``{"from", "value"}`` mapping or an object with those fields."""
    if isinstance(turn, Mapping):
        role, value = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
    else:
        role = getattr(turn, "from_", None) or getattr(turn, "role", None)
        value = getattr(turn, "value", None)
    if not isinstance(role, str) or not isinstance(value, str):
        raise ValueError(f"a conversation turn needs 'from' and 'value' strings, got {turn!r}")
    role = role.lower()
    if role in _HUMAN_ROLES:
        return "human", value
    if role in _ASSISTANT_ROLES:
        return "assistant", value
    raise ValueError(f"unknown conversation role {role!r}; use 'human' or 'gpt'")


def _insert_image(text: str, image_tokens: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, image_tokens)


@dataclass(frozen=True)
class ConversationTemplate:
    """A conversation format. All methods work on strings; tokenisation is the caller's job.

    ``training_segments`` returns the text pieces in order with a flag saying whether the piece is
    an LM target, so a collator can tokenise each piece and mask the others with -100.
    """

    name: str
    system: str
    human_role: str
    assistant_role: str
    stop_strings: tuple[str, ...]

    def training_segments(
        self, conversations: Sequence[Any], image_tokens: str = ""
    ) -> list[tuple[str, bool]]:
        """Text segments of a full training conversation; ``True`` marks assistant (target) text.

        ``<image>`` in a turn is replaced by ``image_tokens``. Human turns are masked completely (the
        reference's v0 off-by-one, which left two human tokens as targets, is not reproduced).
        """
        turns = [_turn(turn) for turn in conversations]
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        if self.name == "legacy":
            segments = [(self.system + "\n\n", False)]
            for role, value in turns:
                value = _insert_image(value, image_tokens)
                if role == "human":
                    segments.append((f"### {self.human_role}: {value}\n", False))
                else:
                    segments.append((f"### {self.assistant_role}: {value}\n", True))
            # The trailing "### " is a target: it teaches the model to emit the stop string.
            segments.append(("### ", True))
            return segments
        if self.name == "mistral_instruct":
            # LLaVA's LLAMA_2 separator style: "[INST] q [/INST]" then " a </s>" (no system message).
            segments = []
            for role, value in turns:
                value = _insert_image(value, image_tokens)
                if role == "human":
                    segments.append((f"[INST] {value} [/INST]", False))
                else:
                    segments.append((f" {value} </s>", True))
            return segments
        segments = [(self.system + " ", False)]
        for role, value in turns:
            value = _insert_image(value, image_tokens)
            if role == "human":
                segments.append((f"{self.human_role}: {value} {self.assistant_role}:", False))
            else:
                segments.append((f" {value}</s>", True))
        return segments

    def prompt(self, question: str, image_tokens: str = "") -> str:
        """Generation prompt for one question about one image.

        ``<image>`` is removed from ``question`` and ``image_tokens`` appended after a newline, as the
        reference's evaluation does. The legacy prompt ends with ``###``; the model continues with
        ``Assistant: ...`` and stops at the next ``###``.
        """
        return self.conversation_prompt([("human", question)], image_tokens, images_per_turn=[1])

    def conversation_prompt(
        self,
        turns: Sequence[Any],
        image_tokens: str = "",
        system: str | None = None,
        images_per_turn: Sequence[int] | None = None,
    ) -> str:
        """Generation prompt for a multi-turn conversation that ends with a human turn.

        ``turns`` are ``(role, text)`` pairs or ``{"from", "value"}`` mappings (roles human/user and
        gpt/assistant); ``system`` replaces the template's system message. Each human turn's images
        (``images_per_turn[i]``, default: the number of ``<image>`` placeholders in it) are appended
        after its text, one ``\n`` + ``image_tokens`` each, the reference's evaluation rule, so a
        one-turn conversation gives exactly :meth:`prompt`. Legacy keeps the reference's seeded
        ``Hi!`` exchange, then ``Human: q###`` and ``Assistant: a\n###`` turns; chat follows Vicuna v1
        (``USER: q ASSISTANT: a</s>``); ``mistral_instruct`` LLaMA-2 style (``[INST] q [/INST] a </s>``).
        The same prompts as :func:`chat_template` renders, plus the system message.
        """
        parsed = [
            _turn({"from": turn[0], "value": turn[1]} if isinstance(turn, tuple) else turn) for turn in turns
        ]
        if not parsed or parsed[-1][0] != "human":
            raise ValueError("a generation prompt needs a conversation that ends with a user turn")
        counts = list(images_per_turn) if images_per_turn is not None else None
        pieces = []
        for index, (role, value) in enumerate(parsed):
            text = strip_image_placeholder(value)
            if role == "human":
                count = counts[index] if counts is not None else value.count(IMAGE_PLACEHOLDER)
                if image_tokens and self.name == "mistral_instruct":
                    # LLaVA-1.5 evaluation puts the image first: "<image>\n" + question.
                    text = f"{image_tokens}\n" * count + text
                elif image_tokens:
                    text += f"\n{image_tokens}" * count
                pieces.append(("human", text))
            else:
                pieces.append(("assistant", text))
        system_text = self.system if system is None else system
        if self.name == "legacy":
            prompt = (
                f"{system_text}###{self.human_role}: Hi!###{self.assistant_role}: Hi there!  "
                "How can I help you today?\n###"
            )
            for role, text in pieces:
                if role == "human":
                    prompt += f"{self.human_role}: {text}###"
                else:
                    # What a legacy model writes after "###": "Assistant: answer\n", cut at "###".
                    prompt += f"{self.assistant_role}: {text}\n###"
            return prompt
        if self.name == "mistral_instruct":
            # LLaVA's LLAMA_2 separator style without a system slot: a system text leads the first turn.
            prompt = ""
            for index, (role, text) in enumerate(pieces):
                if role == "human":
                    lead = f"{system}\n\n" if system and index == 0 else ""
                    prompt += f"[INST] {lead}{text} [/INST]"
                else:
                    prompt += f" {text} </s>"
            return prompt
        prompt = f"{system_text} "
        for role, text in pieces:
            if role == "human":
                prompt += f"{self.human_role}: {text} {self.assistant_role}:"
            else:
                prompt += f" {text}</s>"
        return prompt

    def clean_answer(self, text: str) -> str:
        """Generated continuation -> answer: cut at the first stop string, drop a leading role prefix."""
        for stop in self.stop_strings:
            index = text.find(stop)
            if index >= 0:
                text = text[:index]
        text = text.strip()
        prefix = f"{self.assistant_role}:"
        if text.startswith(prefix):
            text = text[len(prefix) :].strip()
        return text


_TEMPLATES = {
    "legacy": ConversationTemplate("legacy", SYSTEM_MESSAGE, "Human", "Assistant", ("###",)),
    "chat": ConversationTemplate("chat", CHAT_SYSTEM_MESSAGE, "USER", "ASSISTANT", ("</s>", "USER:")),
    # EOS (</s>) ends a mistral_instruct answer; there is no stop string.
    "mistral_instruct": ConversationTemplate("mistral_instruct", "", "USER", "ASSISTANT", ()),
}
# Templates that reproduce a released model's own prompts: reference image/eval behaviour by default.
REFERENCE_TEMPLATES = frozenset({"legacy", "mistral_instruct"})

# Jinja pieces shared by the chat templates: a message's text parts joined, and its image count.
_JINJA_PARTS = (
    "{%- macro text_of(message) -%}{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endfor -%}{%- endif -%}{%- endmacro -%}"
    "{%- macro images_of(message) -%}{%- if message['content'] is not string -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{ IMG }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
)


def chat_template(name: str, image_tokens: str) -> str:
    """The template ``name`` as a Jinja chat template (``messages`` with text and image parts).

    ``image_tokens`` is what one image becomes in the rendered text (e.g. ``<im_start><im_patch><im_end>``;
    a LLaVA processor then repeats the ``<im_patch>`` to the model's image-token count). One user message
    renders, after ``bos_token``, exactly as :meth:`ConversationTemplate.prompt`.
    """
    template = get_template(name)
    image = image_tokens.replace("'", "\\'")
    head = "{%- set IMG = '" + image + "' -%}" + _JINJA_PARTS + "{{- bos_token -}}"
    if name == "legacy":
        intro = (
            f"{template.system}###{template.human_role}: Hi!###{template.assistant_role}: Hi there!  "
            "How can I help you today?\n###"
        )
        body = (
            "{{- '" + intro.replace("'", "\\'") + "' -}}{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            "{{- 'Human: ' + (text_of(message) | replace('<image>', '') | trim) -}}"
            "{%- for _ in range(images_of(message) | length // (IMG | length)) -%}{{- '\n' + IMG -}}"
            "{%- endfor -%}{{- '###' -}}"
            "{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' + text_of(message) + '\n###' -}}"
            "{%- endif -%}{%- endfor -%}"
        )
    elif name == "chat":
        body = (
            "{{- '" + template.system.replace("'", "\\'") + " ' -}}{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            "{{- 'USER: ' + (text_of(message) | replace('<image>', '') | trim) -}}"
            "{%- for _ in range(images_of(message) | length // (IMG | length)) -%}{{- '\n' + IMG -}}"
            "{%- endfor -%}{{- ' ASSISTANT:' -}}"
            "{%- elif message['role'] == 'assistant' -%}{{- ' ' + text_of(message) + eos_token -}}"
            "{%- endif -%}{%- endfor -%}"
        )
    else:
        body = (
            "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{{- '[INST] ' -}}"
            "{%- for _ in range(images_of(message) | length // (IMG | length)) -%}{{- IMG + '\n' -}}"
            "{%- endfor -%}{{- (text_of(message) | replace('<image>', '') | trim) + ' [/INST]' -}}"
            "{%- elif message['role'] == 'assistant' -%}{{- ' ' + text_of(message) + ' ' + eos_token -}}"
            "{%- endif -%}{%- endfor -%}"
        )
    return head + body


def list_templates() -> list[str]:
    """Names accepted by :func:`get_template`."""
    return sorted(_TEMPLATES)


def get_template(name: str) -> ConversationTemplate:
    """The conversation template called ``name`` (``legacy``, ``chat`` or ``mistral_instruct``)."""
    if name not in _TEMPLATES:
        choices = ", ".join(list_templates())
        raise ConfigError(f"unknown conversation template '{name}'; choose one of: {choices}")
    return _TEMPLATES[name]
