"""Solver: exact optimum on small instances, feasibility, batching, determinism, input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exgra.alignment import matching_objective, solve_matching, solver
from exgra.alignment.solver import _resolve, _solve_and_keep
from tests.alignment import baseline_solver
from tests.alignment.instances import _objective_numpy, brute_force, reference_like_problem


@pytest.fixture(params=["dense table", "dense table, torch search", "incidence lists"])
def image_terms(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with both ways the local search reads the edge costs (large problems use the lists) and,
    on the dense table, with the compiled CPU search (the default) and the batched torch search (GPUs)."""
    if request.param == "incidence lists":
        monkeypatch.setattr(solver, "_DENSE_TABLE_LIMIT", 0)
    if request.param == "dense table, torch search":
        monkeypatch.setattr(solver, "USE_KERNEL", False)
    return request.param


def _is_partial_injective(matching: torch.Tensor) -> bool:
    binary = bool(((matching == 0) | (matching == 1)).all())
    return binary and bool((matching.sum(-1) <= 1).all()) and bool((matching.sum(-2) <= 1).all())


@pytest.mark.usefixtures("image_terms")
def test_exact_optimum_on_small_reference_like_instances() -> None:
    optimal = 0
    total = 80
    for seed in range(total):
        unary, quadratic, left, right = reference_like_problem(3 + seed % 5, seed, noise=0.5 + seed % 3 * 0.5)
        matching = solve_matching(unary, quadratic, left, right)
        assert _is_partial_injective(matching)
        value = float(matching_objective(matching, unary, quadratic, left, right))
        best = brute_force(unary, quadratic, left, right)
        assert value >= best - 1e-4, "the objective cannot beat the brute-force optimum"
        optimal += value <= best + 1e-4
    assert optimal / total >= 0.9


def test_partial_matching_leaves_costly_nodes_unmatched() -> None:
    unary = torch.tensor([[-1.0, 2.0, 2.0], [2.0, 2.0, 2.0], [2.0, 2.0, -0.5]])
    empty = torch.zeros(2, 0, dtype=torch.long)
    matching = solve_matching(unary, torch.zeros(0, 0), empty, empty)
    assert torch.equal(matching, torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1]]))


def test_quadratic_terms_override_weak_unary_preferences() -> None:
    # Unary costs slightly prefer the crossed matching, the edge term rewards the straight one.
    unary = torch.tensor([[-0.10, -0.12], [-0.12, -0.10]])
    edges = torch.tensor([[0], [1]])
    quadratic = torch.tensor([[-1.0]])
    matching = solve_matching(unary, quadratic, edges, edges)
    assert torch.equal(matching, torch.eye(2))


@pytest.mark.parametrize("nodes", [16, 48])
def test_identity_recovered_on_noisy_copies(nodes: int) -> None:
    unary, quadratic, left, right = reference_like_problem(nodes, seed=3, dim=64, noise=0.3)
    matching = solve_matching(unary, quadratic, left, right)
    assert _is_partial_injective(matching)
    assert float(matching.diagonal().mean()) >= 0.95


@pytest.mark.usefixtures("image_terms")
def test_batch_equals_single_solves_and_is_deterministic() -> None:
    problems = [reference_like_problem(12, seed) for seed in range(4)]
    stacked = [torch.stack(parts) for parts in zip(*problems, strict=True)]
    batch = solve_matching(*stacked)
    assert batch.shape == (4, 12, 12)
    for index, problem in enumerate(problems):
        single = solve_matching(*problem)
        assert torch.equal(batch[index], single)
    assert torch.equal(solve_matching(*stacked), batch)


