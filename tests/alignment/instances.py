"""Random problem instances and exact / slow reference solvers shared by tests and the bench."""

from __future__ import annotations

import functools

import numpy as np
import torch

from exgra.alignment.gnn import GraphEncoder
from exgra.alignment.graphs import (
    edge_affinity,
    edge_features,
    gumbel_noise,
    knn_graph,
    matching_costs,
    vertex_affinity,
)


def reference_like_problem(
    nodes: int, seed: int, dim: int = 32, k: int = 5, noise: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Costs built as in REFERENCE §2.6 from random features; the second graph is a noisy copy.

    Returns ``(unary [n, n], quadratic [E, E], edges [2, E], edges [2, E])`` (the reference reuses the
    source graph's edges for both sides).
    """
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(nodes, dim, generator=generator)
    right = left + noise * torch.randn(nodes, dim, generator=generator)
    edges = knn_graph(left, k)
    similarity = vertex_affinity(left, right)
    edge_similarity = edge_affinity(edge_features(left, edges), edge_features(right, edges))
    unary, quadratic = matching_costs(
        similarity,
        edge_similarity,
        gumbel_noise(similarity.shape, 0.05, generator),
        gumbel_noise(edge_similarity.shape, 0.05, generator),
    )
    return unary, quadratic, edges, edges


def pipeline_problem(
    nodes: int,
    seed: int,
    dim: int = 32,
    noise: float = 1.0,
    gumbel: bool = True,
    perturbed: bool = False,
    k: int = 5,
    lambda_val: float = 80.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A matching problem as exgra's training step produces it (REFERENCE §2.2–§2.7).

    Three modalities ``base + noise·ε``, their barycenter, the pair (modality -> barycenter): kNN graph of
    the modality (``k``), both graphs through one random-weight :class:`GraphEncoder` (no dropout),
    affinities and ``matching_costs`` with Gumbel(0.05) noise (``gumbel``). ``perturbed`` returns the
    blackbox backward's costs instead: ``C + λ·∂L/∂M`` for the mean of six Hamming losses, i.e.
    ``C + λ·(1 - 2I)/(6·nodes)``.
    """
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(nodes, dim, generator=generator)
    modalities = [base + noise * torch.randn(nodes, dim, generator=generator) for _ in range(3)]
    source, target = modalities[seed % 3], torch.stack(modalities).mean(0)
    if seed % 2:  # both directions of a pair occur in training
        source, target = target, source
    torch.manual_seed(seed)  # the GNN's initialisation
    gnn = GraphEncoder(dim, dim, dropout=0.0)
    edges = knn_graph(source, k)
    with torch.no_grad():
        hidden = gnn(torch.stack([source, target]), torch.stack([edges, edges]))
    similarity = vertex_affinity(hidden[0], hidden[1])
    edge_similarity = edge_affinity(edge_features(hidden[0], edges), edge_features(hidden[1], edges))
    vertex_noise = edge_noise = None
    if gumbel:
        vertex_noise = gumbel_noise(similarity.shape, 0.05, generator)
        edge_noise = gumbel_noise(edge_similarity.shape, 0.05, generator)
    unary, quadratic = matching_costs(similarity, edge_similarity, vertex_noise, edge_noise)
    if perturbed:
        unary = unary + lambda_val * (1 - 2 * torch.eye(nodes)) / (6 * nodes)
    return unary, quadratic, edges, edges


def _objective_numpy(
    sigma: np.ndarray, unary: np.ndarray, quad: np.ndarray, el: np.ndarray, er: np.ndarray
) -> float:
    """Objective of a matching given as row -> column (-1 = unmatched)."""
    n2 = unary.shape[1]
    value = float(sum(unary[i, c] for i, c in enumerate(sigma) if c >= 0))
    lookup = -np.ones((n2, n2), dtype=np.int64)
    lookup[er[0], er[1]] = np.arange(er.shape[1])
    cs, cd = sigma[el[0]], sigma[el[1]]
    ok = (cs >= 0) & (cd >= 0)
    b = lookup[cs[ok], cd[ok]]
    rows = np.nonzero(ok)[0]
    hit = b >= 0
    return value + float(quad[rows[hit], b[hit]].sum())


@functools.cache
def _all_partial_matchings(n1: int, n2: int) -> np.ndarray:
    """Every partial injective matching as rows of column indices, ``n2`` meaning unmatched."""
    found: list[tuple[int, ...]] = []

    def extend(prefix: tuple[int, ...], used: frozenset[int]) -> None:
        if len(prefix) == n1:
            found.append(prefix)
            return
        extend(prefix + (n2,), used)
        for col in range(n2):
            if col not in used:
                extend(prefix + (col,), used | {col})

    extend((), frozenset())
    return np.array(found, dtype=np.int64)


def brute_force(unary: torch.Tensor, quad: torch.Tensor, el: torch.Tensor, er: torch.Tensor) -> float:
    """Exact minimum over all partial injective matchings (n <= 7), vectorised over matchings."""
    return brute_force_matching(unary, quad, el, er)[1]


def brute_force_matching(
    unary: torch.Tensor, quad: torch.Tensor, el: torch.Tensor, er: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Exact minimiser (0/1 ``[n1, n2]``) and minimum over all partial injective matchings (n <= 7).

    Padding edges (``-1`` in either row) are skipped.
    """
    u, q, a, b = unary.double().numpy(), quad.double().numpy(), el.numpy(), er.numpy()
    keep_a, keep_b = (a >= 0).all(0), (b >= 0).all(0)
    q, a, b = q[keep_a][:, keep_b], a[:, keep_a], b[:, keep_b]
    n1, n2 = u.shape
    sigma = _all_partial_matchings(n1, n2)
    unary_ext = np.concatenate([u, np.zeros((n1, 1))], axis=1)
    # Dense lookup R[a, k, l] = Σ_b Q[a, b] over right edges b = (k, l); the dummy index n2 gives 0.
    lookup = np.zeros((q.shape[0], n2 + 1, n2 + 1))
    for index in range(b.shape[1]):
        lookup[:, b[0, index], b[1, index]] += q[:, index]
    values = unary_ext[np.arange(n1), sigma].sum(1)
    if a.shape[1]:
        values += lookup[np.arange(a.shape[1]), sigma[:, a[0]], sigma[:, a[1]]].sum(1)
    best = int(values.argmin())
    matching = torch.zeros(n1, n2 + 1)
    matching[torch.arange(n1), torch.from_numpy(sigma[best])] = 1.0
    return matching[:, :n2], float(values[best])


def multi_restart_local_search(
    unary: torch.Tensor,
    quad: torch.Tensor,
    el: torch.Tensor,
    er: torch.Tensor,
    restarts: int = 20,
    seed: int = 0,
) -> float:
    """Slow, strong reference: first-improvement local search (move / unassign / swap) from random starts."""
    u, q, a, b = unary.double().numpy(), quad.double().numpy(), el.numpy(), er.numpy()
    n1, n2 = u.shape
    rng = np.random.default_rng(seed)
    lookup = np.full((n2 + 1, n2 + 1), -1, dtype=np.int64)
    lookup[b[0], b[1]] = np.arange(b.shape[1])
    out_edges = [np.nonzero(a[0] == i)[0] for i in range(n1)]
    in_edges = [np.nonzero(a[1] == i)[0] for i in range(n1)]

    def node_cost(sigma: np.ndarray, i: int, col: int) -> float:
        """Cost terms touching row i if it were at ``col`` (others fixed)."""
        if col < 0:
            return 0.0
        value = u[i, col]
        for e in out_edges[i]:
            other = sigma[a[1, e]]
            if other >= 0 and a[1, e] != i:
                idx = lookup[col, other]
                if idx >= 0:
                    value += q[e, idx]
        for e in in_edges[i]:
            other = sigma[a[0, e]]
            if other >= 0 and a[0, e] != i:
                idx = lookup[other, col]
                if idx >= 0:
                    value += q[e, idx]
        return value

    best = 0.0
    for restart in range(restarts):
        sigma = -np.ones(n1, dtype=np.int64)
        if restart > 0:
            perm = rng.permutation(n2)[:n1]
            sigma[: len(perm)] = perm
            sigma[rng.random(n1) < 0.3] = -1
        value = _objective_numpy(sigma, u, q, a, b)
        improved = True
        while improved:
            improved = False
            owner = -np.ones(n2, dtype=np.int64)
            for i, c in enumerate(sigma):
                if c >= 0:
                    owner[c] = i
            for i in rng.permutation(n1):
                for col in range(-1, n2):
                    if col == sigma[i]:
                        continue
                    trial = sigma.copy()
                    if col >= 0 and owner[col] >= 0:
                        trial[owner[col]] = sigma[i]
                    trial[i] = col
                    new_value = _objective_numpy(trial, u, q, a, b)
                    if new_value < value - 1e-9:
                        sigma, value, improved = trial, new_value, True
                        owner[:] = -1
                        for r, c in enumerate(sigma):
                            if c >= 0:
                                owner[c] = r
                        break
        best = min(best, value)
    del node_cost
    return best
