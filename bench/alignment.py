"""Benchmark the alignment solver and loss; prints one table (quality and speed side by side).

Run: ``pip install -e ".[bench]" && python bench/alignment.py`` (scipy's HiGHS MILP is the exact reference
for n = 8–32; ``--milp-cache FILE`` keeps its results between runs). "ours" = the shipped defaults (solver
``search="iterated"``, full blackbox gradient); "today" = before issue #10: ``search="plain"`` (the local
search from the greedy starts only, the earlier solver's algorithm) with the unary-only gradient, measured
in the same run. Instances come from exgra's own pipeline (``tests.alignment.instances.pipeline_problem``:
random features -> knn_graph k = 5 -> random-weight GraphEncoder -> matching_costs), forward costs with
and without Gumbel noise and the blackbox backward's perturbed costs ``C + λ·g``.
"""

from __future__ import annotations

import argparse
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
    hamming_loss,  # noqa: E402
)
from exgra.alignment.solver import _solve_and_keep, matching_objective  # noqa: E402
from tests.alignment.instances import brute_force, pipeline_problem  # noqa: E402

SETTINGS = (("gumbel", True, False), ("no noise", False, False), ("perturbed", True, True))


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median wall time in milliseconds."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def solve(problem: tuple[torch.Tensor, ...], search: str = "iterated") -> tuple[float, bool]:
    matching, _, certified = _solve_and_keep(*problem, search=search)
    return float(matching_objective(matching, *problem)), bool(certified)


def instances(nodes: int, seeds: range, offset: int = 0) -> Iterator[tuple[str, tuple[torch.Tensor, ...]]]:
    """Pipeline problems for every seed and setting; feature noise 0.5 / 1 / 2 by seed (high to low)."""
    for seed in seeds:
        for _, gumbel, perturbed in SETTINGS:
            noise = (0.5, 1.0, 2.0)[seed % 3]
            key = f"{nodes}-{seed}-{gumbel}-{perturbed}"
            problem = pipeline_problem(nodes, offset + seed, noise=noise, gumbel=gumbel, perturbed=perturbed)
            yield key, problem


def step_backward(problem: tuple[torch.Tensor, ...], edge_gradient: bool, pairs: int, search: str) -> None:
    """One blackbox forward + backward of the mean Hamming loss (the training step's gradient)."""
    unary, quadratic = (tensor.clone().requires_grad_(True) for tensor in problem[:2])
    nodes = unary.shape[-1]
    matching = blackbox_matching(
        unary,
        quadratic,
        *problem[2:],
        80.0,
        gradient_norm=1 / (pairs * nodes),
        edge_gradient=edge_gradient,
        search=search,
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
            today, _ = solve(problem, "plain")
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
            today, _ = solve(problem, "plain")
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
            today, _ = solve(problem, "plain")
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
        times = {}
        for edge_gradient, search in ((True, "iterated"), (True, "plain"), (False, "plain")):
            times[edge_gradient, search] = timed(
                lambda p=problem, n=pairs, e=edge_gradient, s=search: step_backward(p, e, n, s), repeats
            )
        rows.append(
            (
                f"time {label}",
                f"{times[True, 'iterated']:.1f} ms",
                f"{times[False, 'plain']:.1f} ms",
                f"full gradient with search=plain: {times[True, 'plain']:.1f} ms",
            )
        )
    features = {name: torch.randn(16, 256) for name in ("image", "response", "caption")}
    full = {}
    for edge_gradient, search in ((True, "iterated"), (True, "plain"), (False, "plain")):
        torch.manual_seed(0)
        config = AlignmentConfig(edge_gradient=edge_gradient, solver_search=search)
        module = MultiGraphAlignment(config, feature_dim=256).train()
        inputs = {name: tensor.clone().requires_grad_(True) for name, tensor in features.items()}
        full[edge_gradient, search] = timed(lambda m=module, x=inputs: m(x).loss.backward(), 15)
    rows.append(
        (
            "time full loss fwd+bwd (6 matchings + GNN, D=256, B=16)",
            f"{full[True, 'iterated']:.1f} ms",
            f"{full[False, 'plain']:.1f} ms",
            f"full gradient with search=plain: {full[True, 'plain']:.1f} ms",
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
