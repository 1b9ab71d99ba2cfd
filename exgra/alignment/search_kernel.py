"""The local search of :mod:`exgra.alignment.solver` compiled for the CPU (numba), one chain at a time.

The torch search runs all chains as one batch: ~75 tensor ops per round, each a few microseconds of
dispatch on tensors of a few hundred numbers, which is most of a training step's alignment time on a CPU
(and nearly free on a GPU, where the torch search stays). This kernel computes exactly the same rounds per
chain in plain loops: the same linear term, the same move deltas in the same float32 operations and order,
the same best move per row (first minimum), the same ranks and conflict rules, the same cap on rounds. So it
returns the same matchings (tests/alignment/test_search_kernel.py checks it against the torch search on
pipeline problems) and all the solver's tests apply to both.

Only problems with the dense image table (up to n ≈ 64) use it; larger ones keep the torch search over
incidence lists.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a core dependency; without it the torch search runs
    numba = None

NO_RANK = np.int64(1 << 62)
INF = np.float32(np.inf)
ZERO = np.float32(0.0)


def _kernel(
    sigma: np.ndarray,  # [C, n1] int64, updated in place
    owner: np.ndarray,  # [C] int64: each chain's problem
    eject: np.ndarray,  # [C] bool: the chain tries ejection moves
    adjacent: bool,  # ejections of adjacent rows too
    table: np.ndarray,  # [P, 2, E1, W, W] float32 image table
    unary: np.ndarray,  # [P, n1 * W] float32
    src: np.ndarray,  # [P, E1] int64 (dropped edges: 0)
    dst: np.ndarray,  # [P, E1] int64
    keep: np.ndarray,  # [P, E1] bool: a kept edge
    half_partner: np.ndarray,  # [P, 2 * E1] int64
    bag_order: np.ndarray,  # [P, 2 * E1] int64: the half edges grouped by row
    bag_start: np.ndarray,  # [P, n1] int64: where each row's group starts
    adjacency: np.ndarray,  # [P, n1, n1] bool
    n2: int,
    neg_tolerance: np.float32,
    max_rounds: int,
) -> None:
    chains, n1 = sigma.shape
    e1 = src.shape[1]
    width = n2 + 1
    halves = 2 * e1
    h = np.empty((n1, width), dtype=np.float32)
    acc = np.empty(width, dtype=np.float32)
    current = np.empty(n1, dtype=np.float32)
    images = np.empty((2, n1, n1), dtype=np.float32)
    free = np.empty(width, dtype=np.bool_)
    free_value = np.empty(n1, dtype=np.float32)
    free_column = np.empty(n1, dtype=np.int64)
    gain = np.empty(n1, dtype=np.float32)
    steal = np.empty(n1, dtype=np.float32)
    delta = np.empty(n1, dtype=np.float32)
    delta_bits = delta.view(np.int32)
    choice = np.empty(n1, dtype=np.int64)
    adjacent_column = np.empty((n1, n1), dtype=np.int64)
    rank = np.empty(n1, dtype=np.int64)
    partner = np.empty(n1, dtype=np.int64)
    new_column = np.empty(n1, dtype=np.int64)
    partner_new = np.empty(n1, dtype=np.int64)
    bucket = np.empty(n1, dtype=np.int64)
    claim = np.empty(n1, dtype=np.int64)
    nearby = np.empty(n1, dtype=np.int64)
    column_best = np.empty(width + n1, dtype=np.int64)
    accept = np.empty(n1, dtype=np.bool_)
    changed = np.empty(n1, dtype=np.bool_)  # rows whose column changed in the last round
    for chain in range(chains):
        p = owner[chain]
        sig = sigma[chain]
        with_ejection = eject[chain]
        first_round = True
        for _ in range(max_rounds):
            # h = C + (A + Aᵀ)x: per row, its half edges' table rows at the partner's column, summed in the
            # order of the torch search's embedding_bag, then added to the unary costs. A row none of whose
            # partners moved in the last round keeps its h (the same sum of the same numbers).
            for i in range(n1):
                stop = bag_start[p, i + 1] if i + 1 < n1 else halves
                stale = first_round
                if not stale:
                    for position in range(bag_start[p, i], stop):
                        if changed[half_partner[p, bag_order[p, position]]]:
                            stale = True
                            break
                if stale:
                    acc[:] = ZERO
                    for position in range(bag_start[p, i], stop):
                        half = bag_order[p, position]
                        side = half // e1
                        edge = half - side * e1
                        column = sig[half_partner[p, half]]
                        for c in range(width):
                            acc[c] += table[p, side, edge, column, c]
                    for c in range(width):
                        h[i, c] = unary[p, i * width + c] + acc[c]
                current[i] = h[i, sig[i]]
            first_round = False
            # Per row pair: summed cost of the current / exchanged images of the edges between them.
            images[:] = ZERO
            for edge in range(e1):
                i, j = src[p, edge], dst[p, edge]
                ci, cj = sig[i], sig[j]
                images[0, i, j] += table[p, 1, edge, ci, cj]
                images[1, i, j] += table[p, 1, edge, cj, ci]
            free[:] = True
            for i in range(n1):
                if sig[i] < n2:
                    free[sig[i]] = False
            for j in range(n1):
                best, best_column = INF, 0
                for c in range(n2):
                    if free[c]:
                        value = h[j, c] - current[j]
                        if value < best:
                            best, best_column = value, c
                free_value[j], free_column[j] = best, best_column
                g = best + current[j]
                gain[j] = g if g < ZERO else ZERO
            any_candidate = False
            for i in range(n1):
                # Moves in the torch search's buffer order (single, swap, steal, ejection); the first
                # minimum wins. Single moves: the best free column, then the dummy (always free).
                best, best_choice = free_value[i], free_column[i]
                value = h[i, n2] - current[i]
                if value < best:
                    best, best_choice = value, n2
                for j in range(n1):
                    base = h[i, sig[j]] - current[i] - current[j]
                    stolen = base + (images[0, i, j] + images[0, j, i])
                    value = stolen + h[j, sig[i]] + (images[1, i, j] + images[1, j, i])
                    steal[j] = INF if (i == j or sig[j] == n2) else stolen
                    if i != j and value < best:
                        best, best_choice = value, width + j
                for j in range(n1):
                    if steal[j] < best:
                        best, best_choice = steal[j], width + n1 + j
                if with_ejection:
                    for j in range(n1):
                        if adjacency[p, i, j]:
                            if not adjacent:
                                continue
                            # j moves with i already at σ(j): j's half edges with partner i change their
                            # table row from i's old column to its new one (in the slot order: by half edge).
                            acc[:] = ZERO
                            stop = bag_start[p, j + 1] if j + 1 < n1 else halves
                            for position in range(bag_start[p, j], stop):
                                half = bag_order[p, position]
                                if half_partner[p, half] != i or not keep[p, half % e1]:
                                    continue
                                side = half // e1
                                edge = half - side * e1
                                for c in range(width):
                                    acc[c] += table[p, side, edge, sig[j], c]
                                    acc[c] -= table[p, side, edge, sig[i], c]
                            after_best, after_column = INF, 0
                            for c in range(width):
                                if free[c]:
                                    value = h[j, c] + acc[c]
                                    if value < after_best:
                                        after_best, after_column = value, c
                            adjacent_column[i, j] = after_column
                            value = steal[j] + after_best
                        else:
                            value = steal[j] + gain[j]
                        if value < best:
                            best, best_choice = value, width + 2 * n1 + j
                delta[i], choice[i] = best, best_choice
                if best < neg_tolerance:
                    any_candidate = True
            if not any_candidate:
                break
            # Apply the moves that rank first among all proposals touching their rows or those rows'
            # neighbours (and among those wanting the same free column): their changes add up exactly.
            for i in range(n1):
                pick = choice[i]
                use_pair = pick >= width
                use_steal = pick >= width + n1
                mate = (pick - width) % n1 if use_pair else i
                partner[i] = mate
                new_column[i] = sig[mate] if use_pair else pick
                partner_new[i] = n2 if use_steal else (sig[i] if use_pair else pick)
                bucket[i] = width + i if pick >= n2 else pick
                if pick >= width + 2 * n1:
                    to = free_column[mate]
                    if adjacent and adjacency[p, i, mate]:
                        to = adjacent_column[i, mate]
                    partner_new[i] = to
                    bucket[i] = to
                if delta[i] < neg_tolerance:
                    rank[i] = np.int64(delta_bits[i]) * -n1 + i
                else:
                    rank[i] = NO_RANK
            for i in range(n1):
                claim[i] = rank[i]
            for i in range(n1):
                if rank[i] < claim[partner[i]]:
                    claim[partner[i]] = rank[i]
            for i in range(n1):
                nearby[i] = claim[i]
            for edge in range(e1):
                if keep[p, edge]:
                    u, v = src[p, edge], dst[p, edge]
                    if claim[u] < nearby[v]:
                        nearby[v] = claim[u]
                    if claim[v] < nearby[u]:
                        nearby[u] = claim[v]
            column_best[:] = NO_RANK
            for i in range(n1):
                if rank[i] < column_best[bucket[i]]:
                    column_best[bucket[i]] = rank[i]
            for i in range(n1):
                accept[i] = (
                    delta[i] < neg_tolerance
                    and rank[i] <= nearby[i]
                    and rank[i] <= nearby[partner[i]]
                    and rank[i] == column_best[bucket[i]]
                )
            changed[:] = False
            for i in range(n1):
                if accept[i]:
                    sig[partner[i]] = partner_new[i]
                    changed[partner[i]] = True
            for i in range(n1):
                if accept[i]:
                    sig[i] = new_column[i]
                    changed[i] = True


def _greedy_kernel(scores: np.ndarray, sigma: np.ndarray) -> None:
    """Greedy rounding of ``scores [S, n1, n2]`` into ``sigma [S, n1]`` (filled with ``n2``), as
    ``solver._greedy_rounding``: repeatedly match every mutual best (row, column) pair with negative cost
    (first minimum per row and per column)."""
    starts, n1, n2 = scores.shape
    row_best = np.empty(n1, dtype=np.int64)
    row_value = np.empty(n1, dtype=np.float32)
    column_best = np.empty(n2, dtype=np.int64)
    column_value = np.empty(n2, dtype=np.float32)
    row_open = np.empty(n1, dtype=np.bool_)
    column_open = np.empty(n2, dtype=np.bool_)
    for start in range(starts):
        row_open[:] = True
        column_open[:] = True
        for _ in range(min(n1, n2)):
            column_value[:] = INF
            column_best[:] = 0
            for i in range(n1):
                best, best_column = INF, 0
                for c in range(n2):
                    value = scores[start, i, c]
                    if not (row_open[i] and column_open[c] and value < ZERO):
                        value = INF
                    if value < best:
                        best, best_column = value, c
                    if value < column_value[c]:
                        column_value[c], column_best[c] = value, i
                row_value[i], row_best[i] = best, best_column
            matched = False
            for i in range(n1):
                if row_value[i] < INF and column_best[row_best[i]] == i:
                    sigma[start, i] = row_best[i]
                    matched = True
            if not matched:
                break
            for i in range(n1):
                if sigma[start, i] < n2:
                    row_open[i] = False
                    column_open[sigma[start, i]] = False


def _compiled(function):  # noqa: ANN001, ANN202
    """``function`` compiled on first use, cached beside this module or in numba's user cache; without any
    writable cache location (read-only install and home), compiled in every process instead."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


local_search = _compiled(_kernel) if numba is not None else None
greedy_rounding = _compiled(_greedy_kernel) if numba is not None else None
