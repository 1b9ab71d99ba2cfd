"""Frozen copy of the previous ``exgra.alignment.solver`` (before the CSR rewrite), kept as an independent
baseline for ``bench/alignment.py`` and the tests: do not optimise it.

Partial graph matching (the problem LPMP solves in the reference), in plain batched torch.

Problem (REFERENCE §2.7): given unary costs ``C [n1, n2]``, quadratic costs ``Q [E1, E2]`` and the two
edge lists, find a partial injective matching ``x`` (every row and every column matched at most once;
unmatched nodes cost nothing) minimising

    Σ_ij C_ij x_ij + Σ_{a=(i,j)∈E1, b=(k,l)∈E2} Q_ab x_ik x_jl.

Algorithm: a vectorised best-improvement local search over a matching ``σ`` (row → column, or the
dummy column ``n2`` for "unmatched"). The quadratic part is ``xᵀAx`` with a sparse ``A``; its linear
term ``g = (A + Aᵀ)x`` is computed from the edge incidences only (``E1 × n2`` lookups, never the dense
``(n1·n2)²`` matrix), and with it the exact objective change of every move:

* move one node to a free column or to the dummy (all ``n1 × (n2 + 1)`` at once; non-conflicting
  improving moves, i.e. on nodes that are not E1-neighbours and target different columns, are applied
  together because their changes add up exactly),
* swap the columns of two nodes, or let one node take another's column (the other becomes unmatched)
  (all ``n1²`` pairs at once, with the pairwise edge correction).

Several deterministic starts (greedy on the unary costs, greedy on a linearisation at the
uniform matching, optionally a warm start) run as one batch; the best local optimum wins. No
randomness, so the output is a deterministic function of the input.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["matching_objective", "solve_matching"]

_MAX_ITERATIONS_FACTOR = 8


def _as_batch(
    unary_costs: Tensor, quadratic_costs: Tensor, edges_left: Tensor, edges_right: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, bool]:
    """Validate inputs and return them with a leading batch dimension (and whether one was added)."""
    for name, tensor in (("unary_costs", unary_costs), ("quadratic_costs", quadratic_costs)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    for name, tensor in (("edges_left", edges_left), ("edges_right", edges_right)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype != torch.long:
            raise TypeError(f"{name} must be a long (int64) tensor of node indices, got dtype {tensor.dtype}")
    if unary_costs.dim() not in (2, 3):
        raise ValueError(
            f"unary_costs must have shape [n1, n2] or [batch, n1, n2], got {list(unary_costs.shape)}"
        )
    batched = unary_costs.dim() == 3
    if quadratic_costs.dim() != unary_costs.dim():
        raise ValueError(
            f"quadratic_costs must have shape {'[batch, E1, E2]' if batched else '[E1, E2]'} "
            f"like unary_costs, got {list(quadratic_costs.shape)}"
        )
    if not batched:
        unary_costs, quadratic_costs = unary_costs[None], quadratic_costs[None]
    batch, n1, n2 = unary_costs.shape
    if quadratic_costs.shape[0] != batch:
        raise ValueError(f"quadratic_costs has batch size {quadratic_costs.shape[0]}, unary_costs {batch}")
    edges = []
    for name, tensor, count, nodes in (
        ("edges_left", edges_left, quadratic_costs.shape[1], n1),
        ("edges_right", edges_right, quadratic_costs.shape[2], n2),
    ):
        if tensor.dim() == 2:
            tensor = tensor[None].expand(batch, -1, -1)
        if tensor.dim() != 3 or tensor.shape[0] != batch or tensor.shape[1] != 2 or tensor.shape[2] != count:
            raise ValueError(
                f"{name} must have shape [2, {count}] or [{batch}, 2, {count}] to match quadratic_costs "
                f"{list(quadratic_costs.shape)}, got {list(tensor.shape)}"
            )
        if tensor.numel() and (int(tensor.min()) < -1 or int(tensor.max()) >= nodes):
            raise ValueError(f"{name} holds node indices outside [0, {nodes}) (-1 marks a padding edge)")
        edges.append(tensor.to(unary_costs.device))
    return unary_costs, quadratic_costs, edges[0], edges[1], batched


class _Problem:
    """A batch of problems in the solver's internal form (float32, padded edges removed, duplicates merged).

    ``unary [P, n1, n2 + 1]`` has a zero dummy column; ``quadratic_flat [P, E1 * (E2 + 1)]`` has a zero
    "no edge" column ``E2``; ``edge_lookup [P, (n2 + 1)²]`` maps a column pair ``(k, l)`` to the E2 edge
    with those endpoints (or ``E2``), with row/column ``n2`` (the dummy) always mapping to ``E2``.
    """

    def __init__(self, unary: Tensor, quadratic: Tensor, edges_left: Tensor, edges_right: Tensor) -> None:
        device = unary.device
        unary = unary.detach().float()
        quadratic = quadratic.detach().float()
        problems, n1, n2 = unary.shape
        e1, e2 = quadratic.shape[1:]
        src1, dst1 = edges_left[:, 0], edges_left[:, 1]
        src2, dst2 = edges_right[:, 0], edges_right[:, 1]
        valid1 = (src1 >= 0) & (dst1 >= 0)
        valid2 = (src2 >= 0) & (dst2 >= 0)
        loop1 = valid1 & (src1 == dst1)
        loop2 = valid2 & (src2 == dst2)
        unary = unary.clone()
        if bool((loop1.any(1) & loop2.any(1)).any()):
            # x_ik·x_ik = x_ik: a loop-to-loop term is a unary cost; any other term with a loop is
            # infeasible (a row or column would be matched twice) and is dropped below.
            rows = torch.nn.functional.one_hot(src1.clamp(min=0), n1).float() * loop1[..., None]
            cols = torch.nn.functional.one_hot(src2.clamp(min=0), n2).float() * loop2[..., None]
            unary += rows.transpose(1, 2) @ quadratic @ cols
        keep1 = valid1 & ~loop1
        keep2 = valid2 & ~loop2
        quadratic = quadratic * keep1[:, :, None] * keep2[:, None, :]
        self.src = torch.where(keep1, src1, 0)
        self.dst = torch.where(keep1, dst1, 0)
        self.keep = keep1
        self.right_src = torch.where(keep2, src2, 0)
        self.right_dst = torch.where(keep2, dst2, 0)
        width = n2 + 1
        trash = width * width
        keys = torch.where(keep2, src2 * width + dst2, trash)
        lookup = torch.full((problems, trash + 1), e2, dtype=torch.long, device=device)
        lookup.scatter_(1, keys, torch.arange(e2, device=device).expand(problems, e2).contiguous())
        lookup[:, trash] = e2
        # Duplicate E2 edges: whichever index won the scatter receives the summed costs of all copies.
        canonical = lookup.gather(1, keys)
        merged = torch.zeros(problems, e1, e2 + 1, device=device)
        merged.scatter_add_(2, canonical[:, None, :].expand(-1, e1, -1), quadratic)
        merged[:, :, e2] = 0.0
        self.edge_lookup = lookup[:, :trash]
        self.quadratic_flat = merged.reshape(problems, -1)
        self.unary = torch.cat([unary, unary.new_zeros(problems, n1, 1)], dim=2)
        self.problems, self.n1, self.n2, self.e1, self.e2 = problems, n1, n2, e1, e2
        self.edge_offset = torch.arange(e1, device=device) * (e2 + 1)
        self.columns = torch.arange(width, device=device)

    def lookup_pairs(self, col_a: Tensor, col_b: Tensor) -> Tensor:
        """``Q[a, edge(col_a[a], col_b[a])]`` for every edge ``a``; inputs ``[P, S, E1]`` (broadcastable)."""
        keys = col_a * (self.n2 + 1) + col_b
        starts = keys.shape[1]
        edge = self.edge_lookup.gather(1, keys.reshape(self.problems, -1)).view(
            self.problems, starts, self.e1
        )
        index = edge + self.edge_offset
        return self.quadratic_flat.gather(1, index.reshape(self.problems, -1)).view(
            self.problems, starts, self.e1
        )

    def linear_terms(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For matchings ``sigma [P, S, n1]``: ``h = C + (A + Aᵀ)x`` ``[P, S, n1, n2 + 1]`` and the pair
        corrections (current columns / exchanged columns) ``[P, S, n1, n1]``."""
        problems, starts = sigma.shape[:2]
        n1, width, e1 = self.n1, self.n2 + 1, self.e1
        col_src = sigma.gather(2, self.src[:, None, :].expand(-1, starts, -1))
        col_dst = sigma.gather(2, self.dst[:, None, :].expand(-1, starts, -1))
        # Edge a=(u,v) currently sends v to col_dst: row u pays Q[a, edge(k, col_dst)] for column k,
        # and row v pays Q[a, edge(col_src, l)] for column l.
        keys_src = self.columns[None, None, None, :] * width + col_dst[..., None]
        keys_dst = col_src[..., None] * width + self.columns[None, None, None, :]
        keys = torch.stack([keys_src, keys_dst], dim=2)  # [P, S, 2, E1, width]
        edges = self.edge_lookup.gather(1, keys.reshape(problems, -1)).view(problems, starts, 2, e1, width)
        values = self.quadratic_flat.gather(
            1, (edges + self.edge_offset[:, None]).reshape(problems, -1)
        ).view(problems, starts, 2 * e1, width)
        rows = torch.cat([self.src, self.dst], dim=1)[:, None, :, None].expand(-1, starts, -1, width)
        linear = self.unary[:, None].expand(-1, starts, -1, -1).clone()
        linear.scatter_add_(2, rows, values)
        pair_keys = torch.stack([col_src * width + col_dst, col_dst * width + col_src], dim=2)
        pair_edges = self.edge_lookup.gather(1, pair_keys.reshape(problems, -1)).view(problems, starts, 2, e1)
        pair_values = self.quadratic_flat.gather(
            1, (pair_edges + self.edge_offset).reshape(problems, -1)
        ).view(problems, starts, 2, e1)
        flat = (self.src * n1 + self.dst)[:, None, None, :].expand(-1, starts, 2, -1)
        pairs = linear.new_zeros(problems, starts, 2, n1 * n1).scatter_add_(3, flat, pair_values)
        pairs = pairs.view(problems, starts, 2, n1, n1)
        pairs = pairs + pairs.transpose(3, 4)
        return linear, pairs[:, :, 0], pairs[:, :, 1]

    def neighbour_pairs(self) -> tuple[Tensor, Tensor]:
        """Both directions of every kept E1 edge, invalid ones pointing at a spare slot ``n1``."""
        spare = self.n1
        src = torch.where(self.keep, self.src, spare)
        dst = torch.where(self.keep, self.dst, spare)
        return torch.cat([src, dst], dim=1), torch.cat([dst, src], dim=1)


