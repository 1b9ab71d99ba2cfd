"""Partial graph matching (the problem LPMP solves in the reference), in batched torch; on the CPU the local
search and the greedy rounding run compiled (:mod:`exgra.alignment.search_kernel`, same results).

Problem (REFERENCE §2.7): given unary costs ``C [n1, n2]``, quadratic costs ``Q [E1, E2]`` and the two
edge lists, find a partial injective matching ``x`` (every row and every column matched at most once;
unmatched nodes cost nothing) minimising

    Σ_ij C_ij x_ij + Σ_{a=(i,j)∈E1, b=(k,l)∈E2} Q_ab x_ik x_jl.

Algorithm: a vectorised best-improvement local search over a matching ``σ`` (row → column, or the
dummy column ``n2`` for "unmatched"). The quadratic part is ``xᵀAx`` with a sparse ``A``; its linear
term ``g = (A + Aᵀ)x`` is read, per left edge, from the right graph's costs at its partner's column: a
dense per-edge table of image costs for problems up to n ≈ 64 (summed per row with one ``embedding_bag``),
CSR-like incidence lists beyond. With it come the exact objective changes of every move: move a row to a
free column or to the dummy, swap the columns of two rows, let one row take another's column (the other
becomes unmatched) and, in the chains of the random starts and kicks, an ejection: row i takes row j's
column and j moves to its best free column (i, j not adjacent in E1, so the two changes add up). Every row
proposes its best move; proposals that rank first among all proposals touching their rows or those rows'
E1-neighbours (and among those wanting the same free column) are applied together, since their changes add
up exactly. All starts of all problems are searched as one batch of "chains"; a chain without an improving
move is final and leaves the batch.

Starts: greedy on the unary costs, greedy on a linearisation at the uniform matching, the warm start
(backward solves) and, in a forward ``iterated`` solve, 16 greedy roundings of that linearisation with fixed
pseudo-random noise (seeded by the sizes; fewer above n = 64). Then, for the problems whose best matching
fewer than half of the starts reached, kicks: 48 noisy greedy roundings (12 above n = 64) of the incumbent's
linearisation, searched again as one batch, repeated while they improve. A Gilmore–Lawler-style lower
bound certifies a problem optimal and skips its kicks (``_solve_and_keep`` reports the certificate per
problem). The result is a deterministic function of the input, and never worse than the plain local search
from the same greedy starts (whose chains keep the plain moves).
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from exgra.alignment import search_kernel

__all__ = ["Search", "edge_pair_indicator", "matching_objective", "solve_matching"]

Search = Literal["iterated", "plain", "warm"]

_MAX_ITERATIONS_FACTOR = 8
_NO_RANK = 1 << 62  # the rank of a row without an improving move (any candidate's rank is below it)
# Largest dense image table (floats, all problems together) the local search builds: 64 MiB, which covers
# six problems of n = 64 (k = 5); larger problems use the incidence lists.
_DENSE_TABLE_LIMIT = 1 << 24
_SMALL_TABLE_WIDTH = 33  # up to n2 = 32 the table pays off even for the plain search's few starts
# The compiled CPU search and greedy rounding (exgra.alignment.search_kernel: same rounds, same results);
# EXGRA_SOLVER_KERNEL=torch runs the batched torch code on the CPU as well (it always runs on other devices,
# and for problems without the dense table).
_KERNEL_CHOICE = os.environ.get("EXGRA_SOLVER_KERNEL", "numba")
if _KERNEL_CHOICE not in ("numba", "torch"):
    warnings.warn(
        f"EXGRA_SOLVER_KERNEL={_KERNEL_CHOICE!r} is neither 'numba' nor 'torch'; using 'numba'", stacklevel=1
    )
USE_KERNEL = search_kernel.local_search is not None and _KERNEL_CHOICE != "torch"


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

    ``unary [P, n1 * W]`` (``W = n2 + 1``; column ``n2`` is the zero-cost dummy "unmatched"),
    ``quadratic_flat [P, E1 * (E2 + 1)]`` with a zero "no edge" column ``E2``, ``edge_lookup [P, W²]``
    mapping a column pair ``(k, l)`` to its (first) E2 edge or ``E2``, and a CSR-like incidence table
    ``incidence [P, 2W, 2D]``: row ``l`` lists the E2 edges entering column ``l`` (ids, then their source
    columns), row ``W + k`` the edges leaving ``k`` (ids, then their target columns), padded with ``E2``
    and the dummy column.
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
        unary_input = unary
        unary = unary.clone()
        if bool((loop1.any(1) & loop2.any(1)).any()):
            # x_ik·x_ik = x_ik: a loop-to-loop term is a unary cost; any other term with a loop is
            # infeasible (a row or column would be matched twice) and is dropped below.
            rows = torch.nn.functional.one_hot(src1.clamp(min=0), n1).float() * loop1[..., None]
            cols = torch.nn.functional.one_hot(src2.clamp(min=0), n2).float() * loop2[..., None]
            unary += rows.transpose(1, 2) @ quadratic @ cols
        self.loop_unary = unary - unary_input
        keep1 = valid1 & ~loop1
        keep2 = valid2 & ~loop2
        quadratic = quadratic * keep1[:, :, None] * keep2[:, None, :]
        self.quadratic_input = quadratic
        self._image_table: Tensor | None = None
        self._uniform: Tensor | None = None
        # Building the table costs about as much as a few search rounds over the incidence lists at n = 64:
        # the plain search (3 starts) uses it only for small problems (or when a forward solve built it).
        self.table_wanted = True
        width = n2 + 1
        src1 = torch.where(keep1, src1, 0)
        dst1 = torch.where(keep1, dst1, 0)
        src2 = torch.where(keep2, src2, n2)
        dst2 = torch.where(keep2, dst2, n2)
        # Duplicate E2 edges: the index that wins the scatter receives the summed costs of all copies.
        trash = width * width
        keys = torch.where(keep2, src2 * width + dst2, trash)
        lookup = torch.full((problems, trash + 1), e2, dtype=torch.long, device=device)
        lookup.scatter_(1, keys, torch.arange(e2, device=device).expand(problems, e2).contiguous())
        lookup[:, trash] = e2
        canonical = lookup.gather(1, keys)
        merged = torch.zeros(problems, e1, e2 + 1, device=device)
        merged.scatter_add_(2, canonical[:, None, :].expand(-1, e1, -1), quadratic)
        merged[:, :, e2] = 0.0
        primary = keep2 & (canonical == torch.arange(e2, device=device))
        self.edge_lookup = lookup[:, :trash].contiguous()
        self.quadratic_flat = merged.reshape(problems, -1)
        self.unary = torch.cat([unary, unary.new_zeros(problems, n1, 1)], dim=2).reshape(problems, -1)
        self.problems, self.n1, self.n2, self.e1, self.e2, self.width = problems, n1, n2, e1, e2, width
        self._primary = primary  # the E2 edges that stand for their duplicates (incidence lists)
        self._incidence: tuple[Tensor, int] | None = None
        # Half edges: edge a=(u,v) adds to row u (partner v, in-list of σ(v)) and to row v (partner u,
        # out-list of σ(u)).
        arange1 = torch.arange(e1, device=device)
        self.half_node = torch.cat([src1, dst1], 1)  # [P, 2E1]: the row each half edge adds to
        self.half_row = self.half_node * width  # its offset in the flat [n1 * W] layout
        # The half edges grouped by their row (one order for all chains of a problem), and where each row's
        # group starts: the dense-table search sums each group with one embedding_bag.
        self.half_row_order = self.half_node.argsort(dim=1, stable=True)
        per_row = torch.zeros(problems, n1, dtype=torch.long, device=device)
        per_row.scatter_add_(1, self.half_node, torch.ones_like(self.half_node))
        self.half_row_start = per_row.cumsum(1) - per_row
        self.half_partner = torch.cat([dst1, src1], 1)
        self.half_side = torch.cat([arange1 * 0, arange1 * 0 + width])  # [2E1]
        self.half_edge = torch.cat([arange1, arange1]) * (e2 + 1)
        self.edge_offset = arange1 * (e2 + 1)
        self.src, self.dst, self.keep = src1, dst1, keep1
        self.right_src, self.right_dst = src2, dst2
        self.pair_index = src1 * n1 + dst1
        # (max degree) · max |Q| for the tolerance; shared with re-solves, which change only the unary costs.
        spare = n1 * width
        rows = torch.where(keep1.repeat(1, 2), self.half_row, spare)
        degree = torch.zeros(problems, spare + 1, device=device)
        degree.scatter_add_(1, rows, torch.ones_like(rows, dtype=degree.dtype))
        self.quadratic_scale = 0.0
        if e1 and e2:
            self.quadratic_scale = float(degree[:, :spare].amax()) * float(self.quadratic_flat.abs().amax())

    def incidence_lists(self) -> tuple[Tensor, int]:
        """The incidence table ``[P, 2W, 2D]`` and its depth ``D`` (built on first use: the dense-table
        search never needs it)."""
        if self._incidence is None:
            problems, n2, e2, width = self.problems, self.n2, self.e2, self.width
            device = self.unary.device
            src2, dst2, primary = self.right_src, self.right_dst, self._primary
            # Incidence lists of the right graph per column (in-edges, out-edges), padded to one depth.
            ends = torch.stack([dst2, src2], 1)  # [P, 2, E2]: the column an edge is listed under
            others = torch.stack([src2, dst2], 1)  # the column the listed edge leads to
            bucket = torch.where(primary[:, None, :], ends, width)
            onehot = torch.nn.functional.one_hot(bucket, width + 1)
            slot = (onehot.cumsum(2) * onehot).sum(3) - 1  # rank of the edge within its column's list
            depth = max(int(onehot[..., :width].sum(2).amax()) if e2 else 0, 1)
            side = torch.arange(2, device=device)[None, :, None] * width
            flat = torch.where(primary[:, None, :], (side + bucket) * depth + slot, 2 * width * depth)
            ids = torch.full((problems, 2 * width * depth + 1), e2, dtype=torch.long, device=device)
            ids.scatter_(
                1, flat.reshape(problems, -1), torch.arange(e2, device=device).repeat(2).expand(problems, -1)
            )
            ids = ids[:, :-1].view(problems, 2 * width, depth)
            padded_others = torch.cat([others, others.new_full((problems, 2, 1), n2)], 2)
            columns = torch.cat(
                [
                    padded_others[:, 0].gather(1, ids[:, :width].reshape(problems, -1)),
                    padded_others[:, 1].gather(1, ids[:, width:].reshape(problems, -1)),
                ],
                1,
            ).view(problems, 2 * width, depth)
            self._incidence = (torch.cat([ids, columns], 2), depth)
        return self._incidence

    def image_table(self) -> Tensor | None:
        """Dense per-edge image costs ``[P, 2, E1, W, W]`` for the local search, or ``None`` when too large.

        ``D[p, a, k, l]`` is what the left edge ``a`` pays when mapped onto the column pair ``(k, l)``
        (duplicate right edges summed, 0 for no edge or the dummy). Row ``[p, 0, a, c]`` is ``D[p, a, :, c]``
        (what ``a``'s source row pays per column when ``a``'s target sits at column ``c``), row
        ``[p, 1, a, c]`` is ``D[p, a, c, :]``. With it the linear term is one contiguous row lookup per
        half edge instead of a walk over incidence lists (a forward solve of six n = 32 problems ran 2.7x
        faster with it); it needs ``2·E1·W²`` floats per problem, so large problems keep the lists.
        """
        size = self.problems * 2 * self.e1 * self.width**2
        if self._image_table is None and self.table_wanted and size <= _DENSE_TABLE_LIMIT:
            problems, e1, width = self.problems, self.e1, self.width
            keys = (self.right_src * width + self.right_dst)[:, None, :].expand(-1, e1, -1)
            quadratic = self.quadratic_input
            dense = quadratic.new_zeros(problems, e1, width * width).scatter_add_(2, keys, quadratic)
            dense = dense.view(problems, e1, width, width)
            self._image_table = torch.stack([dense.transpose(2, 3), dense], 1).contiguous()
        return self._image_table

    def with_unary(self, unary: Tensor) -> _Problem:
        """The same problem with other unary costs ``[P, n1, n2]`` (loop terms folded in again)."""
        if unary.shape != (self.problems, self.n1, self.n2):
            raise ValueError(f"unary_costs must have shape {[self.problems, self.n1, self.n2]}")
        other = copy.copy(self)
        other._uniform = None
        unary = unary.detach().float().to(self.unary.device) + self.loop_unary
        other.unary = torch.cat([unary, unary.new_zeros(self.problems, self.n1, 1)], dim=2).reshape(
            self.problems, -1
        )
        return other

    def unary_matrix(self) -> Tensor:
        """Unary costs ``[P, n1, n2]`` (without the dummy column)."""
        return self.unary.view(self.problems, self.n1, self.width)[..., : self.n2]

    def uniform_linearisation(self) -> Tensor:
        """``C + (A + Aᵀ)x`` at the uniform fractional matching ``x = 1/n2``: ``[P, n1, n2]`` (kept: the
        greedy and the random starts both use it)."""
        if self._uniform is not None:
            return self._uniform
        problems, e1, width = self.problems, self.e1, self.width
        quadratic = self.quadratic_flat.view(problems, e1, self.e2 + 1)[..., : self.e2]
        linear = self.unary.view(problems, self.n1, width).clone()
        for rows, right in ((self.src, self.right_src), (self.dst, self.right_dst)):
            by_column = quadratic.new_zeros(problems, e1, width)
            by_column.scatter_add_(2, right[:, None, :].expand(-1, e1, -1), quadratic / self.n2)
            linear.scatter_add_(1, rows[..., None].expand(-1, -1, width), by_column)
        self._uniform = linear[..., : self.n2]
        return self._uniform

    def objective(self, sigma: Tensor, only: Tensor | None = None) -> Tensor:
        """Objective of matchings ``sigma [P, S, n1]`` -> ``[P, S]`` (of the problems ``only``, if given)."""
        problems, starts, n1 = sigma.shape
        unary, src, dst = self.unary, self.src, self.dst
        lookup, quadratic = self.edge_lookup, self.quadratic_flat
        if only is not None:
            unary, src, dst, lookup, quadratic = (
                t.index_select(0, only) for t in (unary, src, dst, lookup, quadratic)
            )
        index = sigma + torch.arange(n1, device=sigma.device) * self.width
        unary = unary.gather(1, index.view(problems, -1)).view(problems, starts, n1).sum(2)
        col_src = sigma.gather(2, src[:, None, :].expand(-1, starts, -1))
        col_dst = sigma.gather(2, dst[:, None, :].expand(-1, starts, -1))
        edges = lookup.gather(1, (col_src * self.width + col_dst).view(problems, -1))
        edges = edges.view(problems, starts, self.e1) + self.edge_offset
        pairs = quadratic.gather(1, edges.view(problems, -1)).view(problems, starts, self.e1)
        return unary + pairs.sum(2)

    def lower_bound(self) -> Tensor:
        """A lower bound on the optimum ``[P]`` (Gilmore–Lawler style, then a dual of the assignment).

        Each left edge ``a = (i, j)`` pays at least half of its best image given ``i``'s column plus half
        given ``j``'s (0 when unmatched or not an edge), so
        ``Ĉ_ik = C_ik + ½Σ_{a from i} min(0, min_l Q_a(k, l)) + ½Σ_{a into i} min(0, min_k' Q_a(k', k))``
        bounds each row's share; the partial assignment on ``Ĉ`` is bounded by the feasible dual
        ``u_i = min(0, min_k Ĉ_ik)``, ``v_k = min(0, min_i Ĉ_ik - u_i)``.
        """
        problems, e1, e2, width = self.problems, self.e1, self.e2, self.width
        adjusted = self.unary.view(problems, self.n1, width).clone()
        if e1 and e2:
            quadratic = self.quadratic_flat.view(problems, e1, e2 + 1)[..., :e2]
            for rows, right in ((self.src, self.right_src), (self.dst, self.right_dst)):
                best = quadratic.new_zeros(problems, e1, width)
                best.scatter_reduce_(2, right[:, None, :].expand(-1, e1, -1), quadratic, "amin")
                best = best * self.keep[..., None]
                adjusted.scatter_add_(1, rows[..., None].expand(-1, -1, width), 0.5 * best)
        adjusted = adjusted[..., : self.n2]
        row_dual = adjusted.amin(2).clamp(max=0.0)
        column_dual = (adjusted - row_dual[..., None]).amin(1).clamp(max=0.0)
        return row_dual.sum(1) + column_dual.sum(1)

    def adjacency(self) -> Tensor:
        """``[P, n1, n1]`` bool: rows joined by a kept E1 edge (either direction)."""
        if getattr(self, "_adjacency", None) is None:
            src, dst = self.neighbour_pairs()
            size = self.n1 + 1
            adjacency = torch.zeros(self.problems, size, size, dtype=torch.bool, device=src.device)
            adjacency[torch.arange(self.problems, device=src.device)[:, None], src, dst] = True
            self._adjacency = adjacency[:, : self.n1, : self.n1]
        return self._adjacency

    def ejection_slots(self) -> dict[str, Tensor]:
        """The ordered row pairs (mover i, row j) joined by an E1 edge, one "slot" each, for the ejections of
        adjacent rows: ``order [P, 2E1]`` sorts the half edges by slot (those of j with partner i), ``first
        [P, S]`` is each slot's first position in that order (``2E1`` for an unused slot), ``mover``/``row``
        ``[P, S]`` its rows (0 for an unused slot, with ``valid`` false) and ``of_pair [P, n1²]`` the slot of
        ``i·n1 + j`` (``S`` where i, j are not adjacent)."""
        if getattr(self, "_ejection_slots", None) is None:
            n1, device = self.n1, self.unary.device
            positions = self.half_row.shape[1]
            key = torch.where(self.keep.repeat(1, 2), self.half_partner * n1 + self.half_node, n1 * n1)
            order = key.argsort(dim=1, stable=True)
            ordered = key.gather(1, order)
            starts = torch.ones_like(ordered, dtype=torch.bool)
            starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
            slot = starts.cumsum(1) - 1
            count = int(slot.amax()) + 1 if positions else 0
            slot_key = torch.full((self.problems, count), n1 * n1, dtype=torch.long, device=device)
            slot_key.scatter_(1, slot, ordered)
            first = torch.full((self.problems, count), positions, dtype=torch.long, device=device)
            first.scatter_reduce_(1, slot, torch.arange(positions, device=device).expand_as(slot), "amin")
            valid = slot_key < n1 * n1
            pairs = torch.where(valid, slot_key, 0)
            of_pair = torch.full((self.problems, n1 * n1 + 1), count, dtype=torch.long, device=device)
            of_pair.scatter_(1, slot_key, torch.arange(count, device=device).expand_as(slot_key).contiguous())
            self._ejection_slots = {
                "order": order,
                "first": first,
                "mover": pairs // n1,
                "row": pairs % n1,
                "valid": valid,
                "of_pair": of_pair[:, : n1 * n1],
            }
        return self._ejection_slots

    def kernel_arrays(self) -> tuple[np.ndarray, ...]:
        """The problem's index arrays for :mod:`search_kernel`: src, dst, keep, half_partner, the half edges'
        order by row and each row's start, and the adjacency (shared by re-solves)."""
        if getattr(self, "_kernel_arrays", None) is None:
            arrays = (
                self.src,
                self.dst,
                self.keep,
                self.half_partner,
                self.half_row_order,
                self.half_row_start,
                self.adjacency(),
            )
            self._kernel_arrays = tuple(array.contiguous().numpy() for array in arrays)
        return self._kernel_arrays

    def neighbour_pairs(self) -> tuple[Tensor, Tensor]:
        """Both directions of every kept E1 edge, invalid ones pointing at a spare slot ``n1``."""
        spare = self.n1
        src = torch.where(self.keep, self.src, spare)
        dst = torch.where(self.keep, self.dst, spare)
        return torch.cat([src, dst], dim=1), torch.cat([dst, src], dim=1)


