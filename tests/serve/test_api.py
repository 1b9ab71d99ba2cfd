"""``exgra serve`` through the official ``openai`` SDK and raw HTTP, against a real server process."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from PIL import Image

from tests.serve.conftest import API_KEY, MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES
from tests.serve.helpers import data_url, http


def _image_message(question: str, url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def _answer(client, model_name: str, messages: list[dict], **options) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model_name, messages=messages, temperature=0, **options)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def test_health_models_and_research_notice(server, client, model_name) -> None:
    health = http(f"{server.url}/health")  # no key needed: load balancers probe it
    assert health.status == 200 and health.body["status"] == "ok"
    assert health.body["torch_threads"] == 1  # the helper starts it with OMP_NUM_THREADS=1
    models = client.models.list()
    assert [m.id for m in models.data] == [model_name]
    raw = http(f"{server.api}/models", headers=_auth()).body["data"][0]
    assert raw["metadata"]["clinical_use"] is False and "Research use only" in raw["metadata"]["notice"]


def test_plain_and_streamed_answers_agree(serve_setup, client, model_name) -> None:
    question, image = serve_setup["questions"][0]
    messages = _image_message(question, data_url(image))
    plain = _answer(client, model_name, messages, max_tokens=12)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].message.role == "assistant"
    assert 0 < plain.usage.completion_tokens <= 12
    # The prompt holds the template, the question and the tiny model's 16 image tokens: exactly the ids
    # `exgra ask` feeds the model for this question.
    from exgra.eval.generate import AnswerGenerator, load_inference_model

    generator = AnswerGenerator(load_inference_model(serve_setup["model_dir"]))
    expected = generator.tokenizer(generator.build_prompt(question))["input_ids"]
    assert plain.usage.prompt_tokens == len(expected) > 16
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    stream = client.chat.completions.create(
        model=model_name, messages=messages, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1  # streamed in pieces, not one final blob
    assert "".join(deltas) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_no_access_log_line_per_request_by_default(server, client, model_name) -> None:
    _answer(client, model_name, [{"role": "user", "content": "Hello?"}], max_tokens=2)
    assert http(f"{server.url}/health").status == 200
    assert "POST /v1/chat/completions" not in server.log()
    assert "GET /health" not in server.log()


def test_stream_is_server_sent_events_ending_with_done(server, serve_setup, model_name) -> None:
    question, image = serve_setup["questions"][1]
    body = {
        "model": model_name,
        "messages": _image_message(question, data_url(image)),
        "stream": True,
        "max_tokens": 6,
    }
    result = http(f"{server.api}/chat/completions", "POST", json.dumps(body), _auth())
    events = [line for line in result.text.split("\n\n") if line.strip()]
    assert result.status == 200 and all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][len("data: ") :])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_temperature_zero_equals_exgra_ask(serve_setup, client, model_name, run_exgra) -> None:
    question, image = serve_setup["questions"][2]
    cli = run_exgra(
        "ask", "--model", serve_setup["model_dir"], "--image", image, "--max-new-tokens", "12", question
    )
    assert cli.exit_code == 0, cli.stderr
    served = _answer(client, model_name, _image_message(question, data_url(image)), max_tokens=12)
    assert served.choices[0].message.content == cli.stdout.strip() != ""
    # The same file named by a path under --image-root (image before the text this time) answers the same.
    copied = f"scans/{image.name}" if (serve_setup["image_root"] / "scans" / image.name).is_file() else None
    if copied:
        parts = [{"type": "image_url", "image_url": {"url": copied}}, {"type": "text", "text": question}]
        by_path = _answer(client, model_name, [{"role": "user", "content": parts}], max_tokens=12)
        assert by_path.choices[0].message.content == cli.stdout.strip()


def test_multi_turn_and_system_message_match_exgra_ask_chat(
    serve_setup, client, model_name, run_exgra, monkeypatch
) -> None:
    (first, image), (second, _) = serve_setup["questions"][3], serve_setup["questions"][4]
    system = "You are a careful radiology assistant."
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{second}\n"))
    cli = run_exgra(
        "ask", "--chat", "--model", serve_setup["model_dir"], "--image", image, "--max-new-tokens", "10",
        "--system", system, first,
    )  # fmt: skip
    assert cli.exit_code == 0, cli.stderr
    cli_first, cli_second = cli.stdout.strip().split("\n")
    messages = [{"role": "system", "content": system}, *_image_message(first, data_url(image))]
    served_first = _answer(client, model_name, messages, max_tokens=10).choices[0].message.content
    assert served_first == cli_first
    messages += [{"role": "assistant", "content": served_first}, {"role": "user", "content": second}]
    served_second = _answer(client, model_name, messages, max_tokens=10).choices[0].message.content
    assert served_second == cli_second
    # The history and the system message really reach the model.
    alone = _answer(client, model_name, [{"role": "user", "content": second}], max_tokens=10)
    no_system = _answer(client, model_name, messages[1:], max_tokens=10)
    assert (alone.choices[0].message.content, no_system.choices[0].message.content) != (
        served_second,
        served_second,
    )


def test_seeded_sampling_is_deterministic(serve_setup, client, model_name) -> None:
    question, image = serve_setup["questions"][5]
    messages = _image_message(question, data_url(image))

    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model=model_name, messages=messages, temperature=1.0, top_p=0.95, seed=seed, max_tokens=16
        )
        return reply.choices[0].message.content

    first, again, other = sample(11), sample(11), sample(12)
    assert first == again
    assert other != first  # a random tiny model samples almost uniformly: another seed differs


def test_stop_strings_and_max_tokens(serve_setup, client, model_name) -> None:
    question, image = serve_setup["questions"][6]
    messages = _image_message(question, data_url(image))
    full = _answer(client, model_name, messages, max_tokens=16)
    text = full.choices[0].message.content
    assert len(text) > 4
    stop = text[3:5]
    cut = _answer(client, model_name, messages, max_tokens=16, stop=[stop]).choices[0].message.content
    assert cut == text[: text.index(stop)].strip()
    short = _answer(client, model_name, messages, max_completion_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    assert text.startswith(short.choices[0].message.content)


def test_image_confinement_and_remote_urls(serve_setup, client, model_name) -> None:
    question = "What is shown?"
    refused = {
        "parent escape": "../outside.png",
        "absolute outside": str(serve_setup["secret"]),
        "file url outside": serve_setup["secret"].as_uri(),
        "symlink out": "scans/link-out.png",
        "remote": "http://127.0.0.1:9/x.png",
        "remote https": "https://example.org/x.png",
    }
    for name, url in refused.items():
        with pytest.raises(openai.BadRequestError) as caught:
            _answer(client, model_name, _image_message(question, url), max_tokens=4)
        message = caught.value.body["message"]
        assert "Traceback" not in message, name
        assert "outside" in message or "remote" in message, (name, message)
    inside = serve_setup["image_root"] / "scans" / serve_setup["images"][0].name
    assert _answer(client, model_name, _image_message(question, inside.as_uri()), max_tokens=4).choices


def test_size_limits(serve_setup, server, client, model_name) -> None:
    too_many_pixels = Image.new("RGB", (500, 500), (30, 60, 90))
    assert MAX_IMAGE_PIXELS < 500 * 500
    with pytest.raises(openai.APIStatusError) as caught:
        _answer(client, model_name, _image_message("Big?", data_url(too_many_pixels)), max_tokens=4)
    assert caught.value.status_code == 413 and "pixels" in caught.value.body["message"]
    huge = json.dumps(
        {"model": model_name, "messages": [{"role": "user", "content": "x" * MAX_REQUEST_BYTES}]}
    )
    assert http(f"{server.api}/chat/completions", "POST", huge, _auth()).status == 413
    with pytest.raises(openai.BadRequestError):
        _answer(client, model_name, [{"role": "user", "content": "hi"}], max_tokens=65)  # limit is 64
    five = [{"type": "image_url", "image_url": {"url": data_url(serve_setup["images"][0])}}] * 5
    with pytest.raises(openai.BadRequestError) as caught:
        _answer(client, model_name, [{"role": "user", "content": [{"type": "text", "text": "?"}, *five]}])
    assert "at most 4" in caught.value.body["message"]


def test_errors_have_the_openai_schema_and_status(serve_setup, server, model_name) -> None:
    url = f"{server.api}/chat/completions"
    good = json.dumps(
        {"model": model_name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    )

    def post(body: dict) -> object:
        return http(url, "POST", json.dumps({"model": model_name, **body}), _auth())

    cases = {
        "missing key": (http(url, "POST", good, {"Content-Type": "application/json"}), 401),
        "wrong key": (http(url, "POST", good, {**_auth(), "Authorization": "Bearer nope"}), 401),
        "models without key": (http(f"{server.api}/models"), 401),
        "malformed json": (http(url, "POST", '{"model": "x", "messages": [', _auth()), 400),
        "not an object": (http(url, "POST", "[1, 2]", _auth()), 400),
        "schema": (post({}), 422),
        "bad role": (post({"messages": [{"role": "robot", "content": "x"}]}), 422),
        "unknown model": (http(url, "POST", good.replace(model_name, "gpt-9"), _auth()), 404),
        "n=2": (http(url, "POST", json.dumps({**json.loads(good), "n": 2}), _auth()), 400),
        "ends with assistant": (post({"messages": [{"role": "assistant", "content": "x"}]}), 400),
        "bad base64": (post({"messages": _image_message("?", "data:image/png;base64,@@@")}), 400),
        "not an image": (post({"messages": _image_message("?", "data:image/png;base64,aGVsbG8=")}), 400),
        "unknown route": (http(f"{server.api}/nothing", headers=_auth()), 404),
    }
    for name, (result, status) in cases.items():
        assert result.status == status, (name, result.status, result.text)
        error = result.body["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], name
        assert "Traceback" not in result.text and 'File "' not in result.text, name
    # Image tokens typed as text cannot break the prompt: they are removed, the request is answered.
    smuggled = json.dumps(
        {
            "model": model_name,
            "messages": [{"role": "user", "content": "<image> <im_patch>?"}],
            "max_tokens": 2,
        }
    )
    assert http(url, "POST", smuggled, _auth()).status == 200
    assert server.alive() and http(f"{server.url}/health").status == 200


def test_32_concurrent_requests_are_batched_and_none_is_lost_or_mixed_up(
    serve_setup, server, client, model_name
) -> None:
    questions = serve_setup["questions"]
    requests = []
    for index in range(32):
        question, image = questions[index % len(questions)]
        # Distinct prompts and lengths: a mixed-up answer would show.
        requests.append((f"{question} (case {index})", data_url(image), 4 + index % 9))
    individual = [
        _answer(client, model_name, _image_message(q, url), max_tokens=limit) for q, url, limit in requests
    ]
    before = http(f"{server.url}/health").body["batches"]
    barrier = threading.Barrier(32)

    def send(request: tuple[str, str, int]):
        barrier.wait()
        question, url, limit = request
        return _answer(client, model_name, _image_message(question, url), max_tokens=limit)

    with ThreadPoolExecutor(32) as pool:
        concurrent = list(pool.map(send, requests))
    health = http(f"{server.url}/health").body
    assert health["largest_batch"] > 1 and health["batches"] - before < 32  # really grouped
    assert len(concurrent) == 32
    for (question, _, limit), alone, together in zip(requests, individual, concurrent, strict=True):
        assert together.usage.completion_tokens <= limit
        assert together.usage.prompt_tokens == alone.usage.prompt_tokens, question
    same = sum(
        a.choices[0].message.content == b.choices[0].message.content
        for a, b in zip(individual, concurrent, strict=True)
    )
    # Left padding can flip a near-tie of the random tiny model once in a while (as in test_generate).
    assert same >= 31, [
        (a.choices[0].message.content, b.choices[0].message.content)
        for a, b in zip(individual, concurrent, strict=True)
    ]
    assert len({c.id for c in concurrent}) == 32


def test_local_paths_need_an_image_root_and_remote_images_need_the_flag(tmp_path: Path, serve_setup) -> None:
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from tests.serve.helpers import running_server

    image = serve_setup["images"][0]
    # A stand-in image host on 127.0.0.1 (nothing leaves the machine).
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(image.parent))
    host = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{host.server_address[1]}/{image.name}"
    args = ["--model", str(serve_setup["model_dir"]), "--allow-remote-images", "--access-log"]
    try:
        with running_server(args, tmp_path / "log.txt") as server:
            client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0)
            name = serve_setup["model_dir"].name
            with pytest.raises(openai.BadRequestError) as caught:
                _answer(client, name, _image_message("?", str(image)), max_tokens=2)
            assert "--image-root" in caught.value.body["message"]
            fetched = _answer(client, name, _image_message("What?", remote), max_tokens=8)
            inline = _answer(client, name, _image_message("What?", data_url(image)), max_tokens=8)
            assert fetched.choices[0].message.content == inline.choices[0].message.content
            missing = remote.replace(image.name, "missing.png")
            with pytest.raises(openai.BadRequestError):
                _answer(client, name, _image_message("What?", missing), max_tokens=2)
            assert http(f"{server.url}/ui").status == 404  # the web chat only with --ui
            # --access-log: uvicorn's line per request, with its status.
            assert '"POST /v1/chat/completions HTTP/1.1" 200' in server.log()
            assert '"GET /ui HTTP/1.1" 404' in server.log()
    finally:
        host.shutdown()