@pytest.mark.usefixtures("image_terms")
def test_padding_duplicates_and_self_loops_keep_the_objective_exact() -> None:
    unary, quadratic, left, right = reference_like_problem(6, seed=11)
    base = solve_matching(unary, quadratic, left, right)
    base_value = float(matching_objective(base, unary, quadratic, left, right))
    # Padding edges (-1) must change nothing.
    pad = torch.full((2, 3), -1)
    padded_left, padded_right = torch.cat([left, pad], 1), torch.cat([right, pad], 1)
    padded_q = torch.zeros(left.shape[1] + 3, right.shape[1] + 3)
    padded_q[: left.shape[1], : right.shape[1]] = quadratic
    padded_q[left.shape[1] :, :] = 5.0  # costs on padding edges are ignored
    padded = solve_matching(unary, padded_q, padded_left, padded_right)
    assert float(matching_objective(padded, unary, padded_q, padded_left, padded_right)) == pytest.approx(
        base_value
    )
    # A duplicated right edge splits its cost in two; a loop-to-loop term acts as a unary cost.
    dup_right = torch.cat([right, right[:, :1], torch.tensor([[0], [0]])], 1)
    dup_left = torch.cat([left, torch.tensor([[1], [1]])], 1)
    dup_q = torch.zeros(left.shape[1] + 1, right.shape[1] + 2)
    dup_q[: left.shape[1], : right.shape[1]] = quadratic
    dup_q[: left.shape[1], 0] = quadratic[:, 0] / 2
    dup_q[: left.shape[1], right.shape[1]] = quadratic[:, 0] / 2
    dup_q[left.shape[1], right.shape[1] + 1] = -0.4  # node 1 -> node 0 gets a bonus of 0.4
    matching = solve_matching(unary, dup_q, dup_left, dup_right)
    assert _is_partial_injective(matching)
    shifted = unary.clone()
    shifted[1, 0] -= 0.4
    equivalent = solve_matching(shifted, quadratic, left, right)
    assert torch.equal(matching, equivalent)
    value = float(matching_objective(matching, unary, dup_q, dup_left, dup_right))
    assert value == pytest.approx(
        float(matching_objective(equivalent, shifted, quadratic, left, right)), abs=1e-5
    )
    assert value == pytest.approx(brute_force(shifted, quadratic, left, right), abs=1e-4)


def test_matching_objective_counts_mapped_edges() -> None:
    unary = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    edges = torch.tensor([[0], [1]])
    quadratic = torch.tensor([[-5.0]])
    assert float(matching_objective(torch.eye(2), unary, quadratic, edges, edges)) == pytest.approx(-2.0)
    swapped = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert float(matching_objective(swapped, unary, quadratic, edges, edges)) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"unary_costs": torch.zeros(3, 3, dtype=torch.long)}, TypeError, "floating-point"),
        ({"unary_costs": torch.zeros(3)}, ValueError, "n1, n2"),
        ({"edges_left": torch.zeros(2, 4)}, TypeError, "long"),
        ({"edges_left": torch.zeros(3, 4, dtype=torch.long)}, ValueError, "shape"),
        ({"edges_left": torch.full((2, 4), 7)}, ValueError, "outside"),
        ({"quadratic_costs": torch.zeros(4, 5)}, ValueError, "edges_right"),
        ({"unary_costs": torch.full((3, 3), float("nan"))}, ValueError, "finite"),
    ],
)
def test_clear_errors_for_wrong_inputs(kwargs: dict, error: type[Exception], message: str) -> None:
    edges = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 2]])
    arguments = {
        "unary_costs": torch.zeros(3, 3),
        "quadratic_costs": torch.zeros(4, 4),
        "edges_left": edges,
        "edges_right": edges,
    }
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        solve_matching(**arguments)


def test_resolve_with_kept_problem_equals_a_fresh_solve() -> None:
    # The blackbox backward re-solves on the forward's set-up; loop terms must be folded in again.
    unary, quadratic, left, right = reference_like_problem(9, seed=21, noise=1.5)
    left = torch.cat([left, torch.tensor([[2], [2]])], 1)
    right = torch.cat([right, torch.tensor([[4], [4]])], 1)
    quadratic = torch.cat([quadratic, torch.zeros(quadratic.shape[0], 1)], 1)
    quadratic = torch.cat([quadratic, torch.zeros(1, quadratic.shape[1])], 0)
    quadratic[-1, -1] = -3.0  # row 2 -> column 4 gets a bonus of 3 through a loop-to-loop term
    matching, problem, _ = _solve_and_keep(unary, quadratic, left, right)
    assert matching[2, 4] == 1
    perturbed = unary + 0.8 * (1 - 2 * torch.eye(9)) / 9
    resolved = _resolve(problem, perturbed, warm_start=matching)
    assert torch.equal(resolved, solve_matching(perturbed, quadratic, left, right, warm_start=matching))
    assert resolved[2, 4] == 1


def test_matches_or_beats_the_previous_solver() -> None:
    # Same local optima from the same kind of starts: never worse than the frozen previous solver.
    for seed in range(6):
        problem = reference_like_problem(24, seed, dim=64, noise=1.0 + seed % 2)
        ours = float(matching_objective(solve_matching(*problem), *problem))
        previous = float(matching_objective(baseline_solver.solve_matching(*problem), *problem))
        assert ours <= previous + 1e-4


