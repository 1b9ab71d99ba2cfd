"""The shared LLM client against a real HTTP mock server: retries, re-asks, limits, keys."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

import pytest

from exgra.errors import ExgraError
from exgra.llm import (
    Credentials,
    LLMClient,
    LLMSettings,
    Redactor,
    ReplyError,
    backoff_delay,
    extract_json_object,
    parse_retry_after,
    resolve_credentials,
)
from tests.llm.mock_openai_server import MockOpenAIServer

FAKE_KEY = "sk-fake-0123456789abcdef"


def _caption_parse(text: str) -> str:
    obj = extract_json_object(text)
    if obj is None or "revision" not in obj:
        raise ReplyError("no revision")
    return obj["revision"]


def _ask(server: MockOpenAIServer, settings: LLMSettings, n: int = 1):
    credentials = Credentials(base_url=server.base_url, api_key=FAKE_KEY, key_source="test")

    async def main():
        async with LLMClient(settings, credentials) as client:
            messages = [
                [{"role": "system", "content": "s"}, {"role": "user", "content": f'{{"answer": "a{i}"}}'}]
                for i in range(n)
            ]
            results = await asyncio.gather(*(client.complete(m, _caption_parse) for m in messages))
            return results, client.stats

    return asyncio.run(main())


def fast(**kwargs) -> LLMSettings:
    values = dict(model="m", backoff_base=0.01, backoff_cap=0.05, timeout=5.0)
    values.update(kwargs)
    return LLMSettings(**values)


def test_backoff_is_full_jitter_and_capped():
    rng = random.Random(0)
    delays = [backoff_delay(5, base=1.0, cap=4.0, rng=rng) for _ in range(200)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert max(delays) > 3.0 and min(delays) < 1.0  # spread over the whole window, not a fixed sleep
    assert all(backoff_delay(0, base=1.0, cap=60.0, rng=rng) <= 1.0 for _ in range(50))


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after({"retry-after": future}) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"revision": "x"}', {"revision": "x"}),
        ('```json\n{"revision": "x"}\n```', {"revision": "x"}),
        ('Here you go: {"revision": "x"} hope it helps', {"revision": "x"}),
        ('{"revision": "line\nbreak"}', {"revision": "line\nbreak"}),
        ('"{\\"revision\\": \\"x\\"}"', {"revision": "x"}),
        ('{"revision": "cut off', None),
        ("no json at all", None),
        ("[1, 2]", None),
    ],
)
def test_extract_json_object(text, expected):
    assert extract_json_object(text) == expected


def test_credentials_from_env_and_dotenv(tmp_path, monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "OPENROUTER_ENDPOINT", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExgraError, match="OPENAI_API_KEY or OPENROUTER_API_KEY"):
        resolve_credentials()
    # a local endpoint needs no key (vLLM, llama.cpp)
    assert resolve_credentials("http://127.0.0.1:8000/v1").key_source == "none"
    (tmp_path / ".env").write_text(
        f"OPENROUTER_API_KEY={FAKE_KEY}\nOPENROUTER_ENDPOINT=https://router.example/api/v1\n"
    )
    credentials = resolve_credentials()
    assert credentials.api_key == FAKE_KEY
    assert credentials.base_url == "https://router.example/api/v1"
    assert FAKE_KEY not in repr(credentials)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-environment-123")
    explicit = resolve_credentials("http://x/v1")
    assert (explicit.base_url, explicit.api_key) == ("http://x/v1", "sk-from-environment-123")
    assert explicit.key_source == "OPENAI_API_KEY"


def test_redactor_removes_every_occurrence():
    redact = Redactor(FAKE_KEY)
    assert redact(f"Bearer {FAKE_KEY} and {FAKE_KEY}") == "Bearer *** and ***"


def test_transport_faults_are_retried_and_counted():
    with MockOpenAIServer(faults=["429", "500", "drop", "429"]) as server:
        results, stats = _ask(server, fast(concurrency=1), n=3)
    assert [r.value for r in results] == ["EXTENDED: a0", "EXTENDED: a1", "EXTENDED: a2"]
    assert all(r.ok for r in results)
    assert stats.retries == 4 and stats.failed == 0
    assert server.faults_served == {"429": 2, "500": 1, "drop": 1}
    assert all(r.response_ids and r.prompt_tokens == 10 for r in results)


def test_retry_after_is_honoured():
    with MockOpenAIServer(faults=["429"], retry_after=0.6) as server:
        started = time.monotonic()
        results, _ = _ask(server, fast(backoff_cap=0.01))
        elapsed = time.monotonic() - started
    assert results[0].ok
    assert elapsed >= 0.6  # jittered backoff alone would wait at most 0.01 s


def test_malformed_reply_is_reasked_then_reported():
    with MockOpenAIServer(faults=["malformed", "fenced"]) as server:
        results, stats = _ask(server, fast())
    assert results[0].value == "EXTENDED: a0" and stats.reasks == 1
    with MockOpenAIServer(faults=["malformed"] * 10) as server:
        results, stats = _ask(server, fast(max_reasks=2))
    assert not results[0].ok and "unusable reply after 3 tries" in results[0].error
    assert server.requests == 3


def test_persistent_server_error_gives_up_and_redacts_key():
    with MockOpenAIServer(always_fail=("a0",)) as server:
        results, stats = _ask(server, fast(max_retries=2), n=2)
    assert not results[0].ok and results[1].ok
    assert "HTTP 500" in results[0].error and "gave up" in results[0].error
    assert FAKE_KEY not in results[0].error and "***" in results[0].error  # the server echoed the key
    assert stats.retries == 2 and stats.failed == 1


def test_unauthorised_stops_the_run():
    with MockOpenAIServer(faults=["401"]) as server, pytest.raises(ExgraError, match="rejected the API key"):
        _ask(server, fast())


def test_concurrency_is_bounded():
    with MockOpenAIServer(latency=0.05) as server:
        results, _ = _ask(server, fast(concurrency=3), n=12)
    assert all(r.ok for r in results)
    assert server.max_in_flight == 3
