"""Blackbox differentiation: both gradients equal their definition (brute force), the gradient reduces
the loss, and it ignores the loss scale."""

from __future__ import annotations

import pytest
import torch

from exgra.alignment import blackbox_matching, hamming_loss, solve_matching
from tests.alignment.instances import brute_force_matching, reference_like_problem


def _pair_indicator_by_loops(matching: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Y[a, b] = 1 iff left edge a = (i, j) and right edge b = (k, l) are both kept (M[i,k] = M[j,l] = 1)."""
    pairs = torch.zeros(left.shape[1], right.shape[1])
    for a, (i, j) in enumerate(left.t().tolist()):
        for b, (k, m) in enumerate(right.t().tolist()):
            if min(i, j, k, m) >= 0 and matching[i, k] == 1 and matching[j, m] == 1:
                pairs[a, b] = 1.0
    return pairs


def _padded_batch() -> tuple[torch.Tensor, ...]:
    """Three n = 5 problems with 2, 3 and 4 neighbours per node (edges padded with -1 to one width) and a
    duplicated right edge in the last one."""
    problems = [reference_like_problem(5, seed=40 + k, k=k, noise=1.5) for k in (2, 3, 4)]
    width = 21
    unary = torch.stack([p[0] for p in problems])
    quadratic = torch.zeros(3, width, width)
    left = torch.full((3, 2, width), -1)
    right = torch.full((3, 2, width), -1)
    for index, (_, q, el, er) in enumerate(problems):
        e = el.shape[1]
        quadratic[index, :e, :e] = q
        quadratic[index, e:, :] = 3.0  # costs on padding edges must be ignored
        left[index, :, :e], right[index, :, :e] = el, er
    right[2, :, 20] = right[2, :, 0]  # a duplicate of right edge 0 with its own cost
    quadratic[2, :20, 20] = -0.3
    return unary, quadratic, left, right


@pytest.mark.parametrize("normalised", [False, True])
def test_both_gradients_equal_the_definition_on_brute_forced_problems(normalised: bool) -> None:
    unary, quadratic, left, right = _padded_batch()
    weights = torch.randn(unary.shape, generator=torch.Generator().manual_seed(3))
    lambda_val = 1.0
    costs = unary.clone().requires_grad_(True)
    edge_costs = quadratic.clone().requires_grad_(True)
    norm = float(weights.abs().mean()) if normalised else None  # equals the incoming magnitude: no rescale
    matching = blackbox_matching(costs, edge_costs, left, right, lambda_val, gradient_norm=norm)
    grad_unary, grad_quadratic = torch.autograd.grad((weights * matching).sum(), (costs, edge_costs))
    changed = 0
    for index in range(3):
        problem = (quadratic[index], left[index], right[index])
        best, _ = brute_force_matching(unary[index], *problem)
        perturbed, _ = brute_force_matching(unary[index] + lambda_val * weights[index], *problem)
        assert torch.equal(matching[index].detach(), best)
        expected_unary = -(best - perturbed) / lambda_val
        pairs = _pair_indicator_by_loops(best, left[index], right[index])
        pairs_perturbed = _pair_indicator_by_loops(perturbed, left[index], right[index])
        expected_quadratic = -(pairs - pairs_perturbed) / lambda_val
        assert torch.allclose(grad_unary[index], expected_unary, atol=1e-6)
        assert torch.allclose(grad_quadratic[index], expected_quadratic, atol=1e-6)
        changed += bool(expected_quadratic.abs().sum() > 0)
    assert changed >= 2, "the perturbation should change the matching of most problems"
    # The duplicated right edge receives the same gradient as its original; padding edges none.
    assert torch.equal(grad_quadratic[2, :, 20], grad_quadratic[2, :, 0])
    assert float(grad_quadratic[0, 10:].abs().sum() + grad_quadratic[0, :, 10:].abs().sum()) == 0.0


def test_single_problem_gradient_equals_its_batched_row_and_unary_only_switch() -> None:
    unary, quadratic, left, right = _padded_batch()
    weights = torch.randn(unary.shape, generator=torch.Generator().manual_seed(4))
    costs = unary.clone().requires_grad_(True)
    edge_costs = quadratic.clone().requires_grad_(True)
    batch = blackbox_matching(costs, edge_costs, left, right, 1.0)
    batch_grads = torch.autograd.grad((weights * batch).sum(), (costs, edge_costs))
    single_costs = unary[1].clone().requires_grad_(True)
    single_edges = quadratic[1].clone().requires_grad_(True)
    single = blackbox_matching(single_costs, single_edges, left[1], right[1], 1.0)
    single_grads = torch.autograd.grad((weights[1] * single).sum(), (single_costs, single_edges))
    assert torch.equal(single_grads[0], batch_grads[0][1])
    assert torch.equal(single_grads[1], batch_grads[1][1])
    # edge_gradient=False: the unary gradient is unchanged and the edge costs get none.
    unary_only = blackbox_matching(single_costs, single_edges, left[1], right[1], 1.0, edge_gradient=False)
    grads = torch.autograd.grad(
        (weights[1] * unary_only).sum(), (single_costs, single_edges), allow_unused=True
    )
    assert torch.equal(grads[0], single_grads[0])
    assert grads[1] is None


def test_following_the_gradient_reduces_the_hamming_loss() -> None:
    unary, quadratic, left, right = reference_like_problem(12, seed=5, noise=6.0)
    costs = unary.clone().requires_grad_(True)
    start = float(hamming_loss(solve_matching(unary, quadratic, left, right)))
    for _ in range(15):
        loss = hamming_loss(blackbox_matching(costs, quadratic, left, right, lambda_val=20.0))
        (grad,) = torch.autograd.grad(loss, costs)
        with torch.no_grad():
            costs -= 5.0 * grad
    end = float(hamming_loss(solve_matching(costs.detach(), quadratic, left, right)))
    assert start > 1.0
    assert end < start / 2


def test_gradient_is_proportional_to_the_loss_scale_when_normalised() -> None:
    unary, quadratic, left, right = reference_like_problem(10, seed=2, noise=1.5)
    grads = []
    for scale in (1.0, 1024.0, 65536.0):
        costs = unary.clone().requires_grad_(True)
        edge_costs = quadratic.clone().requires_grad_(True)
        loss = hamming_loss(blackbox_matching(costs, edge_costs, left, right, 80.0, gradient_norm=1 / 10))
        grads.append([g / scale for g in torch.autograd.grad(loss * scale, (costs, edge_costs))])
    assert grads[0][0].abs().sum() > 0 and grads[0][1].abs().sum() > 0
    for grad in grads[1:]:
        assert torch.allclose(grad[0], grads[0][0], atol=1e-7)
        assert torch.allclose(grad[1], grads[0][1], atol=1e-7)
    # Without normalisation the unscaled gradient changes with the loss scale (the reference's fp16 issue).
    raw = []
    for scale in (1.0, 65536.0):
        costs = unary.clone().requires_grad_(True)
        loss = hamming_loss(blackbox_matching(costs, quadratic, left, right, 80.0))
        (grad,) = torch.autograd.grad(loss * scale, costs)
        raw.append(grad / scale)
    assert not torch.allclose(raw[0], raw[1])


def test_normalised_gradient_equals_reference_at_unit_scale() -> None:
    unary, quadratic, left, right = reference_like_problem(10, seed=4)
    plain = unary.clone().requires_grad_(True)
    torch.autograd.grad(hamming_loss(blackbox_matching(plain, quadratic, left, right)), plain)
    normalised = unary.clone().requires_grad_(True)
    expected = torch.autograd.grad(hamming_loss(blackbox_matching(plain, quadratic, left, right)), plain)[0]
    got = torch.autograd.grad(
        hamming_loss(blackbox_matching(normalised, quadratic, left, right, gradient_norm=1 / 10)), normalised
    )[0]
    assert torch.allclose(got, expected, atol=1e-7)


def test_lambda_must_be_positive() -> None:
    unary, quadratic, left, right = reference_like_problem(4, seed=0)
    with pytest.raises(ValueError, match="lambda_val"):
        blackbox_matching(unary, quadratic, left, right, lambda_val=0.0)