def _no_improving_move(matching: torch.Tensor, problem: tuple[torch.Tensor, ...]) -> float:
    """Largest objective decrease any single move achieves (a row to another column, swapping with its
    owner, or to unmatched), evaluated from scratch with the independent numpy objective."""
    unary, quad, left, right = (t.numpy() for t in problem)
    u, q = unary.astype(np.float64), quad.astype(np.float64)
    n1, n2 = unary.shape
    sigma = np.where(matching.sum(1).numpy() > 0, matching.argmax(1).numpy(), -1)
    value = _objective_numpy(sigma, u, q, left, right)
    owner = -np.ones(n2, dtype=np.int64)
    owner[sigma[sigma >= 0]] = np.nonzero(sigma >= 0)[0]
    best_gain = 0.0
    for row in range(n1):
        for col in range(-1, n2):
            if col == sigma[row]:
                continue
            trial = sigma.copy()
            if col >= 0 and owner[col] >= 0:
                trial[owner[col]] = sigma[row]
            trial[row] = col
            best_gain = max(best_gain, value - _objective_numpy(trial, u, q, left, right))
    return best_gain


@pytest.mark.parametrize("seed", [1, 3])
def test_large_low_signal_solutions_are_local_optima(seed: int) -> None:
    # Regression: the improvement threshold used to scale with the sum of all quadratic costs (~n²), so on
    # large instances the search stopped with single moves worth up to ~0.1-0.4 still available.
    problem = reference_like_problem(96, 1000 + seed, dim=64, noise=2.0)
    matching = solve_matching(*problem)
    assert _is_partial_injective(matching)
    assert _no_improving_move(matching, problem) < 1e-4
    ours = float(matching_objective(matching, *problem))
    previous = float(matching_objective(baseline_solver.solve_matching(*problem), *problem))
    assert ours <= previous + 1e-4


def _golden_cases() -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    """~30 seeded reference-like instances (n = 5..64), single and batched, for the bit-identity check."""
    cases = []
    for seed in range(30):
        nodes = 5 + (seed * 37) % 60
        cases.append((f"single-{seed}", reference_like_problem(nodes, seed, noise=0.5 + seed % 4 * 0.5)))
    for seed, nodes in enumerate((5, 16, 16, 33, 64)):
        problems = [reference_like_problem(nodes, 100 + 3 * seed + i, noise=1.0 + i % 2) for i in range(3)]
        cases.append((f"batch-{seed}", tuple(torch.stack(parts) for parts in zip(*problems, strict=True))))
    return cases


def _as_matching(rows: list, shape: torch.Size) -> torch.Tensor:
    """Row -> column lists (-1 = unmatched) back to a 0/1 matching of ``shape``."""
    sigma = torch.tensor(rows)
    matching = torch.zeros(*shape[:-1], shape[-1] + 1)
    matching.scatter_(-1, torch.where(sigma < 0, shape[-1], sigma)[..., None], 1.0)
    return matching[..., :-1]


def test_never_worse_than_the_recorded_previous_solver() -> None:
    # solver_golden.json: row -> column of the plain local search (before kicks and extra starts), for each
    # case's solve and for a warm-started re-solve on costs perturbed around that solve (blackbox backward).
    # The current solver must reach the same objective or a better one on every one of them.
    recorded = json.loads((Path(__file__).parent / "solver_golden.json").read_text())
    for index, (name, (unary, quadratic, left, right)) in enumerate(_golden_cases()):
        if (index % 3 and not name.startswith("batch")) or unary.shape[-1] > 40:
            continue  # a third of the cases, n <= 40, keeps the test within seconds
        previous = _as_matching(recorded[name], unary.shape)
        noise = torch.randn(unary.shape, generator=torch.Generator().manual_seed(2 * index))
        perturbed = unary + (2 * previous - 1 + noise) * unary.std()
        for costs, warm, key in ((unary, None, name), (perturbed, previous, f"{name}-resolve")):
            ours = solve_matching(costs, quadratic, left, right, warm_start=warm)
            value = matching_objective(ours, costs, quadratic, left, right)
            before = matching_objective(
                _as_matching(recorded[key], unary.shape), costs, quadratic, left, right
            )
            assert bool((value <= before + 1e-4).all()), key


