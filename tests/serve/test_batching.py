"""The batch queue's scheduling, with a stand-in generator that records the batches it is given."""

from __future__ import annotations

import threading
import time

from exgra.eval.generate import GeneratedAnswer, GenerationSettings
from exgra.serve import batching
from exgra.serve.batching import BatchQueue, PendingRequest
from exgra.serve.config import ServeConfig, torch_threads


class RecordingGenerator:
    """Answers each prompt with itself and records every batch; the first call waits for ``release``."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.rows: list = []  # the token rows each batch was given
        self.release = threading.Event()

    def generate_prompts(self, prompts, pixel_values, **kwargs):
        if not self.batches:
            self.release.wait(10)
        self.batches.append(list(prompts))
        self.rows.append(kwargs.get("rows"))
        return [GeneratedAnswer(prompt, prompt, 1) for prompt in prompts]


def _request(prompt: str, answers: dict[str, GeneratedAnswer], done: threading.Event, expected: int):
    def on_done(result):
        answers[prompt] = result
        if len(answers) == expected:
            done.set()

    return PendingRequest(prompt, None, GenerationSettings(max_new_tokens=4), ("greedy",), [], on_done)


def test_a_burst_spread_over_more_than_one_window_is_one_batch() -> None:
    generator = RecordingGenerator()
    window = 0.1
    queue = BatchQueue(generator, max_batch_size=32, window_s=window)
    try:
        answers: dict[str, GeneratedAnswer] = {}
        warm = threading.Event()
        # Put the queue under load: one request runs while two wait, so the next batch holds two.
        queue.submit(_request("a", answers, warm, 3))
        while not queue._thread.is_alive() or len(queue) > 0:
            time.sleep(0.01)
        queue.submit(_request("b", answers, warm, 3))
        queue.submit(_request("c", answers, warm, 3))
        generator.release.set()
        assert warm.wait(10)
        assert generator.batches == [["a"], ["b", "c"]]

        # Clients answered together come back one after another: 10 requests 20 ms apart span
        # 180 ms, more than the 100 ms window, but no gap between two is as long as the window.
        burst = [f"q{index}" for index in range(10)]
        done = threading.Event()
        for prompt in burst:
            queue.submit(_request(prompt, answers, done, 3 + len(burst)))
            time.sleep(0.02)
        assert done.wait(10)
        assert generator.batches[2:] == [burst]
        assert all(answers[prompt].text == prompt for prompt in burst)  # each answer to its own request
    finally:
        queue.close()


def test_the_wait_ends_after_at_most_ten_windows() -> None:
    generator = RecordingGenerator()
    generator.release.set()
    queue = BatchQueue(generator, max_batch_size=32, window_s=0.02)
    try:
        answers: dict[str, GeneratedAnswer] = {}
        done = threading.Event()
        queue._last_batch_size = 2  # under load
        # A steady trickle (one request every 10 ms, never a full window apart) for 0.6 s: without the
        # cap it would all be one batch; with it, batches start at least every ten windows (0.2 s).
        count = 60
        for index in range(count):
            queue.submit(_request(f"r{index}", answers, done, count))
            time.sleep(0.01)
        assert done.wait(10)
        assert len(generator.batches) >= 3
        assert [p for batch in generator.batches for p in batch] == [f"r{i}" for i in range(count)]
    finally:
        queue.close()


def test_torch_threads_leave_one_cpu_to_the_http_side() -> None:
    default = ServeConfig(model="tiny")
    assert torch_threads(default, 2, {}) == 1
    assert torch_threads(default, 16, {}) == 15
    assert torch_threads(default, 1, {}) == 1
    assert torch_threads(default, None, {}) == 1
    assert torch_threads(default, 8, {"OMP_NUM_THREADS": "4"}) is None  # torch reads it itself
    assert torch_threads(ServeConfig(model="tiny", threads=3), 8, {"OMP_NUM_THREADS": "4"}) == 3


def _replying_request(prompt: str, answers: dict[str, GeneratedAnswer], done: threading.Event, expected: int):
    request = _request(prompt, answers, done, expected)
    request.reports_reply = True
    return request


def test_a_batch_waits_while_the_last_batch_answers_are_still_going_out() -> None:
    generator = RecordingGenerator()
    window = 0.1
    queue = BatchQueue(generator, max_batch_size=32, window_s=window)
    try:
        answers: dict[str, GeneratedAnswer] = {}
        first = [_replying_request(p, answers, threading.Event(), -1) for p in ("a", "b", "c")]
        queue._last_batch_size = 2  # under load, so the three are collected into one batch
        for request in first:
            queue.submit(request)
        generator.release.set()
        while len(answers) < 3:
            time.sleep(0.01)
        assert generator.batches == [["a", "b", "c"]]
        # One client is back while the other two answers have not reached their clients yet: the
        # batch keeps collecting past a window with no arrival, until those answers are out.
        done = threading.Event()
        for prompt in ("d", "e"):
            queue.submit(_request(prompt, answers, done, 5))
            time.sleep(3 * window)
        assert generator.batches == [["a", "b", "c"]]
        for request in first:
            queue.replied(request)
        assert done.wait(10)
        assert generator.batches == [["a", "b", "c"], ["d", "e"]]
    finally:
        queue.close()


def test_a_lone_request_on_an_idle_queue_starts_at_once() -> None:
    generator = RecordingGenerator()
    generator.release.set()
    queue = BatchQueue(generator, max_batch_size=32, window_s=30.0)  # a window no test would outwait
    try:
        answers: dict[str, GeneratedAnswer] = {}
        for index in range(3):
            done = threading.Event()
            queue.submit(_request(f"q{index}", answers, done, index + 1))
            assert done.wait(10), "a lone request waited for a collection window"
        assert generator.batches == [["q0"], ["q1"], ["q2"]]
    finally:
        queue.close()


class _CountingCondition(threading.Condition):
    """A condition that counts the times a waiter woke up."""

    wakeups = 0

    def wait(self, timeout=None):
        woke = super().wait(timeout)
        type(self).wakeups += 1
        return woke


def test_a_reply_does_not_wake_a_worker_that_only_waits_for_requests(monkeypatch) -> None:
    # Waking it would make it compete for the GIL and a CPU with the event loop sending that reply.
    monkeypatch.setattr(_CountingCondition, "wakeups", 0)
    monkeypatch.setattr(batching.threading, "Condition", _CountingCondition)
    generator = RecordingGenerator()
    generator.release.set()
    queue = BatchQueue(generator, max_batch_size=32, window_s=0.01)
    try:
        answers: dict[str, GeneratedAnswer] = {}
        done = threading.Event()
        request = _replying_request("a", answers, done, 1)
        queue.submit(request)
        assert done.wait(10)
        while queue._generating:  # the worker is back, waiting for the next request
            time.sleep(0.01)
        time.sleep(0.05)
        before = _CountingCondition.wakeups
        queue.replied(request)
        time.sleep(0.2)
        assert _CountingCondition.wakeups == before
        done = threading.Event()
        queue.submit(_request("b", answers, done, 2))  # and it still serves the next one
        assert done.wait(10)
    finally:
        queue.close()


def test_idle_means_nothing_waits_runs_or_is_announced_besides_the_caller() -> None:
    generator = RecordingGenerator()  # its first batch blocks until released
    queue = BatchQueue(generator, max_batch_size=32, window_s=0.01)
    try:
        assert queue.idle()
        queue.announce()
        assert queue.idle()  # the caller's own request
        queue.announce()
        assert not queue.idle()
        queue.withdraw()
        answers: dict[str, GeneratedAnswer] = {}
        done = threading.Event()
        queue.submit(_request("a", answers, done, 1), announced=True)
        while not generator.batches and len(queue) == 0 and not queue._generating:
            time.sleep(0.01)
        assert not queue.idle()  # "a" is running
        generator.release.set()
        assert done.wait(10)
        while queue._generating:
            time.sleep(0.01)
        assert queue.idle()
    finally:
        queue.close()


def test_after_a_large_batch_the_first_client_back_waits_for_more() -> None:
    generator = RecordingGenerator()
    generator.release.set()
    window = 0.1
    queue = BatchQueue(generator, max_batch_size=32, window_s=window)
    try:
        answers: dict[str, GeneratedAnswer] = {}
        queue._last_batch_size = 4  # the last batch answered four clients
        done = threading.Event()
        # The first one back is three windows ahead of the second: still one batch, because fewer
        # than half of the four were back; the third arrives after a window with no arrival.
        queue.submit(_request("a", answers, done, 3))
        time.sleep(3 * window)
        queue.submit(_request("b", answers, done, 3))
        while len(generator.batches) < 1:
            time.sleep(0.01)
        time.sleep(2 * window)
        queue.submit(_request("c", answers, done, 3))
        assert done.wait(10)
        assert generator.batches == [["a", "b"], ["c"]]
    finally:
        queue.close()


def test_token_ids_made_by_the_caller_reach_the_batch() -> None:
    generator = RecordingGenerator()  # its first batch blocks until released
    queue = BatchQueue(generator, max_batch_size=32, window_s=0.05)
    try:
        answers: dict[str, GeneratedAnswer] = {}
        done = threading.Event()
        first = _request("a", answers, done, 5)
        first.token_ids = [1, 2]
        queue.submit(first)
        while not generator.batches and not queue._generating:
            time.sleep(0.01)
        # Two batches wait behind it: one whose requests all carry their ids, one with a request without.
        with_ids = [_request(p, answers, done, 5) for p in ("b", "c")]
        with_ids[0].token_ids, with_ids[1].token_ids = [3], [4, 5, 6]
        for request in with_ids:
            queue.submit(request)
        generator.release.set()
        while len(generator.batches) < 2:
            time.sleep(0.01)
        mixed = [_request(p, answers, done, 5) for p in ("d", "e")]
        mixed[0].token_ids = [7]
        for request in mixed:
            queue.submit(request)
        assert done.wait(10)
        assert generator.batches == [["a"], ["b", "c"], ["d", "e"]]
        # A batch with a request that brought no ids leaves the tokenising to the generator.
        assert generator.rows == [[[1, 2]], [[3], [4, 5, 6]], None]
    finally:
        queue.close()