def _greedy_rounding(scores: Tensor, n2: int) -> Tensor:
    """Round a cost matrix ``[P, S, n1, n2]`` to a partial matching: repeatedly match mutual best
    (row, column) pairs with negative cost. Returns ``sigma [P, S, n1]`` (``n2`` = unmatched)."""
    problems, starts, n1, _ = scores.shape
    sigma = torch.full((problems, starts, n1), n2, dtype=torch.long, device=scores.device)
    scores = scores.masked_fill(scores >= 0, float("inf"))
    for _ in range(min(n1, n2)):
        best_col = scores.argmin(3)
        best_row = scores.argmin(2)
        row_ids = torch.arange(n1, device=scores.device)
        mutual = best_row.gather(2, best_col) == row_ids
        mutual &= scores.gather(3, best_col[..., None]).squeeze(3) < float("inf")
        if not bool(mutual.any()):
            break
        sigma = torch.where(mutual, best_col, sigma)
        taken_cols = torch.zeros(problems, starts, n2 + 1, dtype=torch.bool, device=scores.device)
        taken_cols.scatter_(2, torch.where(mutual, best_col, n2), True)
        scores = scores.masked_fill(mutual[..., None] | taken_cols[:, :, None, :n2], float("inf"))
    return sigma


def _local_search(problem: _Problem, sigma: Tensor, tolerance: float) -> Tensor:
    """Best-improvement local search from ``sigma [P, S, n1]`` until no move improves any start."""
    problems, starts, n1 = sigma.shape
    n2 = problem.n2
    device = sigma.device
    inf = float("inf")
    row_ids = torch.arange(n1, device=device)
    eye = torch.eye(n1, dtype=torch.bool, device=device)
    nb_from, nb_to = problem.neighbour_pairs()
    nb_from = nb_from[:, None, :].expand(-1, starts, -1)
    nb_to = nb_to[:, None, :].expand(-1, starts, -1)
    for _ in range(_MAX_ITERATIONS_FACTOR * (n1 + 4)):
        linear, pairs_current, pairs_exchanged = problem.linear_terms(sigma)
        current = linear.gather(3, sigma[..., None]).squeeze(3)
        used = torch.zeros(problems, starts, n2 + 1, dtype=torch.bool, device=device)
        used.scatter_(2, sigma, True)
        used[..., n2] = False
        single = (linear - current[..., None]).masked_fill_(used[:, :, None, :], inf)
        single_delta, single_col = single.min(3)
        # Pair moves: at_other[i, j] = h[i, σ(j)].
        at_other = linear.gather(3, sigma[:, :, None, :].expand(-1, -1, n1, -1))
        base = at_other - current[..., :, None] - current[..., None, :]
        swap = (base + at_other.transpose(2, 3) + pairs_current + pairs_exchanged).masked_fill_(eye, inf)
        steal = (base + pairs_current).masked_fill_(eye | (sigma == n2)[:, :, None, :], inf)
        pair = torch.stack([swap, steal], dim=2).view(problems, starts, -1)
        pair_delta, pair_index = pair.min(2)
        best_single = single_delta.min(2).values
        improving = torch.minimum(best_single, pair_delta) < -tolerance
        if not bool(improving.any()):
            break
        # Non-conflicting single moves: a node moves if its gain ranks first among its E1-neighbours
        # and among the nodes that want the same column (ranks make ties deterministic).
        candidate = single_delta < -tolerance
        rank = single_delta.masked_fill(~candidate, inf).argsort(dim=2, stable=True).argsort(dim=2)
        spare_rank = rank.new_full((problems, starts, 1), n1 + 1)
        padded_rank = torch.cat([rank, spare_rank], dim=2)
        neighbour_best = padded_rank.new_full((problems, starts, n1 + 1), n1 + 1)
        neighbour_best.scatter_reduce_(2, nb_to, padded_rank.gather(2, nb_from), "amin")
        bucket = torch.where(single_col == n2, n2 + 1 + row_ids, single_col)
        column_best = rank.new_full((problems, starts, n2 + 1 + n1), n1 + 1)
        column_best.scatter_reduce_(2, bucket, rank, "amin")
        accept = candidate & (rank < neighbour_best[..., :n1]) & (rank == column_best.gather(2, bucket))
        single_gain = (single_delta * accept).sum(2)
        moved_singles = torch.where(accept, single_col, sigma)
        # One pair move where it beats the summed single moves.
        kind = pair_index // (n1 * n1)
        first = (pair_index % (n1 * n1)) // n1
        second = pair_index % n1
        col_first = sigma.gather(2, first[..., None])
        col_second = sigma.gather(2, second[..., None])
        moved_pair = sigma.scatter(2, first[..., None], col_second)
        moved_pair.scatter_(2, second[..., None], torch.where(kind[..., None] == 0, col_first, n2))
        use_pair = (pair_delta < single_gain) & (pair_delta < -tolerance)
        new_sigma = torch.where(use_pair[..., None], moved_pair, moved_singles)
        sigma = torch.where(improving[..., None], new_sigma, sigma)
    return sigma


