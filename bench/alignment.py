"""Benchmark the alignment solver and loss; prints one table (quality and speed side by side).

Run: ``pip install -e ".[bench]" && python bench/alignment.py`` (scipy's HiGHS MILP is the exact reference
for n = 8–32; ``--milp-cache FILE`` keeps its results between runs). "ours" = the shipped solver and full
blackbox gradient; "today" = the solver before issue #10 (plain local search from the greedy starts,
i.e. ours with the extra starts and kick rounds switched off) with the unary-only gradient, measured in
the same run. Instances come from exgra's own pipeline (``tests.alignment.instances.pipeline_problem``:
random features -> knn_graph k = 5 -> random-weight GraphEncoder -> matching_costs), forward costs with
and without Gumbel noise and the blackbox backward's perturbed costs ``C + λ·g``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exgra.alignment import (  # noqa: E402
    AlignmentConfig,
    MultiGraphAlignment,
    blackbox_matching,
    hamming_loss,
    solver,  # noqa: E402
)
from exgra.alignment.solver import _solve_and_keep, matching_objective  # noqa: E402
from tests.alignment.instances import brute_force, pipeline_problem  # noqa: E402

SETTINGS = (("gumbel", True, False), ("no noise", False, False), ("perturbed", True, True))


@contextlib.contextmanager
def todays_solver() -> Iterator[None]:
    """The solver as it was before issue #10: no pseudo-random starts, no kick rounds."""
    saved = solver._RANDOM_STARTS, solver._KICK_ROUNDS
    solver._RANDOM_STARTS, solver._KICK_ROUNDS = 0, 0
    try:
        yield
    finally:
        solver._RANDOM_STARTS, solver._KICK_ROUNDS = saved


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median wall time in milliseconds."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def solve(problem: tuple[torch.Tensor, ...]) -> tuple[float, bool]:
    matching, _, certified = _solve_and_keep(*problem)
    return float(matching_objective(matching, *problem)), bool(certified)


def instances(nodes: int, seeds: range, offset: int = 0) -> Iterator[tuple[str, tuple[torch.Tensor, ...]]]:
    """Pipeline problems for every seed and setting; feature noise 0.5 / 1 / 2 by seed (high to low)."""
    for seed in seeds:
        for _, gumbel, perturbed in SETTINGS:
            noise = (0.5, 1.0, 2.0)[seed % 3]
            key = f"{nodes}-{seed}-{gumbel}-{perturbed}"
            problem = pipeline_problem(nodes, offset + seed, noise=noise, gumbel=gumbel, perturbed=perturbed)
            yield key, problem