_READ_FOR_BOTH_SIDES = ("pair_index", "image_base")  # [C, 1, E1] per chain, read as [C, 2, E1]


class _Chains:
    """The matchings under local search ("chains": one start of one problem each), flattened into one batch
    dimension ``C``, so that chains whose search has converged can leave the batch: the search costs per
    chain and iteration, and chains converge after very different numbers of iterations.

    Holds per chain the problem's small index tensors; the large tables stay per problem and are read
    with flat offsets. :meth:`terms` gives ``h = C + (A + Aᵀ)x`` and the image costs of every E1 edge.
    """

    def __init__(
        self, problem: _Problem, owner: Tensor, ejection: Tensor | None = None, adjacent: bool = False
    ) -> None:
        self.problem = problem
        n1, width, e1 = problem.n1, problem.width, problem.e1
        device = owner.device
        chains = owner.shape[0]
        self.table = problem.image_table()
        # Per-chain index tensors (row c belongs to chain c), packed into one long tensor so that subset()
        # is one row selection (it runs every few search rounds); "[..., 1, E1]" ones are read expanded.
        per_chain = {
            "owner": owner,  # the problem of each chain
            "partner": problem.half_partner.index_select(0, owner),  # [C, 2 * E1]
            "pair_index": problem.pair_index.index_select(0, owner)[:, None, :],  # [C, 1, E1]
        }
        per_chain["neighbour_from"], per_chain["neighbour_to"] = (
            pairs.index_select(0, owner) for pairs in problem.neighbour_pairs()
        )
        half_edge = torch.arange(2 * e1, device=device) % max(e1, 1)
        if self.table is not None:
            # Row (problem, side, edge, column) of the table; side 0 for the source row's half edge.
            side = torch.arange(2 * e1, device=device) // max(e1, 1)
            table_row = ((owner[:, None] * 2 + side) * e1 + half_edge) * width
            # Flat index of D[p, a, 0, 0] (side 1 of the table), for both image lookups of each edge.
            image_base = (owner[:, None] * 2 * e1 + e1 + torch.arange(e1, device=device)) * width * width
            per_chain["image_base"] = image_base[:, None, :]
            order = problem.half_row_order.index_select(0, owner)
            per_chain["bag_partner"] = per_chain["partner"].gather(1, order)
            per_chain["bag_table_row"] = table_row.gather(1, order)
            per_chain["bag_start"] = problem.half_row_start.index_select(0, owner)
        else:
            per_chain["half_rows"] = problem.half_node.index_select(0, owner)  # [C, 2 * E1]
            per_chain["list_row"] = owner[:, None] * (2 * width) + problem.half_side
            per_chain["value_base"] = ((owner[:, None] * e1 + half_edge) * (problem.e2 + 1))[..., None]
            per_chain["lookup_base"] = owner[:, None, None] * (width * width)
            edge = torch.arange(e1, device=device)
            per_chain["edge_base"] = (owner[:, None, None] * e1 + edge) * (problem.e2 + 1)
        self.ejection = ejection is not None and bool(ejection.any())
        self.adjacent_ejection = adjacent and self.ejection and self.table is not None
        if self.adjacent_ejection:
            slots = {name: value.index_select(0, owner) for name, value in problem.ejection_slots().items()}
            order = slots["order"]
            per_chain["slot_table_row"] = table_row.gather(1, order)
            per_chain["slot_half_row"] = problem.half_node.index_select(0, owner).gather(1, order)
            per_chain["slot_half_partner"] = per_chain["partner"].gather(1, order)
            per_chain["slot_first"] = slots["first"]
            per_chain["slot_mover"] = slots["mover"]
            per_chain["slot_row"] = slots["row"]
            per_chain["slot_of_pair"] = slots["of_pair"]
            # Slots that do not exist, or chains without ejections: inf (never chosen).
            off = ~slots["valid"] | ~ejection[:, None]
            slot_off = torch.zeros(off.shape, device=device).masked_fill_(off, float("inf"))
        self.layout: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        start = 0
        for name, tensor in per_chain.items():
            width_of = tensor[0].numel()
            self.layout[name] = (start, start + width_of, tuple(tensor.shape[1:]))
            start += width_of
        self.packed = torch.cat([tensor.reshape(chains, -1) for tensor in per_chain.values()], 1)
        # Per-chain floats, packed likewise: the unary costs [C, n1 * W], then (ejection chains) the ejection
        # block [C, n1 * n1] and (adjacent ejections) the slots' offsets [C, S].
        self.packed_float = problem.unary.index_select(0, owner)
        # Ejection moves (row i takes row j's column, j moves to its best free column) for the chains that
        # use them; their delta is exact for non-adjacent i, j only, so adjacent pairs are blocked (inf).
        if self.ejection:
            blocked = problem.adjacency().index_select(0, owner) | ~ejection[:, None, None]
            block = torch.zeros(blocked.shape, device=device).masked_fill_(blocked, float("inf"))
            floats = [self.packed_float, block.view(chains, -1)]
            if self.adjacent_ejection:
                floats.append(slot_off)
            self.packed_float = torch.cat(floats, 1)
        self._unpack()
        # Constants of every search round, made once (each op costs microseconds here); subsets slice them.
        self.rows = torch.arange(n1, device=device)
        self.eye = torch.eye(n1, dtype=torch.bool, device=device)
        self.unmatched_bucket = width + self.rows
        if self.adjacent_ejection:
            # Each half edge gives two entries (weights +1, -1) to its slot's bag; subsets slice this.
            self.all_slot_weights = torch.tensor([1.0, -1.0], device=device).repeat(chains * 2 * max(e1, 1))
        self.constants = {
            "all_free": torch.ones(chains, width, dtype=torch.bool, device=device),
            "no_claim": torch.full((chains, 1), _NO_RANK, dtype=torch.long, device=device),
            "no_column_claim": torch.full((chains, width + n1), _NO_RANK, dtype=torch.long, device=device),
        }
        self._place(chains)

    def _unpack(self) -> None:
        """Set the per-chain tensors as views of ``packed``."""
        chains = self.packed.shape[0]
        n1, width = self.problem.n1, self.problem.width
        self.unary_costs = self.packed_float[:, : n1 * width]
        self.ejection_block = None
        if self.ejection:
            self.ejection_block = self.packed_float[:, n1 * width : n1 * (width + n1)].view(chains, n1, n1)
            self.slot_off = self.packed_float[:, n1 * (width + n1) :]
        for name, (start, stop, tail) in self.layout.items():
            view = self.packed[:, start:stop].view(chains, *tail)
            setattr(self, name, view.expand(-1, 2, -1) if name in _READ_FOR_BOTH_SIDES else view)

    def _place(self, chains: int) -> None:
        """Set what depends on the chains' positions in the batch (and on their number)."""
        self.__dict__.update({name: value[:chains] for name, value in self.constants.items()})
        # Flat row (chain, row) each half edge adds to; the rows of h are W-vectors.
        chain_index = torch.arange(chains, device=self.owner.device)[:, None]
        if self.table is None:
            target = chain_index * self.problem.n1 + self.half_rows
            self.column_base = target.view(chains, -1, 1) * self.problem.width
        else:
            self.bag_offsets = (chain_index * (2 * self.problem.e1) + self.bag_start).view(-1)
        if self.adjacent_ejection:
            self.slot_offsets = (chain_index * (4 * self.problem.e1) + 2 * self.slot_first).view(-1)
            self.slot_weights = self.all_slot_weights[: chains * 4 * self.problem.e1]
            self.slot_h_rows = (chain_index * self.problem.n1 + self.slot_row).view(-1)
            # Flat positions of the slots' (mover, row) entries in the moves buffer [C, n1, W + 3·n1].
            n1, width = self.problem.n1, self.problem.width
            within = self.slot_mover * (width + 3 * n1) + width + 2 * n1 + self.slot_row
            self.slot_positions = (chain_index * (n1 * (width + 3 * n1)) + within).view(-1)

    def subset(self, keep: Tensor) -> _Chains:
        """The chains at indices ``keep`` (a few row selections, no rebuilding)."""
        other = copy.copy(self)
        other.packed = self.packed.index_select(0, keep)
        other.packed_float = self.packed_float.index_select(0, keep)
        other._unpack()
        other._place(keep.shape[0])
        return other

    def terms(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``h [C, n1, W]`` and per E1 edge the cost of its current / reversed image ``[C, 2, E1]``."""
        problem = self.problem
        chains, n1 = sigma.shape
        width, e1 = problem.width, problem.e1
        # partner_col holds (σ(dst), σ(src)) per edge: the column each half edge's partner sits at.
        partner_col = sigma.gather(1, self.partner)
        if self.table is not None:
            # h rows: the unary costs plus, per row, the sum of its half edges' table rows (one fused
            # gather-and-sum; ~4x faster than index_select + index_add_ at 60 chains of n = 16).
            rows = torch.nn.functional.embedding_bag(
                (self.bag_table_row + sigma.gather(1, self.bag_partner)).view(-1),
                self.table.view(-1, width),
                self.bag_offsets,
                mode="sum",
            )
            linear = self.unary_costs.reshape(chains * n1, width) + rows
            # pairs[:, 0] = σ(dst), pairs[:, 1] = σ(src): keys D[σ(src), σ(dst)] (current), D[σ(dst), σ(src)].
            pairs = partner_col.view(chains, 2, e1)
            images = self.table.view(-1).take(pairs.flip(1) * width + pairs + self.image_base)
            return linear.view(chains, n1, width), images
        linear = self.unary_costs.reshape(chains * n1, width).clone()
        incidence, depth = problem.incidence_lists()
        incidence = incidence.view(-1, 2 * depth)
        listed = incidence.index_select(0, (self.list_row + partner_col).view(-1)).view(chains, 2 * e1, -1)
        ids, cols = listed[..., :depth], listed[..., depth:]
        values = problem.quadratic_flat.view(-1).take(ids + self.value_base)
        linear.view(-1).index_add_(0, (cols + self.column_base).view(-1), values.view(-1))
        pairs = partner_col.view(chains, 2, e1)
        keys = pairs.flip(1) * width + pairs + self.lookup_base
        edges = problem.edge_lookup.view(-1).take(keys)
        images = problem.quadratic_flat.view(-1).take(edges + self.edge_base)
        return linear.view(chains, n1, width), images


def _tolerance(problem: _Problem) -> float:
    """Smallest objective change that counts as an improvement: float32 round-off of one move's change.

    A move changes a row's unary cost and the costs of the E1 edges at that row, hence the scale
    ``max |C| + (max degree) · max |Q|``. (Scaling by the sum of *all* quadratic costs, which grows like
    n², made the search stop at moves worth less than 0.39 at n = 256 and cost 1–15 % of the objective.)
    """
    scale = float(problem.unary.abs().amax())
    if problem.e1 and problem.e2:
        scale += problem.quadratic_scale
    return 1e-6 * max(scale, 1.0)


def _greedy_rounding(scores: Tensor, n2: int) -> Tensor:
    """Round a cost matrix ``[P, S, n1, n2]`` to a partial matching: repeatedly match mutual best
    (row, column) pairs with negative cost. Returns ``sigma [P, S, n1]`` (``n2`` = unmatched)."""
    problems, starts, n1, _ = scores.shape
    sigma = torch.full((problems, starts, n1), n2, dtype=torch.long, device=scores.device)
    if USE_KERNEL and scores.device.type == "cpu" and scores.dtype == torch.float32:
        flat = scores.reshape(problems * starts, n1, n2).contiguous()
        search_kernel.greedy_rounding(flat.numpy(), sigma.view(problems * starts, n1).numpy())
        return sigma
    scores = scores.masked_fill(scores >= 0, float("inf"))
    row_ids = torch.arange(n1, device=scores.device)
    none_taken = torch.zeros(problems, starts, n2 + 1, dtype=torch.bool, device=scores.device)
    for _ in range(min(n1, n2)):
        best_value, best_col = scores.min(3)
        # min(2).indices: ~2x faster than argmin over a contiguous transposed copy, 7x than argmin(2) (both
        # give the first minimal row).
        best_row = scores.min(2).indices
        mutual = (best_row.gather(2, best_col) == row_ids) & (best_value < float("inf"))
        if not bool(mutual.any()):
            break
        sigma = torch.where(mutual, best_col, sigma)
        taken_cols = none_taken.scatter(2, torch.where(mutual, best_col, n2), True)
        scores = scores.masked_fill(mutual[..., None] | taken_cols[:, :, None, :n2], float("inf"))
    return sigma


def _local_search(
    problem: _Problem,
    sigma: Tensor,
    tolerance: float,
    only: Tensor | None = None,
    ejection: Tensor | None = None,
    adjacent: bool = False,
) -> Tensor:
    """Best-improvement local search from ``sigma [P, S, n1]`` (of the problems ``only``, if given) until no
    move improves any start; the starts flagged in ``ejection [S]`` also try ejections (of adjacent rows
    too with ``adjacent``, on the dense table only).

    Every row proposes its best move: go to a free column or to the dummy, swap columns with another row,
    or take another row's column (that row becomes unmatched). Proposals are ranked by gain; a proposal is
    applied when it ranks first among all proposals touching its rows or their E1-neighbours (and, for a
    move to a free column, among those wanting that column). Accepted moves then touch disjoint,
    non-adjacent rows and distinct columns, so their objective changes add up exactly. A start with no
    improving move is final and leaves the batch.
    """
    problems, starts, n1 = sigma.shape
    device = sigma.device
    if USE_KERNEL and device.type == "cpu" and problem.image_table() is not None:
        return _kernel_search(problem, sigma, tolerance, only, ejection, adjacent)
    result = sigma.reshape(problems * starts, n1).clone()
    owner = torch.arange(problems, device=device) if only is None else only
    owner = owner.repeat_interleave(starts)
    active = torch.arange(problems * starts, device=device)
    flags = None if ejection is None else ejection.repeat(owner.shape[0] // starts)
    chains = _Chains(problem, owner, flags, adjacent)
    current_sigma = result.clone()
    # On a GPU every convergence check is a device sync; there a few wasted iterations are cheaper.
    on_cpu = device.type == "cpu"
    for iteration in range(_MAX_ITERATIONS_FACTOR * (n1 + 4)):
        current_sigma, moving = _improve(chains, current_sigma, tolerance, check=on_cpu)
        if not on_cpu and iteration % 4:
            continue
        still = moving.nonzero().squeeze(1)
        if still.numel() < moving.numel():
            result.index_copy_(0, active, current_sigma)
            if still.numel() == 0:
                break
            # Compacting costs a few index copies: worth it once a quarter of the chains has converged.
            if still.numel() <= 0.75 * moving.numel():
                active, current_sigma = active[still], current_sigma[still]
                chains = chains.subset(still)
    result.index_copy_(0, active, current_sigma)
    return result.view(problems, starts, n1)


def _kernel_search(
    problem: _Problem,
    sigma: Tensor,
    tolerance: float,
    only: Tensor | None,
    ejection: Tensor | None,
    adjacent: bool,
) -> Tensor:
    """:func:`_local_search` by the compiled kernel, one chain after another (CPU, dense table)."""
    problems, starts, n1 = sigma.shape
    result = sigma.reshape(problems * starts, n1).clone(memory_format=torch.contiguous_format)
    owner = torch.arange(problems) if only is None else only
    owner = owner.repeat_interleave(starts)
    if ejection is None:
        flags = torch.zeros(owner.shape[0], dtype=torch.bool)
    else:
        flags = ejection.repeat(problems)
    search_kernel.local_search(
        result.numpy(),
        owner.numpy(),
        flags.numpy(),
        adjacent,
        problem.image_table().numpy(),
        problem.unary.numpy(),
        *problem.kernel_arrays(),
        problem.n2,
        np.float32(-tolerance),
        _MAX_ITERATIONS_FACTOR * (n1 + 4),
    )
    return result.view(problems, starts, n1)


def _improve(chains: _Chains, sigma: Tensor, tolerance: float, check: bool = True) -> tuple[Tensor, Tensor]:
    """One round of the local search on ``sigma [C, n1]``: the new matchings and, per chain, whether it had
    an improving move (chains without one are returned unchanged). ``check`` returns early when no chain
    moves, at the price of a device sync (so the GPU path skips it)."""
    problem = chains.problem
    count, n1 = sigma.shape
    n2 = problem.n2
    inf = float("inf")
    rows = chains.rows
    linear, pair_values = chains.terms(sigma)
    # Per row pair (i, j): summed cost of the current / exchanged images of the E1 edges i->j.
    images = linear.new_zeros(count, 2, n1 * n1).scatter_add_(2, chains.pair_index, pair_values)
    images = images.view(count, 2, n1, n1)
    images = images + images.transpose(2, 3)
    # at_other[i, j] = h[i, σ(j)] (its diagonal is each row's current h); the pair corrections below make
    # the deltas exact.
    at_other = linear.gather(2, sigma[:, None, :].expand(-1, n1, -1))
    current = at_other.diagonal(dim1=1, dim2=2)
    unmatched = sigma == n2
    # Free columns: those no matched row holds, and the dummy (only unmatched rows write to it).
    free = chains.all_free.scatter(1, sigma, unmatched)
    # Every move's delta in one buffer [C, n1, W + 2·n1]: to a free column (or the dummy), swap with row j,
    # steal row j's column; one min picks each row's best move, ties going to the first (a single move
    # before a swap before a steal, then the lowest column or row).
    width = problem.width
    ejection = chains.ejection_block
    moves = linear.new_empty(count, n1, width + (3 if ejection is not None else 2) * n1)
    single, swap = moves[..., :width], moves[..., width : width + n1]
    steal = moves[..., width + n1 : width + 2 * n1]
    torch.sub(linear, current[..., None], out=single).masked_fill_(~free[:, None, :], inf)
    base = at_other - current[:, :, None] - current[:, None, :]
    # h counts the current image of an i-j edge twice and misses its new image: a swap gets the
    # exchanged image, a steal (j becomes unmatched) none.
    eye = chains.eye
    torch.add(base, images[:, 0], out=steal)
    torch.add(steal, at_other.transpose(1, 2), out=swap).add_(images[:, 1]).masked_fill_(eye, inf)
    steal.masked_fill_(eye | unmatched[:, None, :], inf)
    if ejection is not None:
        # Ejection: a steal, then row j (now unmatched) to its best free column l, worth h[j, l] when
        # negative (i and j non-adjacent, so i's move leaves h[j] unchanged).
        free_value, free_column = single[..., : problem.n2].min(2)
        gain = (free_value + current).clamp_(max=0.0)
        ejections = moves[..., width + 2 * n1 :]
        torch.add(steal, gain[:, None, :], out=ejections).add_(ejection)
        if chains.adjacent_ejection:
            slot_column = _adjacent_ejections(chains, sigma, linear, free, steal, moves)
    delta, choice = moves.min(2)
    candidate = delta < -tolerance
    moving = candidate.any(1)
    if check and not bool(moving.any()):
        return sigma, moving
    use_pair = choice >= width
    use_steal = choice >= width + n1
    partner = torch.where(use_pair, (choice - width).remainder(n1), rows)
    partner_col = sigma.gather(1, partner)
    new_col = torch.where(use_pair, partner_col, choice)
    # The partner's new column: swap: i's column; steal: unmatched; ejection: its best free column; a single
    # move has no partner (row i itself, overwritten by new_col below).
    partner_new = torch.where(use_steal, n2, torch.where(use_pair, sigma, choice))
    bucket = torch.where(choice >= n2, chains.unmatched_bucket, choice)  # pair moves and the dummy: per row
    if ejection is not None:
        use_ejection = choice >= width + 2 * n1
        ejected_to = free_column.gather(1, partner)
        if chains.adjacent_ejection:
            slot = chains.slot_of_pair.gather(1, rows * n1 + partner)
            ejected_to = torch.where(slot < slot_column.shape[1] - 1, slot_column.gather(1, slot), ejected_to)
        partner_new = torch.where(use_ejection, ejected_to, partner_new)
        bucket = torch.where(use_ejection, ejected_to, bucket)
    # Conflict resolution by rank (ties broken by row index, so the result is deterministic).
    # A candidate's delta is negative, and negative float32s order inversely to their bit patterns read
    # as integers: -bits·n1 + row ranks the candidates by delta, ties by row, like a stable argsort.
    rank = torch.where(candidate, delta.view(torch.int32).long() * -n1 + rows, _NO_RANK)
    claim = torch.cat([rank, chains.no_claim], 1).scatter_reduce_(1, partner, rank, "amin")
    nearby = claim.scatter_reduce(1, chains.neighbour_to, claim.gather(1, chains.neighbour_from), "amin")
    column_best = chains.no_column_claim.scatter_reduce(1, bucket, rank, "amin")
    accept = (
        candidate
        & (rank <= nearby[:, :n1])
        & (rank <= nearby.gather(1, partner))
        & (rank == column_best.gather(1, bucket))
    )
    spare = torch.cat([sigma, sigma[:, :1]], 1)
    spare.scatter_(1, torch.where(accept, partner, n1), partner_new)
    spare.scatter_(1, torch.where(accept, rows, n1), new_col)
    return spare[:, :n1], moving


def _adjacent_ejections(
    chains: _Chains, sigma: Tensor, linear: Tensor, free: Tensor, steal: Tensor, moves: Tensor
) -> Tensor:
    """Write into the ejection block of ``moves [C, n1, W + 3·n1]`` the exact deltas of the ejections of
    adjacent rows: mover i takes j's column, then j moves to its best free column l with i already at its
    new column, so j's linear term changes by ``T_e[σ(j)] - T_e[σ(i)]`` over the half edges e of j with
    partner i (their table rows).
    Returns each slot's best column ``[C, S + 1]`` (a last column for "no slot")."""
    problem = chains.problem
    count, n1 = sigma.shape
    width = problem.width
    own = sigma.gather(1, chains.slot_half_row)  # σ(j): i's new column
    other = sigma.gather(1, chains.slot_half_partner)  # σ(i): its old one
    rows = torch.stack([chains.slot_table_row + own, chains.slot_table_row + other], 2).view(-1)
    change = torch.nn.functional.embedding_bag(
        rows,
        chains.table.view(-1, width),
        chains.slot_offsets,
        mode="sum",
        per_sample_weights=chains.slot_weights,
    )
    slots = chains.slot_row.shape[1]
    after = (linear.view(count * n1, width).index_select(0, chains.slot_h_rows) + change).view(
        count, slots, width
    )
    best, column = after.masked_fill_(~free[:, None, :], float("inf")).min(2)
    pairs = chains.slot_mover * n1 + chains.slot_row
    values = steal.reshape(count, n1 * n1).gather(1, pairs) + best + chains.slot_off
    moves.view(-1).index_copy_(0, chains.slot_positions, values.view(-1))
    return torch.cat([column, column.new_full((count, 1), problem.n2)], 1)


def _best_of(sigma: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """Best matching per problem: ``sigma [P, S, n1]``, ``value [P, S]`` -> ``[P, n1]``, ``[P]`` (ties: the
    lowest start index)."""
    best_value, best = value.min(1)
    return sigma.gather(1, best[:, None, None].expand(-1, 1, sigma.shape[2])).squeeze(1), best_value


def solve_matching(
    unary_costs: Tensor,
    quadratic_costs: Tensor,
    edges_left: Tensor,
    edges_right: Tensor,
    warm_start: Tensor | None = None,
    search: Search = "iterated",
) -> Tensor:
    """Minimise unary + quadratic costs over partial injective matchings.

    Args:
        unary_costs: ``[n1, n2]`` or ``[P, n1, n2]`` (a batch of ``P`` problems solved together).
        quadratic_costs: ``[E1, E2]`` or ``[P, E1, E2]``; ``Q[a, b]`` is paid when edge ``a = (i, j)`` of
            the left graph is mapped onto edge ``b = (k, l)`` of the right graph (``i→k`` and ``j→l``).
        edges_left: ``[2, E1]`` or ``[P, 2, E1]`` long node indices in ``[0, n1)``; ``-1`` marks padding.
        edges_right: ``[2, E2]`` or ``[P, 2, E2]`` likewise in ``[0, n2)``.
        warm_start: optional 0/1 matching ``[n1, n2]`` / ``[P, n1, n2]`` used as an extra start.
        search: ``"iterated"`` (default): extra starts and kick rounds, exact on the problems training
            produces as far as measured (bench/alignment.py); ``"plain"``: the local search from the greedy
            (and warm) starts only, several times faster and a few percent of problems short of optimal;
            ``"warm"``: the local search from ``warm_start`` alone (the blackbox backward's re-solve), or
            ``"plain"`` without one.

    Returns:
        A 0/1 matching with the dtype and device of ``unary_costs``, ``[n1, n2]`` or ``[P, n1, n2]``;
        every row and column holds at most one 1. Deterministic for a given input.
    """
    return _solve_and_keep(unary_costs, quadratic_costs, edges_left, edges_right, warm_start, search)[0]


def _solve_and_keep(
    unary_costs: Tensor,
    quadratic_costs: Tensor,
    edges_left: Tensor,
    edges_right: Tensor,
    warm_start: Tensor | None = None,
    search: Search = "iterated",
) -> tuple[Tensor, _Problem | None, Tensor]:
    """:func:`solve_matching` that also returns the internal problem, so that a re-solve with other unary
    costs (the blackbox backward) can skip the set-up (``None`` for an empty problem), and per problem
    whether the lower bound certifies the matching optimal (bool, ``[P]`` or a scalar)."""
    # inference_mode skips autograd bookkeeping on the solver's many tiny ops (~20 % at n = 16); the
    # result is cloned outside it so that it is an ordinary tensor again.
    with torch.inference_mode():
        unary, quadratic, left, right, batched = _as_batch(
            unary_costs, quadratic_costs, edges_left, edges_right
        )
        if not (torch.isfinite(unary).all() and torch.isfinite(quadratic).all()):
            raise ValueError("unary_costs and quadratic_costs must be finite (no NaN or inf)")
        problem = None
        if unary.shape[1] == 0 or unary.shape[2] == 0:
            matching = unary.new_zeros(unary.shape)
            certified = torch.ones(unary.shape[0], dtype=torch.bool, device=unary.device)
        else:
            problem = _Problem(unary, quadratic, left, right)
            matching, certified = _solve(problem, warm_start, unary_costs.dtype, search)
    matching, certified = matching.clone(), certified.clone()
    return (matching, problem, certified) if batched else (matching[0], problem, certified[0])


def _resolve(
    problem: _Problem, unary_costs: Tensor, warm_start: Tensor | None = None, search: Search = "iterated"
) -> Tensor:
    """Solve ``problem`` again with other unary costs (same shape as the original ``unary_costs``)."""
    with torch.inference_mode():
        unary = unary_costs[None] if unary_costs.dim() == 2 else unary_costs
        if not bool(torch.isfinite(unary).all()):
            raise ValueError("unary_costs must be finite (no NaN or inf)")
        matching, _ = _solve(problem.with_unary(unary), warm_start, unary_costs.dtype, search, certify=False)
    matching = matching.clone()
    return matching if unary_costs.dim() == 3 else matching[0]


# Search effort (deterministic; quality and time in bench/alignment.py): pseudo-random extra starts of the
# first pass, then rounds of kicks (noisy greedy restarts around the incumbent) for the problems the starts
# disagree on, while a round improves them.
_RANDOM_STARTS = 16  # forward solves only: the backward's warm start already sits in the right basin
# Above this many rows fewer random starts (8·64/n, at least 2) and kicks (12): each costs a local search of
# about n/2 iterations over n² terms (there by the torch search: no dense table), and at these sizes the
# target is "never worse than the plain search", which the greedy starts guarantee by themselves.
_FULL_STARTS_UP_TO = 64
_LARGE_STARTS_PER_64_ROWS = 8
_LARGE_KICKS_PER_ROUND = 12
_KICK_ROUNDS = 2
_KICK_AGREEMENT = 0.5  # kick the problems whose best matching fewer than this share of the starts reached
_KICKS_PER_ROUND = 48
_START_SEED = 20240601
_KICK_SEED_STEP = 100_003  # kick rounds draw other noise than the random starts and each other
_START_NOISE_LOW, _START_NOISE_HIGH = 0.5, 1.5  # noise of random starts and kicks (units: the costs' spread)


def _noisy_scores(linear: Tensor, count: int, seed: int) -> Tensor:
    """``count`` noisy copies ``[P, count, n1, n2]`` of a linearisation ``linear [P, n1, n2]`` for greedy
    rounding: fixed pseudo-random noise of ``linear``'s own spread, 0.5 to 1.5 times. The generator is seeded
    by ``seed`` (sizes and round only), so the solver stays a deterministic function of its input; greedy
    roundings are near a local optimum already, which keeps the local search from them short."""
    _, n1, n2 = linear.shape
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, n1, n2, generator=generator).to(linear.device)
    # (A 1 x 1 problem has no spread: no noise, rather than a NaN from the sample std of one value.)
    spread = linear.std(dim=(1, 2), keepdim=True)[:, None] if n1 * n2 > 1 else linear.new_zeros(1, 1, 1, 1)
    scale = torch.linspace(_START_NOISE_LOW, _START_NOISE_HIGH, count, device=linear.device)[
        None, :, None, None
    ]
    return linear[:, None] + scale * spread * noise[None]


def _kicks(problem: _Problem, incumbent_linear: Tensor, round_index: int) -> Tensor:
    """Restarts ``[P, K, n1]`` near the incumbents: greedy roundings of their linearisation
    ``h = C + (A + Aᵀ)x*`` (``incumbent_linear [P, n1, W]``) with noise, different in every round.

    The misses they target are other basins (compound changes of 5–12 rows); on 1,200 pipeline problems
    (n = 8–32, ejection moves on in both) they left 7 misses against a longer search's best, where the kicks
    they replaced (a row's E1-neighbourhood unassigned, or a row forced onto another column) left 16.
    """
    n1, n2 = problem.n1, problem.n2
    seed = _START_SEED + 1000 * n1 + n2 + _KICK_SEED_STEP * (round_index + 1)
    count = _KICKS_PER_ROUND if n1 <= _FULL_STARTS_UP_TO else _LARGE_KICKS_PER_ROUND
    return _greedy_rounding(_noisy_scores(incumbent_linear[..., :n2], count, seed), n2)


def _solve(
    problem: _Problem,
    warm_start: Tensor | None,
    dtype: torch.dtype,
    search: Search = "iterated",
    certify: bool = True,
) -> tuple[Tensor, Tensor]:
    """Starts, local search, kick rounds; returns the 0/1 matching ``[P, n1, n2]`` and per problem whether
    the lower bound certifies it optimal ``[P]`` (bool; all false without ``certify``)."""
    problems, n1, n2 = problem.problems, problem.n1, problem.n2
    device = problem.unary.device
    tolerance = _tolerance(problem)
    problem.table_wanted = search == "iterated" or problem.width <= _SMALL_TABLE_WIDTH
    if search not in ("iterated", "plain", "warm"):
        raise ValueError(f"search must be 'iterated', 'plain' or 'warm', got {search!r}")
    iterated = search == "iterated"
    # Greedy roundings (of the unary costs, of the uniform linearisation and, in a forward iterated solve,
    # of noisy copies of it) in one call: its rounds cost the same for one start or many.
    scores = []
    if search != "warm" or warm_start is None:
        scores.append(torch.stack([problem.unary_matrix(), problem.uniform_linearisation()], 1))
    random_starts = 0
    if iterated and _RANDOM_STARTS and warm_start is None:
        random_starts = _RANDOM_STARTS
        if n1 > _FULL_STARTS_UP_TO:
            random_starts = max(2, _LARGE_STARTS_PER_64_ROWS * _FULL_STARTS_UP_TO // n1)
        seed = _START_SEED + 1000 * n1 + n2
        scores.append(_noisy_scores(problem.uniform_linearisation(), random_starts, seed))
    starts = [_greedy_rounding(torch.cat(scores, 1), n2)] if scores else []
    if warm_start is not None:
        warm = warm_start.to(device)
        warm = warm[None] if warm.dim() == 2 else warm
        if warm.shape != (problems, n1, n2):
            raise ValueError(f"warm_start must have the shape of unary_costs {[problems, n1, n2]}")
        has = warm.amax(2) > 0.5
        starts.append(torch.where(has, warm.argmax(2), n2)[:, None, :])
    starts = torch.cat(starts, dim=1)
    # The random starts search with ejection moves too; the greedy (and warm) starts keep the plain moves,
    # so the result is never worse than the plain search's.
    ejection = None
    if random_starts:
        ejection = torch.arange(starts.shape[1], device=device) >= starts.shape[1] - random_starts
    found = _local_search(problem, starts, tolerance, ejection=ejection)
    values = problem.objective(found)
    sigma, value = _best_of(found, values)
    bound = problem.lower_bound() if certify else torch.full_like(value, -float("inf"))
    certified = value <= bound + tolerance
    # Kicks for the problems whose best matching fewer than half of the starts reached (kicking only below
    # 35 % agreement left more misses on the bench's 1,800 problems, docs/alignment.md).
    agreement = (values <= value[:, None] + tolerance).sum(1)
    kick = ~certified & (agreement < _KICK_AGREEMENT * starts.shape[1]) & iterated
    for round_index in range(_KICK_ROUNDS):
        chosen = kick.nonzero().squeeze(1)
        if chosen.numel() == 0:
            break
        incumbent = sigma.index_select(0, chosen)
        linear, _ = _Chains(problem, chosen).terms(incumbent)
        kicked = _kicks(problem, linear, round_index)
        with_ejection = torch.ones(kicked.shape[1], dtype=torch.bool, device=device)
        copies = _local_search(problem, kicked, tolerance, chosen, ejection=with_ejection)
        found, found_value = _best_of(copies, problem.objective(copies, chosen))
        better = found_value < value[chosen] - tolerance
        sigma[chosen] = torch.where(better[:, None], found, sigma[chosen])
        value[chosen] = torch.where(better, found_value, value[chosen])
        # A problem is kicked again only while its last round improved it.
        kick = torch.zeros_like(kick).index_fill_(0, chosen[better], True)
    if iterated:
        # Polish: from each incumbent, the local search with every ejection, adjacent rows included (exact
        # but ~2x a search round's cost, so only here, on one chain per problem).
        polished = _local_search(
            problem,
            sigma[:, None],
            tolerance,
            ejection=torch.ones(1, dtype=torch.bool, device=device),
            adjacent=True,
        )[:, 0]
        sigma = polished
        value = problem.objective(sigma[:, None])[:, 0]
    certified = value <= bound + tolerance
    matching = torch.zeros(problems, n1, n2 + 1, dtype=dtype, device=device)
    matching.scatter_(2, sigma[..., None], 1.0)
    return matching[..., :n2], certified


def edge_pair_indicator(matching: Tensor, edges_left: Tensor, edges_right: Tensor) -> Tensor:
    """``Y[..., a, b] = x[i_a, k_b] · x[j_a, l_b]``: 1 where a 0/1 matching maps the left edge ``a = (i, j)``
    onto the right edge ``b = (k, l)`` (the quadratic costs' coefficient, so ``∂objective/∂Q = Y``).

    ``matching`` is ``[n1, n2]`` or ``[P, n1, n2]`` (possibly fractional), edges ``[2, E]`` or ``[P, 2, E]``
    with ``-1`` for padding (which gets 0). Duplicated edges each get their own entry, as each copy's cost
    is paid; a self loop ``(i, i)`` onto ``(k, k)`` gives ``x_ik²``. Returns ``[E1, E2]`` or ``[P, E1, E2]``.
    """
    batched = matching.dim() == 3
    x = matching if batched else matching[None]
    problems, _, n2 = x.shape
    left = edges_left if edges_left.dim() == 3 else edges_left[None].expand(problems, -1, -1)
    right = edges_right if edges_right.dim() == 3 else edges_right[None].expand(problems, -1, -1)
    left, right = left.to(x.device), right.to(x.device)
    valid1 = (left >= 0).all(1)
    valid2 = (right >= 0).all(1)
    src1, dst1 = left[:, 0].clamp(min=0), left[:, 1].clamp(min=0)
    src2, dst2 = right[:, 0].clamp(min=0), right[:, 1].clamp(min=0)
    rows_src = x.gather(1, src1[..., None].expand(-1, -1, n2))  # x[i_a, :] -> [P, E1, n2]
    rows_dst = x.gather(1, dst1[..., None].expand(-1, -1, n2))
    e1 = rows_src.shape[1]
    pair = rows_src.gather(2, src2[:, None, :].expand(-1, e1, -1)) * rows_dst.gather(
        2, dst2[:, None, :].expand(-1, e1, -1)
    )
    pair = pair * valid1[:, :, None] * valid2[:, None, :]
    return pair if batched else pair[0]


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
    pair = edge_pair_indicator(x, left, right)
    value = (unary * x).sum((1, 2)) + (quadratic * pair).sum((1, 2))
    return value if batched else value[0]
