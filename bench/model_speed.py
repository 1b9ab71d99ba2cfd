"""Build time of the offline registry entries and one forward + backward, side by side in one run.

Run from the repository root:  python bench/model_speed.py [--repeats 3] [--threads 1]

The timings moved here from tests/models/test_model.py (a test asserts behaviour, not speed). Each
row is the median of ``--repeats``; the last column is relative to ``tiny`` measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _build_seconds(name: str) -> tuple[float, object]:
    from exgra.models import create_model

    start = time.perf_counter()
    bundle = create_model(name)
    return time.perf_counter() - start, bundle


def _step_seconds(bundle: object, batch: int, length: int) -> float:
    model = bundle.model.train()
    ids = torch.randint(10, 1000, (batch, length))
    ids[:, 1 : 1 + bundle.num_image_tokens] = model.image_token_id
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, size, size)
    model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss.backward()  # warm-up
    model.zero_grad()
    start = time.perf_counter()
    model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "tiny-dci", "small"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # pinned: 2 shared cores collapse with one thread per core

    rows = []
    for name in args.models:
        builds, steps = [], []
        for _ in range(args.repeats):
            seconds, bundle = _build_seconds(name)
            builds.append(seconds)
            steps.append(_step_seconds(bundle, args.batch, args.length))
        rows.append((name, statistics.median(builds), statistics.median(steps)))
    base_build, base_step = rows[0][1], rows[0][2]
    print(f"{'model':<10} {'build s':>9} {'fwd+bwd s':>10} {'build ×':>8} {'fwd+bwd ×':>10}")
    for name, build, step in rows:
        print(f"{name:<10} {build:>9.3f} {step:>10.3f} {build / base_build:>8.2f} {step / base_step:>10.2f}")


if __name__ == "__main__":
    main()
