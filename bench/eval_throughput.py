"""Answers per second of ``exgra eval`` (run_vqa_eval) at batch size 1 and 16, side by side.

Runs the real library function end to end (model load, image loading and preprocessing, prompt
building, generation, JSONL writing) with the random ``tiny`` model on the real medical images of
the demo dataset (exgra.data.demo_data), once per batch size, in the same process, and prints
answers/s, their ratio, the generate-only ratio next to stock ``generate``'s ratio on the same inputs,
the absolute generate seconds of both (stock runs every row to ``max_new_tokens``; exgra stops a row at
the template's stop string, which helps batch 1 more than batch 16, so compare seconds as well as
ratios) and how many greedy answers differ.

    python bench/eval_throughput.py [--questions 64] [--max-new-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per batch size (best is reported)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from exgra.data.demo_data import build_demo_dataset
    from exgra.eval.vqa import VQAEvalConfig, read_jsonl, run_vqa_eval
    from exgra.models import create_model

    with tempfile.TemporaryDirectory(prefix="exgra-bench-") as tmp:
        root = Path(tmp)
        demo = build_demo_dataset(root / "demo", num_samples=max(20, args.questions * 2))
        torch.manual_seed(0)
        create_model("tiny").save(root / "model")
        results = {}
        for batch_size in args.batch_sizes:
            best = None
            for repeat in range(args.repeats):
                output = root / f"answers-bs{batch_size}-{repeat}.jsonl"
                config = VQAEvalConfig(
                    model=root / "model",
                    data=demo.train,
                    images=demo.image_folder,
                    output=output,
                    batch_size=batch_size,
                    max_new_tokens=args.max_new_tokens,
                    limit=args.questions,
                    score=False,
                    progress=False,
                )
                started = time.perf_counter()
                result = run_vqa_eval(config)
                seconds = time.perf_counter() - started
                if best is None or seconds < best[0]:
                    best = (seconds, result.timings["generate_s"], read_jsonl(output))
            results[batch_size] = best

        stock = _stock_generate_seconds(root / "model", demo, args)
        base_size = args.batch_sizes[0]
        base_seconds, base_generate, base_answers = results[base_size]
        count = len(base_answers)
        print(
            f"exgra eval throughput: tiny model, {count} demo questions (real images), "
            f"max_new_tokens={args.max_new_tokens}, torch threads={torch.get_num_threads()}"
        )
        columns = ("batch", 5), ("seconds", 8), ("answers/s", 10), ("ratio", 6), ("gen-only ratio", 15)
        columns += ("stock ratio", 12), ("gen s", 7), ("stock s", 8), ("differ", 7)
        header = " ".join(f"{name:>{width}}" for name, width in columns)
        print(header)
        print("-" * len(header))
        for batch_size, (seconds, generate_s, answers) in results.items():
            differ = sum(a["text"] != b["text"] for a, b in zip(base_answers, answers, strict=True))
            print(
                f"{batch_size:>5} {seconds:>8.2f} {count / seconds:>10.2f} {base_seconds / seconds:>6.2f} "
                f"{base_generate / generate_s:>15.2f} {stock[base_size] / stock[batch_size]:>12.2f} "
                f"{generate_s:>7.2f} {stock[batch_size]:>8.2f} {differ:>7}"
            )


def _stock_generate_seconds(model_dir: Path, demo: object, args: argparse.Namespace) -> dict[int, float]:
    """Baseline: plain ``model.generate`` on inputs tokenised and preprocessed beforehand (best of 2).

    The rows go in the order ``run_vqa_eval`` answers them (sorted by prompt length) and each batch is
    tokenised on its own, so both sides generate from the same tensors, padding included. (Padding every
    row to the longest of all prompts, as this baseline once did, made stock's batch-1 calls ~15% slower
    than generating the same rows unpadded, and so inflated its ratio.)
    """
    from exgra.data.records import load_image, load_vqa_records, vqa_question
    from exgra.eval.generate import AnswerGenerator, load_inference_model

    generator = AnswerGenerator(load_inference_model(model_dir))
    records = load_vqa_records(demo.train)[: args.questions]
    prompts = [generator.build_prompt(vqa_question(r)) for r in records]
    lengths = generator.prompt_lengths([vqa_question(r) for r in records])
    order = sorted(range(len(records)), key=lambda i: (lengths[i], i))
    prompts = [prompts[i] for i in order]
    pixel_values = generator.preprocess([load_image(demo.image_folder, records[i].image) for i in order])
    seconds = {}
    for batch_size in args.batch_sizes:
        batches = [
            (generator.encode(prompts[start : start + batch_size]), slice(start, start + batch_size))
            for start in range(0, len(prompts), batch_size)
        ]
        runs = []
        for _ in range(2):
            started = time.perf_counter()
            for inputs, rows in batches:
                generator.model.generate(
                    **inputs,
                    pixel_values=pixel_values[rows],
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                )
            runs.append(time.perf_counter() - started)
        seconds[batch_size] = min(runs)
    return seconds


if __name__ == "__main__":
    main()
