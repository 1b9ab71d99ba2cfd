"""``exgra serve`` under load: answers/s and p50/p95 latency, dynamic batching on vs off, side by side.

Starts the real server (a subprocess on 127.0.0.1) twice on the same saved ``tiny`` model, once with
dynamic batching (``--max-batch-size 32``) and once without (``--max-batch-size 1``), sends the same
greedy requests (demo questions with their real images as data: URLs) from 1, 8 and 32 concurrent
clients, and prints both rows per concurrency, their throughput ratio and how many answers differ.
The last line compares single-request latency with a bare in-process generate call on the same input.

    python bench/serve.py [--requests 32] [--max-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.serve.helpers import data_url, running_server  # noqa: E402


def _post(url: str, body: dict) -> tuple[float, str]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())["choices"][0]["message"]["content"]
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
    parser.add_argument(
        "--requests", type=int, default=64, help="requests per concurrency level (c=1: a quarter)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the server and the bare call"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from exgra.data.records import load_vqa_records, vqa_question
    from tests.eval.test_generate import build_demo, save_tiny_model

    with tempfile.TemporaryDirectory(prefix="exgra-bench-serve-") as tmp:
        root = Path(tmp)
        demo = build_demo(root / "demo", num_samples=40)
        model_dir = save_tiny_model(root / "tiny")
        records = load_vqa_records(demo.train)
        bodies = []
        for index in range(args.requests):
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
        results: dict[tuple[str, int], tuple[float, list[float], list[str]]] = {}
        batch_sizes: dict[int, list[int]] = {}
        for mode, flags in modes.items():
            server_args = ["--model", str(model_dir), "--served-model-name", "tiny", *flags]
            with running_server(server_args, root / f"server-{mode}.log", env=env) as server:
                url = f"{server.api}/chat/completions"
                _load(url, bodies[:4], 4)  # warm-up
                for concurrency in args.concurrency:
                    count = max(concurrency, args.requests // 4) if concurrency == 1 else args.requests
                    results[mode, concurrency] = _load(url, bodies[:count], concurrency)
                    if mode == "on":
                        health = json.loads(urllib.request.urlopen(f"{server.url}/health").read())
                        batch_sizes[concurrency] = health["recent_batch_sizes"]

        bare = _bare_latencies(model_dir, bodies[: max(1, args.requests // 4)], args.max_tokens)

    print(
        f"exgra serve: tiny model, {args.requests} demo requests (real images, data: URLs), "
        f"max_tokens={args.max_tokens}, torch threads={args.threads}, cpus={os.cpu_count()}"
    )
    columns = (("conc", 4), ("batching", 8), ("answers/s", 10), ("p50 ms", 8), ("p95 ms", 8))
    header = " ".join(f"{name:>{width}}" for name, width in (*columns, ("on/off", 7), ("differ", 7)))
    print(header)
    print("-" * len(header))
    for concurrency in args.concurrency:
        off_wall, _, off_answers = results["off", concurrency]
        for mode in ("on", "off"):
            wall, latencies, answers = results[mode, concurrency]
            rate = len(latencies) / wall
            ratio = rate / (len(off_answers) / off_wall)
            differ = sum(a != b for a, b in zip(answers, off_answers, strict=True))
            print(
                f"{concurrency:>4} {mode:>8} {rate:>10.2f} {1000 * statistics.median(latencies):>8.1f} "
                f"{1000 * _percentile(latencies, 0.95):>8.1f} {ratio:>7.2f} {differ:>7}"
            )
    for concurrency, sizes in batch_sizes.items():
        print(f"batch sizes with batching on, up to concurrency {concurrency} (most recent last): {sizes}")
    on_p95 = _percentile(results["on", 1][1], 0.95)
    print(
        f"bare generate (in process, same inputs): p50 {1000 * statistics.median(bare):.1f} ms, "
        f"p95 {1000 * _percentile(bare, 0.95):.1f} ms; served p95 at concurrency 1 / bare p95 = "
        f"{on_p95 / _percentile(bare, 0.95):.3f}"
    )


def _bare_latencies(model_dir: Path, bodies: list[dict], max_tokens: int) -> list[float]:
    """One generate call per request through the generation path, no HTTP, no queue."""
    from exgra.eval.generate import AnswerGenerator, GenerationSettings, load_inference_model
    from exgra.serve.config import ServeConfig
    from exgra.serve.images import load_request_image

    generator = AnswerGenerator(load_inference_model(model_dir), settings=GenerationSettings(max_tokens))
    config = ServeConfig(model=str(model_dir))
    latencies = []
    for body in [bodies[0], *bodies]:  # the first is a warm-up
        text, image = body["messages"][0]["content"]
        started = time.perf_counter()
        pixel_values = generator.preprocess([load_request_image(image["image_url"]["url"], config)])
        prompt = generator.build_conversation_prompt([("human", text["text"])], images_per_turn=[1])
        generator.generate_prompts([prompt], pixel_values)
        latencies.append(time.perf_counter() - started)
    return latencies[1:]


if __name__ == "__main__":
    main()
