"""The compiled CPU search (exgra.alignment.search_kernel) against the batched torch search: the same
matchings, not only equally good ones, on the problems training produces (the solver's oracle tests in
test_solver.py run through both)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from exgra.alignment import solver
from exgra.alignment.solver import _resolve, _solve_and_keep
from tests.alignment.instances import pipeline_problem

pytestmark = pytest.mark.skipif(not solver.USE_KERNEL, reason="numba is not installed")


def _both(monkeypatch: pytest.MonkeyPatch, run):  # noqa: ANN001, ANN202
    results = []
    for use_kernel in (True, False):
        monkeypatch.setattr(solver, "USE_KERNEL", use_kernel)
        results.append(run())
    return results


def _batch(nodes: int, seeds: range, **kwargs) -> list[torch.Tensor]:  # noqa: ANN003
    problems = [pipeline_problem(nodes, seed, noise=(0.5, 1.0, 2.0)[seed % 3], **kwargs) for seed in seeds]
    return [torch.stack(parts) for parts in zip(*problems, strict=True)]


@pytest.mark.parametrize("nodes", [5, 9, 16, 32])
def test_forward_and_backward_solves_are_the_same_as_the_torch_search(
    nodes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Full solves as training runs them: iterated forward (random starts, kicks, polish with adjacent
    # ejections), plain, and the backward's warm re-solve of the perturbed costs; a batch with padding edges
    # and zero-cost edges in it.
    forward = _batch(nodes, range(nodes, nodes + 4))
    forward[2][1, :, -3:] = -1
    forward[1][2, -4:] = 0.0
    perturbed = _batch(nodes, range(nodes, nodes + 4), perturbed=True)[0]

    def run() -> tuple[torch.Tensor, ...]:
        matching, problem, certified = _solve_and_keep(*forward)
        plain = solver.solve_matching(*forward, search="plain")
        resolved = _resolve(problem, perturbed, matching, "warm")
        return matching, certified, plain, resolved

    kernel, torch_search = _both(monkeypatch, run)
    for ours, expected in zip(kernel, torch_search, strict=True):
        assert torch.equal(ours, expected)


@pytest.mark.parametrize(
    ("nodes", "rounded", "mixed"),
    [(12, False, True), (6, False, False), (10, True, True)],
    ids=["mixed ejection flags", "all ejections", "integer costs (ties)"],
)
@pytest.mark.parametrize("adjacent", [False, True])
def test_local_search_rounds_are_the_same(
    nodes: int, rounded: bool, mixed: bool, adjacent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From random permutations (far from any optimum: many rounds, many conflicts between proposals, and at
    # n = 6 adjacent ejections that win), with ejections on for some chains only, on a subset of the
    # problems; costs rounded to integers make equal deltas common, so the tie rules must agree too.
    stacked = _batch(nodes, range(4))
    if rounded:
        stacked[0], stacked[1] = (2 * stacked[0]).round(), (2 * stacked[1]).round()
    with torch.inference_mode():
        unary, quadratic, left, right, _ = solver._as_batch(*stacked)
        problem = solver._Problem(unary, quadratic, left, right)
        generator = torch.Generator().manual_seed(0)
        starts = torch.stack([torch.randperm(nodes, generator=generator) for _ in range(4 * 8)])
        starts = starts.view(4, 8, nodes)
        starts[0, 1, :4] = nodes  # some rows unmatched
        flags = torch.tensor([False, True, True, False] * 2) if mixed else torch.ones(8, dtype=torch.bool)
        only = torch.tensor([2, 0, 3]) if mixed else None
        chosen = starts[only] if mixed else starts

        def run() -> torch.Tensor:
            return solver._local_search(problem, chosen, 1e-6, only, ejection=flags, adjacent=adjacent)

        kernel, torch_search = _both(monkeypatch, run)
    assert torch.equal(kernel, torch_search)
    assert not torch.equal(kernel, chosen)


def test_greedy_rounding_is_the_same_as_the_torch_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ties (small integer costs), zero and positive costs (never matched) and more rows than columns.
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(-4, 3, (2, 7, 9, 6), generator=generator).float()
    kernel, torch_rounding = _both(monkeypatch, lambda: solver._greedy_rounding(scores, 6))
    assert torch.equal(kernel, torch_rounding)
    assert bool((kernel < 6).any()) and bool((kernel == 6).any())


def test_the_environment_switch_selects_the_torch_search() -> None:
    code = "from exgra.alignment import solver; print(solver.USE_KERNEL)"
    env = {**os.environ, "EXGRA_SOLVER_KERNEL": "torch"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_an_unknown_switch_value_is_reported_and_the_compiled_search_kept() -> None:
    code = "from exgra.alignment import solver; print(solver.USE_KERNEL)"
    env = {**os.environ, "EXGRA_SOLVER_KERNEL": "Torch"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
    assert "EXGRA_SOLVER_KERNEL='Torch' is neither 'numba' nor 'torch'" in result.stderr