def _objective_of(problem: _Problem, sigma: Tensor) -> Tensor:
    """Objective of matchings ``sigma [P, S, n1]`` -> ``[P, S]``."""
    starts = sigma.shape[1]
    unary = problem.unary[:, None].expand(-1, starts, -1, -1).gather(3, sigma[..., None]).squeeze(3).sum(2)
    col_src = sigma.gather(2, problem.src[:, None, :].expand(-1, starts, -1))
    col_dst = sigma.gather(2, problem.dst[:, None, :].expand(-1, starts, -1))
    return unary + problem.lookup_pairs(col_src, col_dst).sum(2)


@torch.no_grad()
def solve_matching(
    unary_costs: Tensor,
    quadratic_costs: Tensor,
    edges_left: Tensor,
    edges_right: Tensor,
    warm_start: Tensor | None = None,
) -> Tensor:
    """Minimise unary + quadratic costs over partial injective matchings.

    Args:
        unary_costs: ``[n1, n2]`` or ``[P, n1, n2]`` (a batch of ``P`` problems solved together).
        quadratic_costs: ``[E1, E2]`` or ``[P, E1, E2]``; ``Q[a, b]`` is paid when edge ``a = (i, j)`` of
            the left graph is mapped onto edge ``b = (k, l)`` of the right graph (``i→k`` and ``j→l``).
        edges_left: ``[2, E1]`` or ``[P, 2, E1]`` long node indices in ``[0, n1)``; ``-1`` marks padding.
        edges_right: ``[2, E2]`` or ``[P, 2, E2]`` likewise in ``[0, n2)``.
        warm_start: optional 0/1 matching ``[n1, n2]`` / ``[P, n1, n2]`` used as an extra start.

    Returns:
        A 0/1 matching with the dtype and device of ``unary_costs``, ``[n1, n2]`` or ``[P, n1, n2]``;
        every row and column holds at most one 1. Deterministic for a given input.
    """
    unary, quadratic, left, right, batched = _as_batch(unary_costs, quadratic_costs, edges_left, edges_right)
    if not (torch.isfinite(unary).all() and torch.isfinite(quadratic).all()):
        raise ValueError("unary_costs and quadratic_costs must be finite (no NaN or inf)")
    problem = _Problem(unary, quadratic, left, right)
    problems, n1, n2 = unary.shape
    if n1 == 0 or n2 == 0:
        return unary_costs.new_zeros(unary_costs.shape)
    scale = float(problem.unary.abs().amax()) + float(problem.quadratic_flat.abs().sum(1).amax())
    tolerance = 1e-6 * max(scale, 1.0)
    # Linearisation of the quadratic part at the uniform fractional matching x = 1/n2.
    quadratic_kept = problem.quadratic_flat.view(problems, problem.e1, problem.e2 + 1)[:, :, : problem.e2]
    by_src = quadratic_kept.new_zeros(problems, problem.e1, n2).scatter_add_(
        2, problem.right_src[:, None, :].expand(-1, problem.e1, -1), quadratic_kept
    )
    by_dst = quadratic_kept.new_zeros(problems, problem.e1, n2).scatter_add_(
        2, problem.right_dst[:, None, :].expand(-1, problem.e1, -1), quadratic_kept
    )
    uniform = problem.unary[..., :n2].clone()
    uniform.scatter_add_(1, problem.src[..., None].expand(-1, -1, n2), by_src / n2)
    uniform.scatter_add_(1, problem.dst[..., None].expand(-1, -1, n2), by_dst / n2)
    starts = [_greedy_rounding(torch.stack([problem.unary[..., :n2], uniform], 1), n2)]
    if warm_start is not None:
        warm = warm_start.to(unary.device)
        warm = warm[None] if warm.dim() == 2 else warm
        if warm.shape != unary.shape:
            raise ValueError(f"warm_start must have the shape of unary_costs {list(unary.shape)}")
        has = warm.amax(2) > 0.5
        starts.append(torch.where(has, warm.argmax(2), n2)[:, None, :])
    sigma = _local_search(problem, torch.cat(starts, dim=1), tolerance)
    objective = _objective_of(problem, sigma)
    best = objective.argmin(1)
    sigma = sigma.gather(1, best[:, None, None].expand(-1, 1, n1))
    sigma = sigma.squeeze(1)
    matching = torch.zeros(problems, n1, n2 + 1, dtype=unary_costs.dtype, device=unary.device)
    matching.scatter_(2, sigma[..., None], 1.0)
    matching = matching[..., :n2]
    return matching if batched else matching[0]


