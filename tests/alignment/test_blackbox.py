"""Blackbox differentiation: the gradient reduces the loss and ignores the loss scale."""

from __future__ import annotations

import pytest
import torch

from exgra.alignment import blackbox_matching, hamming_loss, solve_matching
from tests.alignment.instances import reference_like_problem


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
        loss = hamming_loss(blackbox_matching(costs, quadratic, left, right, 80.0, gradient_norm=1 / 10))
        (grad,) = torch.autograd.grad(loss * scale, costs)
        grads.append(grad / scale)
    assert grads[0].abs().sum() > 0
    for grad in grads[1:]:
        assert torch.allclose(grad, grads[0], atol=1e-7)
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