def step_backward(problem: tuple[torch.Tensor, ...], edge_gradient: bool, pairs: int) -> None:
    """One blackbox forward + backward of the mean Hamming loss (the training step's gradient)."""
    unary, quadratic = (tensor.clone().requires_grad_(True) for tensor in problem[:2])
    nodes = unary.shape[-1]
    matching = blackbox_matching(
        unary, quadratic, *problem[2:], 80.0, gradient_norm=1 / (pairs * nodes), edge_gradient=edge_gradient
    )
    hamming_loss(matching).mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # One thread by default: on a shared 2-core machine, two intra-op threads on tiny tensors mostly wait.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--small", type=int, default=120, help="seeds at n = 5..7 (3 settings each)")
    parser.add_argument("--medium", type=int, default=8, help="seeds per n in 8..32 (3 settings each)")
    parser.add_argument("--milp-seconds", type=float, default=30.0, help="MILP time limit per problem")
    parser.add_argument("--milp-cache", type=Path, default=None, help="JSON file keeping MILP results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[tuple[str, ...]] = []
    header = ("case", "ours", "today", "note")

    # n = 5..7 against brute force.
    counts = {"ours": 0, "today": 0, "certified": 0}
    total = 0
    for seed in range(args.small):
        for _, problem in instances(5 + seed % 3, range(seed, seed + 1)):
            best = brute_force(*problem)
            value, certified = solve(problem)
            with todays_solver():
                today, _ = solve(problem)
            counts["ours"] += value <= best + 1e-4
            counts["today"] += today <= best + 1e-4
            counts["certified"] += certified
            total += 1
    rows.append(
        (
            f"optimal, n=5..7 ({total} pipeline problems, brute force)",
            f"{counts['ours'] / total:.1%}",
            f"{counts['today'] / total:.1%}",
            f"certified by the bound: {counts['certified'] / total:.1%}",
        )
    )

    # n = 8..32 against the MILP.
    from tests.alignment.exact import milp_optimum

    cache = {}
    if args.milp_cache is not None and args.milp_cache.exists():
        cache = json.loads(args.milp_cache.read_text())
    for nodes in (8, 12, 16, 24, 32):
        hit = {"ours": 0, "today": 0}
        worst = {"ours": 0.0, "today": 0.0}
        proven = certified_count = total = 0
        for key, problem in instances(nodes, range(args.medium), offset=100):
            if key not in cache:
                cache[key] = milp_optimum(*problem, time_limit=args.milp_seconds)
                if args.milp_cache is not None:
                    args.milp_cache.write_text(json.dumps(cache))
            optimum, _, is_proven = cache[key]
            value, certified = solve(problem)
            with todays_solver():
                today, _ = solve(problem)
            for name, found in (("ours", value), ("today", today)):
                hit[name] += found <= optimum + 1e-4
                worst[name] = max(worst[name], (found - optimum) / abs(optimum) * 100)
            proven += is_proven
            certified_count += certified
            total += 1
        rows.append(
            (
                f"≤ MILP best, n={nodes} ({total} problems); worst gap",
                f"{hit['ours'] / total:.1%}; {worst['ours']:+.2f}%",
                f"{hit['today'] / total:.1%}; {worst['today']:+.2f}%",
                f"MILP proven {proven}/{total} ({args.milp_seconds:.0f} s); ours certified {certified_count}",
            )
        )

    # n = 64..256: never worse than today's solver.
    for nodes in (64, 128, 256):
        worse = better = total = 0
        gains = []
        for _, problem in instances(nodes, range(200, 203 if nodes < 256 else 201)):
            value, _ = solve(problem)
            with todays_solver():
                today, _ = solve(problem)
            worse += value > today + 1e-4
            better += value < today - 1e-4
            gains.append((today - value) / abs(today) * 100)
            total += 1
        rows.append(
            (
                f"vs today, n={nodes} ({total} problems): worse / better",
                f"{worse} / {better} (mean gain {statistics.mean(gains):.2f}%)",
                "(reference)",
                "",
            )
        )

    # Speed: ours (full gradient) vs today (plain search, unary-only gradient).
    step = [
        torch.stack(parts)
        for parts in zip(
            *(pipeline_problem(16, s, noise=(0.5, 1.0, 2.0)[s % 3]) for s in range(6)), strict=True
        )
    ]
    cases = [("one step's alignment: 6 matchings n=16, fwd+bwd", step, 6, 15)]
    cases += [
        (f"one matching n={n}, fwd+bwd", pipeline_problem(n, 7), 1, 9 if n < 256 else 2) for n in (64, 256)
    ]
    for label, problem, pairs, repeats in cases:
        ours = timed(lambda problem=problem, pairs=pairs: step_backward(problem, True, pairs), repeats)
        with todays_solver():
            today = timed(lambda problem=problem, pairs=pairs: step_backward(problem, False, pairs), repeats)
        rows.append((f"time {label}", f"{ours:.1f} ms", f"{today:.1f} ms", ""))
    features = {name: torch.randn(16, 256) for name in ("image", "response", "caption")}
    for edge_gradient, label in ((True, "ours"), (False, "today")):
        torch.manual_seed(0)
        module = MultiGraphAlignment(AlignmentConfig(edge_gradient=edge_gradient), feature_dim=256).train()
        inputs = {name: tensor.clone().requires_grad_(True) for name, tensor in features.items()}
        if label == "ours":
            full = timed(lambda module=module, inputs=inputs: module(inputs).loss.backward(), 15)
        else:
            with todays_solver():
                full_today = timed(lambda module=module, inputs=inputs: module(inputs).loss.backward(), 15)
    rows.append(
        (
            "time full loss fwd+bwd (6 matchings + GNN, D=256, B=16)",
            f"{full:.1f} ms",
            f"{full_today:.1f} ms",
            "",
        )
    )

    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