def test_plain_search_equals_the_recorded_previous_solver() -> None:
    # search="plain" is the earlier solver's algorithm: it must reproduce the recorded matchings exactly.
    recorded = json.loads((Path(__file__).parent / "solver_golden.json").read_text())
    for index, (name, (unary, quadratic, left, right)) in enumerate(_golden_cases()):
        if (index % 3 and not name.startswith("batch")) or unary.shape[-1] > 40:
            continue
        matching, problem, _ = _solve_and_keep(unary, quadratic, left, right, search="plain")
        noise = torch.randn(unary.shape, generator=torch.Generator().manual_seed(2 * index))
        perturbed = unary + (2 * matching - 1 + noise) * unary.std()
        resolved = _resolve(problem, perturbed, matching, search="plain")
        for key, value in ((name, matching), (f"{name}-resolve", resolved)):
            assert torch.where(value.amax(-1) > 0, value.argmax(-1), -1).tolist() == recorded[key], key


def test_unknown_search_is_refused() -> None:
    unary, quadratic, left, right = reference_like_problem(5, seed=0)
    with pytest.raises(ValueError, match="search"):
        solve_matching(unary, quadratic, left, right, search="fast")


def test_dense_table_and_incidence_lists_give_the_same_matchings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The two ways of reading edge costs must be the same search, not just both good: equal matchings on a
    # batch of pipeline problems (one with padding edges), forward and warm-started re-solve.
    from tests.alignment.instances import pipeline_problem

    problems = [pipeline_problem(10, seed, noise=(0.5, 1.0, 2.0)[seed % 3]) for seed in range(4)]
    stacked = [torch.stack(parts) for parts in zip(*problems, strict=True)]
    stacked[2][1, :, -3:] = -1  # padding edges in one problem
    stacked[1][1, -3:] = 0.0
    results = {}
    for limit in (solver._DENSE_TABLE_LIMIT, 0):
        monkeypatch.setattr(solver, "_DENSE_TABLE_LIMIT", limit)
        matching, problem, _ = _solve_and_keep(*stacked)
        resolved = _resolve(problem, stacked[0] + 0.3 * (1 - 2 * torch.eye(10)), matching)
        results[limit] = (matching, resolved)
    (dense, dense_resolved), (lists, lists_resolved) = results.values()
    assert torch.equal(dense, lists) and torch.equal(dense_resolved, lists_resolved)


def test_search_and_objective_on_a_subset_of_problems_equal_the_full_batch() -> None:
    # The kicks search only some problems of a batch: restricting to a subset must change nothing for them.
    from tests.alignment.instances import pipeline_problem

    problems = [pipeline_problem(9, seed) for seed in range(4)]
    stacked = [torch.stack(parts) for parts in zip(*problems, strict=True)]
    with torch.inference_mode():
        unary, quadratic, left, right, _ = solver._as_batch(*stacked)
        problem = solver._Problem(unary, quadratic, left, right)
        generator = torch.Generator().manual_seed(0)
        starts = torch.stack([torch.randperm(9, generator=generator) for _ in range(4 * 3)]).view(4, 3, 9)
        full = solver._local_search(problem, starts, 1e-6)
        only = torch.tensor([3, 1])
        subset = solver._local_search(problem, starts[only], 1e-6, only)
        assert torch.equal(subset, full[only])
        assert torch.equal(problem.objective(subset, only), problem.objective(full)[only])
    for index in only.tolist():  # and the objective is the independent numpy one
        for start in range(3):
            sigma = full[index, start].numpy().copy()
            sigma[sigma == 9] = -1
            expected = _objective_numpy(
                sigma,
                *(t.double().numpy() for t in problems[index][:2]),
                problems[index][2].numpy(),
                problems[index][3].numpy(),
            )
            assert float(problem.objective(full)[index, start]) == pytest.approx(expected, abs=1e-4)


def test_a_round_without_the_early_exit_leaves_converged_matchings_unchanged() -> None:
    # The GPU path runs search rounds without checking for convergence first (no device sync): on
    # matchings where no move improves, such a round must change nothing and report nothing moving.
    from tests.alignment.instances import pipeline_problem

    stacked = [torch.stack(parts) for parts in zip(*(pipeline_problem(9, s) for s in range(3)), strict=True)]
    with torch.inference_mode():
        unary, quadratic, left, right, _ = solver._as_batch(*stacked)
        problem = solver._Problem(unary, quadratic, left, right)
        generator = torch.Generator().manual_seed(1)
        starts = torch.stack([torch.randperm(9, generator=generator) for _ in range(6)]).view(3, 2, 9)
        converged = solver._local_search(problem, starts, 1e-6).view(6, 9)
        chains = solver._Chains(problem, torch.arange(3).repeat_interleave(2))
        after, moving = solver._improve(chains, converged, 1e-6, check=False)
        assert torch.equal(after, converged) and not bool(moving.any())
        moved, still_moving = solver._improve(chains, starts.view(6, 9), 1e-6, check=False)
        assert bool(still_moving.any()) and not torch.equal(moved, starts.view(6, 9))


