"""Stage-2 step time: alignment off, on (reference: two text passes), on (packed: one text pass).

Run from the repository root:  python bench/train_step.py [--models tiny tiny-qwen2.5-vl ...] [--batch 8]

One row per model; the tiny entries of every family (Qwen2.5-VL, Qwen3-VL, Gemma 3, SmolVLM, LLaVA with
Mistral + SigLIP) run through their family adapter exactly as training does.

Everything is measured side by side in one run on the same batch (real optimizer step: forward,
backward, AdamW); the three variants take turns step by step. "align share" is the time of the
alignment module's forward + backward (on the
pooled features) divided by the reference step time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _records(folder: Path, count: int) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        name = f"img_{index}.png"
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / name)
        answer = " ".join(["finding"] * (8 + index % 5))
        records.append(
            {
                "id": str(index),
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": answer},
                ],
                "conversations_long": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": answer + " with a much longer extended caption " * 3},
                ],
            }
        )
    return records


def _batch(bundle, batch_size: int) -> dict:
    from exgra.data.collate import TrainingCollator
    from exgra.data.datasets import SupervisedDataset
    from exgra.data.records import PretrainRecord

    folder = Path(tempfile.mkdtemp(prefix="exgra-bench-"))
    records = [PretrainRecord.model_validate(r) for r in _records(folder, batch_size)]
    family = bundle.family
    dataset = SupervisedDataset(
        records, folder, bundle.tokenizer, None, None, 0, 1024, alignment_texts=True,
        encoder=family.sample_encoder(bundle, 1024),
    )  # fmt: skip
    collator = TrainingCollator(bundle.tokenizer.pad_token_id, family.collate_vision)
    return collator([dataset[i] for i in range(batch_size)])


def _time_steps(modules: dict[str, torch.nn.Module], batch: dict, steps: int) -> dict[str, float]:
    """Median step time of each variant; variants take turns step by step so load changes hit all alike."""
    optimizers = {
        name: torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
        for name, module in modules.items()
    }
    times: dict[str, list[float]] = {name: [] for name in modules}
    for index in range(steps + 2):
        for name, module in modules.items():
            start = time.perf_counter()
            losses = module(batch)
            losses["loss"].backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if index >= 2:  # warm-up steps are not counted
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _time_alignment(alignment, dim: int, batch_size: int, steps: int) -> float:
    times = []
    for index in range(steps + 2):
        features = {
            k: torch.randn(batch_size, dim, requires_grad=True) for k in ("image", "response", "caption")
        }
        start = time.perf_counter()
        alignment(features).loss.backward()
        if index >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=[
            "tiny",
            "small",
            "tiny-qwen2.5-vl",
            "tiny-qwen3-vl",
            "tiny-gemma3",
            "tiny-smolvlm",
            "tiny-llava-siglip",
        ],
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    from exgra.alignment import AlignmentConfig, MultiGraphAlignment
    from exgra.models import create_model
    from exgra.training.stages import apply_stage
    from exgra.training.steps import TrainingModule

    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, median of {args.steps} steps"
    )
    header = (
        f"{'model':<18} {'family':<11} {'params':>8} {'align off':>10} {'on (ref)':>10} {'on (packed)':>12} "
        f"{'packed/ref':>10} {'align share':>12}"
    )
    print(header)
    print("-" * len(header))
    for name in args.models:
        bundle = create_model(name)
        model = bundle.model
        family = bundle.family
        apply_stage(model, "stage2", group_of=family.parameter_group)
        dim = family.hidden_size(model)
        alignment = MultiGraphAlignment(AlignmentConfig(), feature_dim=dim)
        batch = _batch(bundle, args.batch)
        pad = bundle.tokenizer.pad_token_id
        # The variants share the weights (each step also updates them): only the passes differ.
        variants = {
            "off": TrainingModule(model, None, pad_token_id=pad, family=family),
            "ref": TrainingModule(model, alignment, pad_token_id=pad, family=family),
            "packed": TrainingModule(
                model, alignment, pack_text_passes=True, pad_token_id=pad, family=family
            ),
        }
        timings = _time_steps(variants, batch, args.steps)
        off, ref, packed = timings["off"], timings["ref"], timings["packed"]
        align = _time_alignment(alignment, dim, args.batch, args.steps)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"{name:<18} {family.name:<11} {params:>7.1f}M {off:>9.3f}s {ref:>9.3f}s {packed:>11.3f}s "
            f"{packed / ref:>10.2f} "
            f"{align / ref:>11.0%}"
        )


if __name__ == "__main__":
    main()
