"""Blackbox differentiation through the matching solver (Vlastelica et al. 2020; REFERENCE §2.7).

Forward solves the problem; backward re-solves on costs perturbed by ``λ·∂L/∂matching`` and returns
``-(M - M_λ)/λ`` as the gradient of the unary costs (the quadratic costs get the same construction on
edge-pair indicators; the reference's loss ignores them, so they receive zero gradient when the loss
only depends on the matching).

Loss-scale invariance: the backward is not linear in its incoming gradient, so a mixed-precision loss
scale ``s`` would change the perturbation (the reference's fp16 scaler makes ``λ·s·g`` dwarf the costs,
REFERENCE §2.7). With ``gradient_norm`` set, the incoming gradient is divided by its mean absolute value
and multiplied by ``gradient_norm`` (the value it has for an unscaled loss) before perturbing, and the
result is multiplied back. The returned gradient is then exactly proportional to the incoming one:
any loss scale (and the external loss weight α) passes through linearly and is removed again when the
optimiser unscales, while an unscaled α = 1 loss gets exactly the reference's perturbation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from exgra.alignment.solver import _resolve, _solve_and_keep

__all__ = ["BlackboxMatching", "blackbox_matching"]


class BlackboxMatching(torch.autograd.Function):
    """Autograd function ``(unary, quadratic, edges_left, edges_right, λ, gradient_norm) -> matching``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        unary_costs: Tensor,
        quadratic_costs: Tensor,
        edges_left: Tensor,
        edges_right: Tensor,
        lambda_val: float,
        gradient_norm: float | None,
    ) -> Tensor:
        matching, problem = _solve_and_keep(
            unary_costs.detach(), quadratic_costs.detach(), edges_left, edges_right
        )
        ctx.save_for_backward(unary_costs.detach(), matching)
        # The backward re-solves the same graphs with other unary costs: keep the solver's set-up.
        ctx.problem = problem
        ctx.lambda_val = lambda_val
        ctx.gradient_norm = gradient_norm
        return matching

    @staticmethod
    def backward(ctx: Any, grad_matching: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        unary, matching = ctx.saved_tensors
        grad = grad_matching.detach().float()
        factor = 1.0
        if ctx.gradient_norm is not None:
            magnitude = float(grad.abs().mean())
            if magnitude == 0.0:
                return torch.zeros_like(unary), None, None, None, None, None
            factor = magnitude / ctx.gradient_norm
            grad = grad / factor
        lambda_val = ctx.lambda_val + 1e-8
        if ctx.problem is None:  # an empty problem: the matching cannot change
            return torch.zeros_like(unary), None, None, None, None, None
        perturbed = _resolve(ctx.problem, unary.float() + lambda_val * grad, warm_start=matching)
        grad_unary = -(matching.float() - perturbed) / lambda_val * factor
        return grad_unary.to(unary.dtype), None, None, None, None, None


def blackbox_matching(
    unary_costs: Tensor,
    quadratic_costs: Tensor,
    edges_left: Tensor,
    edges_right: Tensor,
    lambda_val: float = 80.0,
    gradient_norm: float | None = None,
) -> Tensor:
    """Differentiable :func:`~exgra.alignment.solver.solve_matching` (shapes as there).

    Args:
        lambda_val: interpolation strength λ (reference 80).
        gradient_norm: if given, the mean absolute incoming gradient of an unscaled loss; makes the
            gradient independent of any loss scale (see the module docstring). ``None`` reproduces the
            reference exactly, loss-scale dependence included.
    """
    if lambda_val <= 0:
        raise ValueError(f"lambda_val must be positive, got {lambda_val}")
    if gradient_norm is not None and gradient_norm <= 0:
        raise ValueError(f"gradient_norm must be positive or None, got {gradient_norm}")
    return BlackboxMatching.apply(
        unary_costs, quadratic_costs, edges_left, edges_right, lambda_val, gradient_norm
    )