def _sigma(matching: torch.Tensor) -> np.ndarray:
    return np.where(matching.sum(-1).numpy() > 0, matching.argmax(-1).numpy(), -1)


def _best_ejection_gain(sigma: np.ndarray, problem: tuple[torch.Tensor, ...], adjacent: bool) -> float:
    """Largest objective decrease of an ejection move (row i takes row j's column, j moves to a free column
    or to unmatched) over rows i, j (adjacent ones only with ``adjacent``), scored from scratch."""
    unary, quad, left, right = (t.numpy() for t in problem)
    u, q = unary.astype(np.float64), quad.astype(np.float64)
    n1, n2 = unary.shape
    edges = {(int(a), int(b)) for a, b in left.T if a >= 0 and b >= 0}
    value = _objective_numpy(sigma, u, q, left, right)
    free = [col for col in range(n2) if col not in set(sigma.tolist())]
    best_gain = 0.0
    for i in range(n1):
        for j in range(n1):
            if i == j or sigma[j] < 0 or (not adjacent and ((i, j) in edges or (j, i) in edges)):
                continue
            for col in [-1, *free]:
                trial = sigma.copy()
                trial[i], trial[j] = sigma[j], col
                best_gain = max(best_gain, value - _objective_numpy(trial, u, q, left, right))
    return best_gain


def _search(
    problem: tuple[torch.Tensor, ...], sigma: np.ndarray, ejection: bool, adjacent: bool = False
) -> np.ndarray:
    unary, quadratic, left, right = (t[None] for t in problem)
    with torch.inference_mode():
        internal = solver._Problem(unary, quadratic, left, right)
        start = torch.as_tensor(np.where(sigma < 0, unary.shape[-1], sigma))[None, None]
        flags = torch.tensor([ejection])
        tolerance = solver._tolerance(internal)
        found = solver._local_search(internal, start, tolerance, ejection=flags, adjacent=adjacent)[0, 0]
    return np.where(found.numpy() == unary.shape[-1], -1, found.numpy())


def test_an_ejection_move_is_found_where_no_single_move_improves() -> None:
    # Rows 0 and 1 are not adjacent. From (0: unmatched, 1: column 0) no move, swap or steal improves
    # (0 taking column 0 alone: -5.5 > -6); the ejection "0 takes column 0, 1 moves to column 1" reaches the
    # optimum -10.5. Row 2 and the edge 0-2 only make the graphs non-empty (all quadratic costs 0).
    unary = torch.tensor([[-5.5, 5.0, 1.0], [-6.0, -5.0, 1.0], [1.0, 1.0, 1.0]])
    left = torch.tensor([[0], [2]])
    right = torch.tensor([[0], [1]])
    problem = (unary, torch.zeros(1, 1), left, right)
    start = np.array([-1, 0, -1])
    assert _search(problem, start, ejection=False).tolist() == start.tolist()
    found = _search(problem, start, ejection=True)
    assert found.tolist() == [0, 1, -1]
    value = _objective_numpy(found, unary.double().numpy(), np.zeros((1, 1)), left.numpy(), right.numpy())
    assert value == -10.5
    assert brute_force(*problem) == pytest.approx(-10.5)


