"""Blackbox differentiation through the matching solver (Vlastelica et al. 2020; REFERENCE §2.7).

Forward solves the problem; backward re-solves on the unary costs perturbed by ``λ·∂L/∂M`` (the loss
depends on the matching only, so the quadratic costs are not perturbed) and returns, as LPMP's
``GraphMatchingSolver.backward`` in the reference does, the gradients of both cost tensors:

    ∂L/∂C = -(M - M_λ)/λ,        ∂L/∂Q = -(Y(M) - Y(M_λ))/λ,

where ``Y(M)[a, b] = M[i, k]·M[j, l]`` is 1 when the left edge ``a = (i, j)`` is mapped onto the right
edge ``b = (k, l)`` (:func:`~exgra.alignment.solver.edge_pair_indicator`; padding edges get 0, every copy
of a duplicated edge gets its own 1, exactly as the forward pays each copy's cost). ``edge_gradient=False``
returns ``None`` for the quadratic costs (unary-only gradient, exgra's earlier behaviour). The perturbed
solve reuses the forward's set-up and starts from its matching alone (``BACKWARD_SEARCH``).

Loss-scale invariance: the backward is not linear in its incoming gradient, so a mixed-precision loss
scale ``s`` would change the perturbation (the reference's fp16 scaler makes ``λ·s·g`` dwarf the costs,
REFERENCE §2.7). With ``gradient_norm`` set, the incoming gradient is divided by its mean absolute value
and multiplied by ``gradient_norm`` (the value it has for an unscaled loss) before perturbing, and both
returned gradients are multiplied back. They are then exactly proportional to the incoming one: any loss
scale (and the external loss weight α) passes through linearly and is removed again when the optimiser
unscales, while an unscaled α = 1 loss gets exactly the reference's perturbation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from exgra.alignment.solver import Search, _resolve, _solve_and_keep, edge_pair_indicator

# The backward's re-solve: the local search from the forward's matching alone ("warm"); on the perturbed
# costs C + λ·g it reached the optimum on all 600 + 40 checked problems (docs/alignment.md), as with the
# greedy starts that "plain" adds, which cost ~3 % of a training step's alignment.
BACKWARD_SEARCH: Search = "warm"
__all__ = ["BlackboxMatching", "blackbox_matching"]


class BlackboxMatching(torch.autograd.Function):
    """Autograd function ``(unary, quadratic, edges_left, edges_right, λ, gradient_norm, edge_gradient,
    search) -> (matching, certified)``; ``certified`` (bool per problem) says whether the solver's lower
    bound proves the matching optimal."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        unary_costs: Tensor,
        quadratic_costs: Tensor,
        edges_left: Tensor,
        edges_right: Tensor,
        lambda_val: float,
        gradient_norm: float | None,
        edge_gradient: bool = True,
        search: Search = "iterated",
    ) -> tuple[Tensor, Tensor]:
        matching, problem, certified = _solve_and_keep(
            unary_costs.detach(), quadratic_costs.detach(), edges_left, edges_right, search=search
        )
        ctx.mark_non_differentiable(certified)
        ctx.save_for_backward(unary_costs.detach(), matching, edges_left, edges_right)
        # The backward re-solves the same graphs with other unary costs: keep the solver's set-up.
        ctx.problem = problem
        ctx.lambda_val = lambda_val
        ctx.gradient_norm = gradient_norm
        ctx.edge_gradient = edge_gradient
        ctx.quadratic_meta = (quadratic_costs.shape, quadratic_costs.dtype)
        return matching, certified

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_matching: Tensor, _grad_certified: Tensor | None = None
    ) -> tuple[Tensor | None, ...]:
        unary, matching, edges_left, edges_right = ctx.saved_tensors
        shape, dtype = ctx.quadratic_meta
        grad = grad_matching.detach().float()
        factor = 1.0
        unchanged = ctx.problem is None  # an empty problem: the matching cannot change
        if ctx.gradient_norm is not None and not unchanged:
            magnitude = float(grad.abs().mean())
            unchanged = magnitude == 0.0
            factor = magnitude / ctx.gradient_norm if magnitude else 1.0
            grad = grad / factor
        if unchanged:
            zero_quadratic = torch.zeros(shape, dtype=dtype, device=unary.device)
            return (torch.zeros_like(unary), zero_quadratic if ctx.edge_gradient else None) + (None,) * 6
        lambda_val = ctx.lambda_val + 1e-8
        # The perturbed problem is re-solved by the local search from the forward's matching alone
        # (BACKWARD_SEARCH): from that warm start it reached the optimum on every one of 640 pipeline
        # problems (n = 5–32, brute force / MILP; bench/alignment.py), so no other starts or kicks.
        perturbed = _resolve(ctx.problem, unary.float() + lambda_val * grad, matching, BACKWARD_SEARCH)
        grad_unary = -(matching.float() - perturbed) / lambda_val * factor
        grad_quadratic = None
        if ctx.edge_gradient:
            pairs = edge_pair_indicator(matching.float(), edges_left, edges_right)
            pairs_perturbed = edge_pair_indicator(perturbed, edges_left, edges_right)
            grad_quadratic = (-(pairs - pairs_perturbed) / lambda_val * factor).to(dtype)
        return (grad_unary.to(unary.dtype), grad_quadratic) + (None,) * 6


def blackbox_matching(
    unary_costs: Tensor,
    quadratic_costs: Tensor,
    edges_left: Tensor,
    edges_right: Tensor,
    lambda_val: float = 80.0,
    gradient_norm: float | None = None,
    edge_gradient: bool = True,
    return_certificate: bool = False,
    search: Search = "iterated",
) -> Tensor | tuple[Tensor, Tensor]:
    """Differentiable :func:`~exgra.alignment.solver.solve_matching` (shapes as there).

    Args:
        lambda_val: interpolation strength λ (reference 80).
        gradient_norm: if given, the mean absolute incoming gradient of an unscaled loss; makes both
            gradients independent of any loss scale (see the module docstring). ``None`` = the
            reference's backward, loss-scale dependence included.
        edge_gradient: return ``∂L/∂Q = -(Y(M) - Y(M_λ))/λ`` as the reference does (default); ``False``
            returns no gradient for the quadratic costs (unary-only).
        return_certificate: also return per problem whether the solver's lower bound certifies the
            matching optimal (bool, ``[P]`` or scalar).
        search: the forward solve's search, ``"iterated"`` or ``"plain"`` (:func:`solve_matching`); the
            backward's re-solve always runs the local search from the forward's matching alone
            (``BACKWARD_SEARCH``).
    """
    if lambda_val <= 0:
        raise ValueError(f"lambda_val must be positive, got {lambda_val}")
    if gradient_norm is not None and gradient_norm <= 0:
        raise ValueError(f"gradient_norm must be positive or None, got {gradient_norm}")
    matching, certified = BlackboxMatching.apply(
        unary_costs,
        quadratic_costs,
        edges_left,
        edges_right,
        lambda_val,
        gradient_norm,
        edge_gradient,
        search,
    )
    return (matching, certified) if return_certificate else matching
