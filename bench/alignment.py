"""Benchmark the alignment solver and loss; prints one table (quality and speed side by side).

Run: ``python bench/alignment.py`` (about 2–4 minutes on 2 CPU cores). Baselines measured in the same
run: the previous solver (``tests/alignment/baseline_solver.py``, frozen), brute force (n ≤ 7), a slow
strong reference (multi-restart local search: a numpy first-improvement search for n ≤ 32 and 24 random
restarts of the previous solver's local search, so independent of the current solver's code), vertex-only
Hungarian with dummy nodes (scipy, optional) and pygmtools RRWM + Hungarian on the dense affinity matrix
(optional).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exgra.alignment import AlignmentConfig, MultiGraphAlignment, blackbox_matching, hamming_loss  # noqa: E402
from exgra.alignment.solver import matching_objective, solve_matching  # noqa: E402
from tests.alignment import baseline_solver  # noqa: E402
from tests.alignment.instances import (  # noqa: E402
    brute_force,
    multi_restart_local_search,
    reference_like_problem,
)

try:
    from scipy.optimize import linear_sum_assignment
except ImportError:  # scipy is optional here
    linear_sum_assignment = None
try:
    import pygmtools

    pygmtools.BACKEND = "pytorch"
except ImportError:
    pygmtools = None


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median wall time in milliseconds."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def hungarian_vertex_only(unary: torch.Tensor) -> torch.Tensor:
    """Partial assignment on unary costs only: dummy rows/columns at cost 0 allow leaving nodes unmatched."""
    n1, n2 = unary.shape
    big = torch.zeros(n1 + n2, n2 + n1, dtype=torch.float64)
    big[:n1, :n2] = unary.double()
    big[:n1, n2:] = float("inf")
    big[:n1, n2:].diagonal().fill_(0.0)
    big[n1:, :n2] = float("inf")
    big[n1:, :n2].diagonal().fill_(0.0)
    rows, cols = linear_sum_assignment(big.numpy())
    matching = torch.zeros(n1, n2)
    for row, col in zip(rows, cols, strict=True):
        if row < n1 and col < n2:
            matching[row, col] = 1.0
    return matching


def dense_affinity(
    unary: torch.Tensor, quad: torch.Tensor, left: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """pygmtools' (n1·n2)² affinity (column-major vec(X)), affinity = -cost."""
    n1, n2 = unary.shape
    affinity = torch.zeros(n1 * n2, n1 * n2)
    index = torch.arange(n1 * n2)
    affinity[index, index] = -unary.t().reshape(-1)
    rows = (right[0][None, :] * n1 + left[0][:, None]).reshape(-1)
    cols = (right[1][None, :] * n1 + left[1][:, None]).reshape(-1)
    affinity.index_put_((rows, cols), -quad.reshape(-1), accumulate=True)
    return affinity


def pygm_rrwm(unary, quad, left, right) -> torch.Tensor:
    n1, n2 = unary.shape
    affinity = dense_affinity(unary, quad, left, right)[None]
    soft = pygmtools.rrwm(affinity, torch.tensor([n1]), torch.tensor([n2]))
    return pygmtools.hungarian(soft)[0]


def strong_reference(unary, quad, left, right, restarts: int = 24) -> float:
    """24 random partial starts of the previous solver's local search (deterministic seed), best objective."""
    u, q, a, b, _ = baseline_solver._as_batch(unary, quad, left, right)
    problem = baseline_solver._Problem(u, q, a, b)
    n1, n2 = unary.shape
    generator = torch.Generator().manual_seed(0)
    starts = torch.stack([torch.randperm(n2, generator=generator)[:n1] for _ in range(restarts)])
    starts = torch.where(torch.rand(restarts, n1, generator=generator) < 0.3, n2, starts)[None]
    sigma = baseline_solver._local_search(problem, starts, 1e-6)
    return float(baseline_solver._objective_of(problem, sigma).min())


def solve_and_backward(unary, quad, left, right) -> None:
    costs = unary.clone().requires_grad_(True)
    hamming_loss(
        blackbox_matching(costs, quad, left, right, 80.0, gradient_norm=1 / unary.shape[-1])
    ).sum().backward()