@pytest.mark.parametrize("adjacent", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_the_ejection_search_ends_where_no_move_or_ejection_improves(seed: int, adjacent: bool) -> None:
    # Oracle: every single move and every ejection (of non-adjacent rows, or of any two rows with adjacent),
    # enumerated and scored from scratch.
    from tests.alignment.instances import pipeline_problem

    problem = pipeline_problem(9, 300 + seed, noise=(0.5, 1.0, 2.0)[seed % 3])
    start = _sigma(solve_matching(*problem, search="plain"))
    start[: 3 + seed % 3] = -1  # unassign a few rows so that the search has work to do
    found = _search(problem, start, ejection=True, adjacent=adjacent)
    matching = torch.zeros(9, 10)
    matching[torch.arange(9), torch.as_tensor(np.where(found < 0, 9, found))] = 1.0
    assert _no_improving_move(matching[:, :9], problem) < 1e-4
    assert _best_ejection_gain(found, problem, adjacent) < 1e-4


def test_the_warm_search_starts_from_the_warm_start_only() -> None:
    # search="warm" (the blackbox backward's re-solve): the local search from the warm start alone, so it is
    # the plain local search from that start, never worse than the start and a local optimum.
    from tests.alignment.instances import pipeline_problem

    unary, quadratic, left, right = pipeline_problem(12, 5, noise=1.0, perturbed=True)
    warm = solve_matching(unary, quadratic, left, right, search="plain")
    noisy = unary + torch.randn(unary.shape, generator=torch.Generator().manual_seed(0)) * unary.std()
    problem = (noisy, quadratic, left, right)
    _, internal, _ = _solve_and_keep(*problem, search="plain")
    ours = _resolve(internal, noisy, warm, search="warm")
    expected = _search(problem, _sigma(warm), ejection=False)
    assert _sigma(ours).tolist() == expected.tolist()
    assert float(matching_objective(ours, *problem)) <= float(matching_objective(warm, *problem)) + 1e-6
    assert _no_improving_move(ours, problem) < 1e-4


@pytest.mark.parametrize("adjacent", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_every_round_of_the_ejection_search_lowers_the_objective(seed: int, adjacent: bool) -> None:
    # The moves applied together in one round must add up to an improvement (scored from scratch): a wrong
    # delta for the ejection move (or a wrong partner column) shows up as a round that makes things worse.
    from tests.alignment.instances import pipeline_problem

    problem = pipeline_problem(10, 400 + seed, noise=(0.5, 1.0, 2.0)[seed % 3])
    unary, quadratic, left, right = (t[None] for t in problem)
    u, q = (t.double().numpy() for t in problem[:2])
    with torch.inference_mode():
        internal = solver._Problem(unary, quadratic, left, right)
        noisy = solver._noisy_scores(internal.uniform_linearisation(), 6, seed)
        starts = solver._greedy_rounding(noisy, 10)[0]
        flags = torch.ones(6, dtype=torch.bool)
        chains = solver._Chains(internal, torch.zeros(6, dtype=torch.long), flags, adjacent)
        sigma, rounds = starts, 0
        while True:
            new, moving = solver._improve(chains, sigma, solver._tolerance(internal))
            if not bool(moving.any()):
                break
            for before, after in zip(sigma.numpy(), new.numpy(), strict=True):
                if (before != after).any():
                    old = _objective_numpy(np.where(before == 10, -1, before), u, q, *problem[2:])
                    now = _objective_numpy(np.where(after == 10, -1, after), u, q, *problem[2:])
                    assert now < old - 1e-6
            sigma, rounds = new, rounds + 1
    assert rounds > 1


def test_an_ejection_of_adjacent_rows_is_found_by_the_polish() -> None:
    # Rows 0 and 1 adjacent (edge 0->1 onto 0->1 costs -1 when 0 sits at column 0 and 1 at column 1). From
    # (0: unmatched, 1: column 0): 0 taking column 0 alone loses (-5.5 > -6), 1 moving alone loses; together
    # (0 -> 0, 1 -> 1) they gain, counting the edge term that only exists once both have moved: -10.5.
    unary = torch.tensor([[-5.5, 5.0, 1.0], [-6.0, -4.0, 1.0], [1.0, 1.0, 1.0]])
    left = torch.tensor([[0], [1]])
    right = torch.tensor([[0], [1]])
    problem = (unary, torch.tensor([[-1.0]]), left, right)
    start = np.array([-1, 0, -1])
    assert _search(problem, start, ejection=True).tolist() == start.tolist()  # not adjacent-aware: stuck
    found = _search(problem, start, ejection=True, adjacent=True)
    assert found.tolist() == [0, 1, -1]
    assert brute_force(*problem) == pytest.approx(-10.5)


def test_a_one_by_one_problem_is_solved_without_a_warning() -> None:
    # The random starts' noise is scaled by the costs' spread; one cost has none (its sample std is NaN and
    # warns): no noise then, and the only sensible answers.
    import warnings

    edges = torch.zeros(2, 1, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        negative = solve_matching(torch.tensor([[-1.0]]), torch.zeros(1, 1), edges, edges)
        positive = solve_matching(torch.tensor([[2.0]]), torch.zeros(1, 1), edges, edges)
    assert negative.tolist() == [[1.0]] and positive.tolist() == [[0.0]]