def matching_objective(
    matching: Tensor, unary_costs: Tensor, quadratic_costs: Tensor, edges_left: Tensor, edges_right: Tensor
) -> Tensor:
    """Objective ``Σ C∘x + Σ_ab Q_ab x[i_a, k_b] x[j_a, l_b]`` of a (possibly fractional) matching.

    Shapes as in :func:`solve_matching`; ``matching`` is ``[n1, n2]`` or ``[P, n1, n2]``. Returns a scalar
    or ``[P]``. Differentiable in all float inputs; padding edges (``-1``) contribute nothing.
    """
    unary, quadratic, left, right, batched = _as_batch(unary_costs, quadratic_costs, edges_left, edges_right)
    x = matching[None] if matching.dim() == 2 else matching
    if x.shape != unary.shape:
        raise ValueError(
            f"matching must have the shape of unary_costs {list(unary.shape)}, got {list(matching.shape)}"
        )
    x = x.to(unary.dtype)
    valid1 = (left >= 0).all(1)
    valid2 = (right >= 0).all(1)
    src1, dst1 = left[:, 0].clamp(min=0), left[:, 1].clamp(min=0)
    src2, dst2 = right[:, 0].clamp(min=0), right[:, 1].clamp(min=0)
    n2 = x.shape[2]
    rows_src = x.gather(1, src1[..., None].expand(-1, -1, n2))  # x[i_a, :] -> [P, E1, n2]
    rows_dst = x.gather(1, dst1[..., None].expand(-1, -1, n2))
    e1 = rows_src.shape[1]
    pair = rows_src.gather(2, src2[:, None, :].expand(-1, e1, -1)) * rows_dst.gather(
        2, dst2[:, None, :].expand(-1, e1, -1)
    )
    pair = pair * valid1[:, :, None] * valid2[:, None, :]
    value = (unary * x).sum((1, 2)) + (quadratic * pair).sum((1, 2))
    return value if batched else value[0]
