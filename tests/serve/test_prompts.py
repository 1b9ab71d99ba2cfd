"""Multi-turn prompts, against the formats written out by hand (REFERENCE §4.2: LLaVA v0 ``conv_v1_2``
after the seeded greeting; Vicuna v1: ``USER: q ASSISTANT: a</s>``) and against the Jinja chat templates
saved with a checkpoint (written separately, used by vLLM and ``apply_chat_template``); OpenAI messages
-> turns."""

from __future__ import annotations

import pytest

from exgra.data.templates import CHAT_SYSTEM_MESSAGE, SYSTEM_MESSAGE, get_template

IMG = "<im_start><im_patch><im_patch><im_end>"


def test_legacy_multi_turn_prompt() -> None:
    template = get_template("legacy")
    turns = [("user", "Is this a CT? <image>"), ("assistant", "Yes."), ("user", "Which organ?")]
    expected = (
        f"{SYSTEM_MESSAGE}###Human: Hi!###Assistant: Hi there!  How can I help you today?\n"
        f"###Human: Is this a CT?\n{IMG}###Assistant: Yes.\n###Human: Which organ?###"
    )
    assert template.conversation_prompt(turns, IMG) == expected
    assert template.conversation_prompt(turns[:1], IMG) == template.prompt("Is this a CT? <image>", IMG)
    with_system = template.conversation_prompt(turns, IMG, system="Be brief.")
    assert with_system == expected.replace(SYSTEM_MESSAGE, "Be brief.")


def test_chat_multi_turn_prompt() -> None:
    template = get_template("chat")
    turns = [("human", "Is this a CT?"), ("gpt", "Yes."), ("human", "Which organ?")]
    expected = (
        f"{CHAT_SYSTEM_MESSAGE} USER: Is this a CT?\n{IMG} ASSISTANT: Yes.</s>USER: Which organ? ASSISTANT:"
    )
    assert template.conversation_prompt(turns, IMG, images_per_turn=[1, 0, 0]) == expected
    assert template.conversation_prompt(turns[:1], IMG, images_per_turn=[1]) == template.prompt(
        turns[0][1], IMG
    )
    two_images = template.conversation_prompt([("user", "Compare.")], IMG, images_per_turn=[2])
    assert two_images == f"{CHAT_SYSTEM_MESSAGE} USER: Compare.\n{IMG}\n{IMG} ASSISTANT:"
    with pytest.raises(ValueError, match="ends with a user turn"):
        template.conversation_prompt(turns[:2], IMG)


@pytest.mark.parametrize("name", ["legacy", "chat", "mistral_instruct"])
def test_conversation_prompt_equals_the_saved_jinja_chat_template(name: str) -> None:
    from exgra.data.templates import chat_template
    from exgra.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = chat_template(name, IMG)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is this a CT?"}]},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": [{"type": "text", "text": "Which organ?"}]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    rendered = rendered.removeprefix(tokenizer.bos_token or "")
    turns = [("user", "Is this a CT?"), ("assistant", "Yes."), ("user", "Which organ?")]
    assert get_template(name).conversation_prompt(turns, IMG, images_per_turn=[1, 0, 0]) == rendered


def test_messages_to_turns() -> None:
    pytest.importorskip("fastapi")
    from exgra.serve.engine import conversation_from_messages
    from exgra.serve.errors import APIError
    from exgra.serve.schemas import ChatMessage

    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(
            role="user",
            content=[
                {"type": "image_url", "image_url": {"url": "data:a"}},
                {"type": "text", "text": "What <im_patch>?"},
            ],
        ),
        ChatMessage(role="assistant", content="A scan."),
        ChatMessage(role="user", content="And here?"),
        ChatMessage(role="user", content=[{"type": "image_url", "image_url": {"url": "data:b"}}]),
    ]
    conversation = conversation_from_messages(messages)
    assert conversation.system == "Be brief."
    # Image tokens typed as text are removed; consecutive user messages form one turn.
    assert conversation.turns == [("human", "What ?"), ("assistant", "A scan."), ("human", "And here?")]
    assert conversation.images_per_turn == [1, 0, 1] and conversation.image_urls == ["data:a", "data:b"]
    with pytest.raises(APIError, match="last message"):
        conversation_from_messages(messages[:3])
    with pytest.raises(APIError, match="before the conversation"):
        conversation_from_messages([messages[1], messages[0], messages[3]])
