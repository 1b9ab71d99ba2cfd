"""``exgra serve`` under load: answers/s and p50/p95 latency, dynamic batching on vs off, side by side.

Starts the real server (a subprocess on 127.0.0.1) twice on the same saved ``tiny`` model, once with
dynamic batching (``--max-batch-size 32``) and once without (``--max-batch-size 1``), both at once, and
sends the same greedy requests (demo questions with their real images as data: URLs) from 1, 8 and 32
concurrent clients. Each concurrency level runs ``--rounds`` times, on and off alternating (their order
swapped every round), so load from other processes hits both modes alike; the table shows the median
answers/s of each mode, their ratio, the spread of the per-round ratios and how many answers differ.

Two in-process references on the same inputs, measured in the same rounds between the servers' runs:
generation alone (one ``generate_prompts`` call of the largest concurrency vs that many calls of one),
the ceiling of what batching can give whatever the server does; and a bare generate call per request,
for the latency at concurrency 1. At concurrency 1 every request goes to both servers and to the bare
call in turn (in all six orders of the three, so each takes each place equally often), so a burst of
other processes' load hits all three alike.

The p95 at concurrency 1 is the 5 % tail of its latencies, so it is pooled over more requests (``--single-
requests``, each round): over 64 a round it is the 10th largest of 192, and a few requests delayed by
other processes' bursts land on one side or the other by chance (the pooled ratio moved 1.02-1.22
between runs on a shared machine); the last line also counts how many requests of each kind took over
1.5x the bare median, to show how disturbed a run was.

    python bench/serve.py [--requests 64] [--single-requests 128] [--max-tokens 32] [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.serve.helpers import data_url, running_server  # noqa: E402

_connections = threading.local()


def _post(url: str, body: dict) -> tuple[float, str]:
    """One request on this client thread's own kept-alive connection, as OpenAI's SDK (httpx) keeps one."""
    parsed = urllib.parse.urlsplit(url)
    connection = getattr(_connections, parsed.netloc, None)
    if connection is None:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
        setattr(_connections, parsed.netloc, connection)
    data = json.dumps(body).encode()
    started = time.perf_counter()
    connection.request("POST", parsed.path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
    answer = json.loads(payload)["choices"][0]["message"]["content"]
    return time.perf_counter() - started, answer


def _load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], list[str]]:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda body: _post(url, body), bodies))
    return time.perf_counter() - started, [r[0] for r in results], [r[1] for r in results]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument(
        "--single-requests", type=int, default=128, help="requests per round at concurrency 1 (its p95)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the servers and the in-process references"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each level per mode (median shown)")
    args = parser.parse_args()
    for name in ("requests", "single_requests", "max_tokens", "threads", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    torch.set_num_threads(args.threads)

    from exgra.data.records import load_vqa_records, vqa_question
    from tests.eval.helpers import build_demo, save_tiny_model

    with tempfile.TemporaryDirectory(prefix="exgra-bench-serve-") as tmp:
        root = Path(tmp)
        demo = build_demo(root / "demo", num_samples=40)
        model_dir = save_tiny_model(root / "tiny")
        records = load_vqa_records(demo.train)
        bodies = []
        for index in range(max(args.requests, args.single_requests)):
            record = records[index % len(records)]
            image = Path(demo.image_folder) / record.image
            content = [
                {"type": "text", "text": vqa_question(record)},
                {"type": "image_url", "image_url": {"url": data_url(image)}},
            ]
            bodies.append({
                "model": "tiny", "messages": [{"role": "user", "content": content}],
                "max_tokens": args.max_tokens, "temperature": 0,
            })  # fmt: skip
        env = {"OMP_NUM_THREADS": str(args.threads)}
        modes = {"on": ["--max-batch-size", "32"], "off": ["--max-batch-size", "1"]}
        runs: dict[tuple[str, int], list[tuple[float, list[float], list[str]]]] = {}
        batch_sizes: dict[int, list[int]] = {}
        with contextlib.ExitStack() as stack:
            urls = {}
            for mode, flags in modes.items():
                server_args = ["--model", str(model_dir), "--served-model-name", "tiny", *flags]
                server = stack.enter_context(
                    running_server(server_args, root / f"server-{mode}.log", env=env)
                )
                urls[mode] = server.url
                _load(f"{server.api}/chat/completions", bodies[:4], 4)  # warm-up
                _load(f"{server.api}/chat/completions", bodies[:1], 1)  # ... ending as concurrency 1 starts
            # The in-process references run in the same rounds, between the servers' runs.
            generator = _generator(model_dir, args.max_tokens)
            largest = max(args.concurrency)
            bare: list[list[float]] = []  # per round
            ceiling: list[tuple[float, float]] = []
            for concurrency in args.concurrency:
                count = args.single_requests if concurrency == 1 else max(concurrency, args.requests)
                for round_index in range(args.rounds):
                    if concurrency == 1:
                        served, round_bare = _interleaved_singles(
                            urls, generator, bodies[:count], offset=round_index
                        )
                        for mode, run in served.items():
                            runs.setdefault((mode, 1), []).append(run)
                        bare.append(round_bare)
                    else:
                        # On and off alternate which goes first, round by round.
                        for mode in list(modes) if round_index % 2 == 0 else list(modes)[::-1]:
                            url = f"{urls[mode]}/v1/chat/completions"
                            runs.setdefault((mode, concurrency), []).append(
                                _load(url, bodies[:count], concurrency)
                            )
                    if concurrency == largest:
                        ceiling.append(_generation_ceiling(generator, bodies[:largest]))
                health = json.loads(urllib.request.urlopen(f"{urls['on']}/health").read())
                batch_sizes[concurrency] = health["recent_batch_sizes"]

    print(
        f"exgra serve: tiny model, {args.requests} demo requests (real images, data: URLs), "
        f"max_tokens={args.max_tokens}, torch threads={args.threads}, cpus={os.cpu_count()}, "
        f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f}"
    )
    columns = (("conc", 4), ("batching", 8), ("answers/s", 10), ("p50 ms", 8), ("p95 ms", 8))
    columns += (("on/off", 7), ("rounds", 11), ("differ", 7))
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    for concurrency in args.concurrency:
        rates = {mode: [len(r[1]) / r[0] for r in runs[mode, concurrency]] for mode in modes}
        off_rate = statistics.median(rates["off"])
        round_ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
        off_answers = [answer for run in runs["off", concurrency] for answer in run[2]]
        for mode in modes:
            latencies = [latency for run in runs[mode, concurrency] for latency in run[1]]
            answers = [answer for run in runs[mode, concurrency] for answer in run[2]]
            rate = statistics.median(rates[mode])
            spread = f"{min(round_ratios):.2f}-{max(round_ratios):.2f}" if mode == "on" else ""
            differ = sum(a != b for a, b in zip(answers, off_answers, strict=True))
            print(
                f"{concurrency:>4} {mode:>8} {rate:>10.2f} {1000 * statistics.median(latencies):>8.1f} "
                f"{1000 * _percentile(latencies, 0.95):>8.1f} {rate / off_rate:>7.2f} {spread:>11} "
                f"{differ:>7}"
            )
    for concurrency, sizes in batch_sizes.items():
        print(f"batch sizes with batching on, up to concurrency {concurrency} (most recent last): {sizes}")
    batched = statistics.median(seconds[0] for seconds in ceiling)
    single = statistics.median(seconds[1] for seconds in ceiling)
    print(
        f"generation alone (in process, same {largest} inputs): one batch of {largest} {batched:.3f} s, "
        f"{largest} batches of 1 {single:.3f} s: {single / batched:.2f}x, the ceiling of the on/off ratio "
        f"at concurrency {largest}"
    )
    if 1 not in args.concurrency:
        return
    p95 = {mode: _percentile([x for run in runs[mode, 1] for x in run[1]], 0.95) for mode in modes}
    p50 = {mode: statistics.median([x for run in runs[mode, 1] for x in run[1]]) for mode in modes}
    round_ratios = [
        _percentile(run[1], 0.95) / _percentile(round_bare, 0.95)
        for run, round_bare in zip(runs["on", 1], bare, strict=True)
    ]
    bare = [latency for round_bare in bare for latency in round_bare]
    bare_p95, bare_p50 = _percentile(bare, 0.95), statistics.median(bare)
    slow = {
        kind: sum(latency > 1.5 * bare_p50 for latency in latencies)
        for kind, latencies in [
            *((mode, [x for run in runs[mode, 1] for x in run[1]]) for mode in modes),
            ("bare", bare),
        ]
    }
    print(
        f"bare generate (in process, same inputs, interleaved with the served requests): p50 "
        f"{1000 * bare_p50:.1f} ms, p95 {1000 * bare_p95:.1f} ms; served p95 at concurrency 1 / bare p95 = "
        f"{p95['on'] / bare_p95:.3f} (batching off: {p95['off'] / bare_p95:.3f}); p50: "
        f"{p50['on'] / bare_p50:.3f} ({p50['off'] / bare_p50:.3f}); p95 ratio per round "
        f"{min(round_ratios):.3f}-{max(round_ratios):.3f}; {len(bare)} requests each, over 1.5x the bare "
        f"median: on {slow['on']}, off {slow['off']}, bare {slow['bare']}"
    )


def _generator(model_dir: Path, max_tokens: int) -> object:
    from exgra.eval.generate import AnswerGenerator, GenerationSettings, load_inference_model

    return AnswerGenerator(load_inference_model(model_dir), settings=GenerationSettings(max_tokens))


def _inputs(generator: object, body: dict) -> tuple[str, torch.Tensor]:
    """A request body -> (prompt, pixel values), the way the server prepares it."""
    from exgra.serve.config import ServeConfig
    from exgra.serve.images import load_request_image

    text, image = body["messages"][0]["content"]
    config = ServeConfig(model="tiny")
    pixel_values = generator.preprocess([load_request_image(image["image_url"]["url"], config)])
    return generator.build_conversation_prompt([("human", text["text"])], images_per_turn=[1]), pixel_values


def _generation_ceiling(generator: object, bodies: list[dict]) -> tuple[float, float]:
    """Seconds of one batched ``generate_prompts`` call over ``bodies`` and of one call per body."""
    prompts, images = zip(*(_inputs(generator, body) for body in bodies), strict=True)
    pixel_values = torch.cat(images)
    generator.generate_prompts(list(prompts[:2]), pixel_values[:2])  # warm-up
    started = time.perf_counter()
    generator.generate_prompts(list(prompts), pixel_values)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for index, prompt in enumerate(prompts):
        generator.generate_prompts([prompt], pixel_values[index : index + 1])
    return batched, time.perf_counter() - started


def _interleaved_singles(
    urls: dict[str, str], generator: object, bodies: list[dict], offset: int = 0
) -> tuple[dict[str, tuple[float, list[float], list[str]]], list[float]]:
    """Concurrency 1: each request sent to every server and answered by a bare generate call in turn, so
    a burst of load from other processes hits all three alike. The turns go through all six orders of
    the three, request by request (starting at ``offset``), so each takes each place and follows each
    of the others equally often: which place a turn has changes its latency (the turn that comes first
    measured ~0.4 ms slower at p50 and longer in the tail, whether a server batches or not, and with
    fixed places the bare call, never first, had the advantage).

    Returns each server's (seconds, latencies, answers) and the bare calls' latencies."""
    latencies: dict[str, list[float]] = {mode: [] for mode in urls}
    answers: dict[str, list[str]] = {mode: [] for mode in urls}
    bare: list[float] = []
    _bare_latencies(generator, bodies[:1])  # warm after the previous level
    orders = list(itertools.permutations([*urls, "bare"]))
    for index, body in enumerate(bodies):
        for turn in orders[(index + offset) % len(orders)]:
            if turn == "bare":
                bare += _bare_latencies(generator, [body], warm_up=False)
                continue
            latency, answer = _post(f"{urls[turn]}/v1/chat/completions", body)
            latencies[turn].append(latency)
            answers[turn].append(answer)
    return {mode: (sum(latencies[mode]), latencies[mode], answers[mode]) for mode in urls}, bare


def _bare_latencies(generator: object, bodies: list[dict], warm_up: bool = True) -> list[float]:
    """One generate call per request through the generation path, no HTTP, no queue."""
    latencies = []
    for body in [bodies[0], *bodies] if warm_up else bodies:  # the first is a warm-up
        started = time.perf_counter()
        prompt, pixel_values = _inputs(generator, body)
        generator.generate_prompts([prompt], pixel_values)
        latencies.append(time.perf_counter() - started)
    return latencies[1:] if warm_up else latencies


if __name__ == "__main__":
    main()
