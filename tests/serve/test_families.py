"""``exgra serve`` for every model family: one server per family, a few requests through the ``openai`` SDK.

Oracles: ``exgra ask`` on the same saved model and input (temperature 0), ``exgra ask --chat`` for a
system message and two turns, and each multi-image / text-only request answered alone by the same
server equals it answered inside a concurrent batch.
"""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.serve.helpers import data_url, running_server

FAMILY_MODELS = ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-gemma3", "tiny-smolvlm", "tiny-llava-siglip"]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    from exgra.data.demo_data import build_demo_dataset

    demo = build_demo_dataset(tmp_path_factory.mktemp("serve-families-demo"), num_samples=10)
    return sorted(Path(demo.image_folder).glob("*.png"))[:2]


def _parts(text: str, *urls: str) -> list[dict]:
    return [{"type": "text", "text": text}, *({"type": "image_url", "image_url": {"url": u}} for u in urls)]


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_serve_answers_text_only_multi_image_and_matches_exgra_ask(
    name, images, tmp_path, run_exgra, monkeypatch
):
    import openai

    from exgra.models import create_model

    torch.manual_seed(0)
    model_dir = create_model(name).save(tmp_path / name)
    first, second = images
    args = ["--model", str(model_dir), "--max-tokens-limit", "32", "--default-max-tokens", str(MAX_TOKENS)]
    with running_server(args, tmp_path / "server.log") as server:
        client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)

        def reply(messages: list[dict]):
            return client.chat.completions.create(
                model=name, messages=messages, temperature=0, max_tokens=MAX_TOKENS
            )

        def ask(messages: list[dict]) -> str:
            return reply(messages).choices[0].message.content

        one_image = [{"role": "user", "content": _parts("What is shown?", data_url(first))}]
        two = _parts("Compare the two scans.", data_url(first), data_url(second))
        two_images = [{"role": "user", "content": two}]
        text_only = [{"role": "user", "content": "Name one organ."}]
        system = "You are a careful radiology assistant."
        chat = [{"role": "system", "content": system}, *one_image]

        # Temperature 0 equals `exgra ask` on the same image and question.
        cli = run_exgra("ask", "--model", model_dir, "--image", first, "--max-new-tokens", str(MAX_TOKENS),
                        "What is shown?")  # fmt: skip
        assert cli.exit_code == 0, cli.stderr
        assert ask(one_image) == cli.stdout.strip()
        monkeypatch.setattr(sys, "stdin", io.StringIO("Which side?\n"))
        cli_chat = run_exgra(
            "ask", "--chat", "--model", model_dir, "--image", first, "--max-new-tokens", str(MAX_TOKENS),
            "--system", system, "What is shown?",
        )  # fmt: skip
        assert cli_chat.exit_code == 0, cli_chat.stderr
        cli_first, cli_second = cli_chat.stdout.split("\n")[:2]
        served_first = ask(chat)
        assert served_first == cli_first.strip()
        follow_up = [
            *chat,
            {"role": "assistant", "content": served_first},
            {"role": "user", "content": "Which side?"},
        ]
        assert ask(follow_up) == cli_second.strip()

        # Zero and two images are answered, alone and batched with the others alike.
        alone = [ask(m) for m in (two_images, text_only, one_image)]
        assert all(isinstance(text, str) for text in alone)
        with ThreadPoolExecutor(3) as pool:
            batched = list(pool.map(ask, (two_images, text_only, one_image)))
        assert batched == alone

        # usage.prompt_tokens counts what the model reads: every image's tokens, expanded.
        from exgra.data.records import load_image
        from exgra.eval.generate import AnswerGenerator, load_inference_model

        generator = AnswerGenerator(load_inference_model(model_dir, device="cpu"))
        prompt = generator.build_conversation_prompt([("human", "Compare the two scans.")], None, [2])
        vision = generator.preprocess([load_image(p.parent, p.name) for p in (first, second)])
        vision = vision if isinstance(vision, dict) else {"pixel_values": vision}
        inputs = generator.family.generation_inputs(generator.bundle, [prompt], vision)
        assert reply(two_images).usage.prompt_tokens == inputs["input_ids"].shape[1]
        assert server.alive(), server.log()