def previous_solve_and_backward(unary, quad, left, right) -> None:
    """What the previous blackbox did: a solve, then a warm-started solve on the perturbed costs."""
    matching = baseline_solver.solve_matching(unary, quad, left, right)
    nodes = unary.shape[-1]
    grad = (1 - 2 * torch.eye(nodes)) / nodes
    baseline_solver.solve_matching(unary + 80.0 * grad, quad, left, right, warm_start=matching)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # One thread by default: on a shared 2-core machine, two intra-op threads on tiny tensors mostly wait.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    torch.set_num_threads(parser.parse_args().threads)
    rows: list[tuple[str, ...]] = []
    header = ("case", "ours", "previous solver", "slow strong ref", "vertex-only Hungarian", "pygmtools RRWM")

    # Quality on small instances against brute force.
    counts = {"ours": 0, "prev": 0, "ref": 0, "hung": 0, "rrwm": 0}
    total = 100
    for seed in range(total):
        problem = reference_like_problem(5 + seed % 3, seed, noise=0.5 + (seed % 4) * 0.5)
        best = brute_force(*problem)

        def hit(matching: torch.Tensor, problem=problem, best=best) -> bool:
            return float(matching_objective(matching, *problem)) <= best + 1e-4

        counts["ours"] += hit(solve_matching(*problem))
        counts["prev"] += hit(baseline_solver.solve_matching(*problem))
        counts["ref"] += multi_restart_local_search(*problem, restarts=5) <= best + 1e-4
        if linear_sum_assignment is not None:
            counts["hung"] += hit(hungarian_vertex_only(problem[0]))
        if pygmtools is not None:
            counts["rrwm"] += hit(pygm_rrwm(*problem))
    rows.append(
        (
            "optimal on n=5..7 (brute force, 100 inst.)",
            f"{counts['ours']}%",
            f"{counts['prev']}%",
            f"{counts['ref']}%",
            f"{counts['hung']}%" if linear_sum_assignment else "n/a",
            f"{counts['rrwm']}%" if pygmtools else "n/a",
        )
    )

    # Quality on larger instances: worst gap to the strong reference (negative = ours better).
    for nodes in (32, 64, 128, 256):
        gaps, prev_gaps, hung_gaps = [], [], []
        instances = 5 if nodes <= 64 else 3
        for seed in range(instances):
            problem = reference_like_problem(nodes, 1000 + seed, dim=64, noise=1.0 + seed % 2)
            ours = float(matching_objective(solve_matching(*problem), *problem))
            reference = strong_reference(*problem)
            if nodes == 32:
                reference = min(reference, multi_restart_local_search(*problem, restarts=2))
            gaps.append((ours - reference) / abs(reference) * 100)
            previous = float(matching_objective(baseline_solver.solve_matching(*problem), *problem))
            prev_gaps.append((previous - reference) / abs(reference) * 100)
            if linear_sum_assignment is not None:
                hungarian = float(matching_objective(hungarian_vertex_only(problem[0]), *problem))
                hung_gaps.append((hungarian - reference) / abs(reference) * 100)
        rows.append(
            (
                f"worst objective gap to ref, n={nodes} ({instances} inst.)",
                f"{max(gaps):+.2f}%",
                f"{max(prev_gaps):+.2f}%",
                "0 (by def.)",
                f"{max(hung_gaps):+.1f}%" if hung_gaps else "n/a",
                "n/a (dense K too large)" if nodes > 64 else "complete matchings only",
            )
        )

    # Speed.
    for nodes in (16, 64, 256):
        problem = reference_like_problem(nodes, 7, dim=64)
        repeats = 30 if nodes < 256 else 3
        ours = timed(lambda problem=problem: solve_and_backward(*problem), repeats)
        previous = timed(lambda problem=problem: previous_solve_and_backward(*problem), repeats)
        reference = timed(lambda problem=problem: strong_reference(*problem), max(1, repeats // 10))
        hung = (
            f"{timed(lambda problem=problem: hungarian_vertex_only(problem[0]), repeats):.2f} ms"
            if linear_sum_assignment
            else "n/a"
        )
        rrwm = "n/a (17 GB affinity)"
        if pygmtools is not None and nodes <= 64:
            rrwm = f"{timed(lambda problem=problem: pygm_rrwm(*problem), max(1, repeats // 10)):.1f} ms"
        rows.append(
            (
                f"time solve+blackbox backward, n={nodes}, k=5",
                f"{ours:.2f} ms",
                f"{previous:.2f} ms",
                f"{reference:.1f} ms",
                hung,
                rrwm,
            )
        )

    # One training step's batch: 6 matchings of n = 16 solved together (P = 6).
    step = [
        torch.stack(parts) for parts in zip(*(reference_like_problem(16, s) for s in range(6)), strict=True)
    ]
    ours = timed(lambda: solve_and_backward(*step), 30)
    previous = timed(lambda: previous_solve_and_backward(*step), 30)
    rows.append(
        (
            "time solve+backward, 6 problems of n=16 (one step)",
            f"{ours:.2f} ms",
            f"{previous:.2f} ms",
            "",
            "",
            "",
        )
    )

    module = MultiGraphAlignment(AlignmentConfig(), feature_dim=256).train()
    features = {name: torch.randn(16, 256, requires_grad=True) for name in ("image", "response", "caption")}
    full = timed(lambda: module(features).loss.backward(), 20)
    rows.append(("time full loss fwd+bwd (6 matchings, D=256, B=16)", f"{full:.1f} ms", "", "", "", ""))

    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
