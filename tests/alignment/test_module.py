"""MultiGraphAlignment: schemes on known inputs, gradients, autocast, loss-scale invariance, errors."""

from __future__ import annotations

import pytest
import torch

from exgra.alignment import AlignmentConfig, MultiGraphAlignment, graph_pairs

DIM = 32


def _features(batch: int = 12, seed: int = 0, noise: float = 0.05) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, DIM, generator=generator)
    return {
        name: base + noise * torch.randn(batch, DIM, generator=generator)
        for name in ("image", "response", "caption")
    }


def _module(**overrides) -> MultiGraphAlignment:
    torch.manual_seed(0)
    return MultiGraphAlignment(AlignmentConfig(**overrides), feature_dim=DIM)


def test_graph_pairs_of_both_schemes() -> None:
    assert graph_pairs(["a", "b"], "barycenter") == [
        ("a", "barycenter"),
        ("barycenter", "a"),
        ("b", "barycenter"),
        ("barycenter", "b"),
    ]
    assert graph_pairs(["a", "b", "c"], "pairwise") == [
        ("a", "b"),
        ("b", "a"),
        ("a", "c"),
        ("c", "a"),
        ("b", "c"),
        ("c", "b"),
    ]


def test_barycenter_scheme_recovers_identity_on_aligned_modalities() -> None:
    module = _module().eval()
    output = module(_features())
    assert output.pairs == graph_pairs(["image", "response", "caption"], "barycenter")
    assert output.matchings.shape == (6, 12, 12)
    assert output.diagnostics["accuracy"] == 1.0
    assert float(output.loss.detach()) == 0.0


def test_pairwise_scheme_flags_the_shuffled_modality() -> None:
    features = _features()
    permutation = torch.roll(torch.arange(12), 3)
    features["caption"] = features["caption"][permutation]
    output = _module(scheme="pairwise").eval()(features)
    assert len(output.pairs) == 6
    assert output.diagnostics["accuracy/image->response"] == 1.0
    assert output.diagnostics["accuracy/response->image"] == 1.0
    assert output.diagnostics["accuracy/image->caption"] <= 0.25
    assert output.diagnostics["accuracy/caption->response"] <= 0.25
    assert output.diagnostics["hamming/image->caption"] > 1.0


def test_gradients_reach_features_and_gnn_in_float32_under_autocast() -> None:
    module = _module().train()
    features = {name: tensor.bfloat16().requires_grad_(True) for name, tensor in _features(noise=1.0).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = module(features)
    assert output.loss.dtype == torch.float32
    output.loss.backward()
    assert all(tensor.grad is not None and tensor.grad.abs().sum() > 0 for tensor in features.values())
    assert module.gnn.conv1.lin_rel.weight.grad.abs().sum() > 0


def test_feature_gradient_ignores_the_loss_scale() -> None:
    module = _module().train()
    grads = []
    for scale in (1.0, 4096.0):
        features = {name: tensor.requires_grad_(True) for name, tensor in _features(noise=1.0).items()}
        torch.manual_seed(1)  # same Gumbel noise and dropout in both runs
        (module(features).loss * scale).backward()
        grads.append(torch.cat([tensor.grad for tensor in features.values()]) / scale)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


@pytest.mark.parametrize(
    ("features", "error", "message"),
    [
        ({"image": torch.zeros(4, DIM)}, ValueError, "at least two"),
        ({"image": torch.zeros(4, DIM), "caption": torch.zeros(4, DIM + 1)}, ValueError, "shape"),
        ({"image": torch.zeros(4, DIM), "caption": torch.zeros(5, DIM)}, ValueError, "same batch"),
        (
            {"image": torch.zeros(4, DIM), "caption": torch.zeros(4, DIM, dtype=torch.long)},
            TypeError,
            "floating",
        ),
        ({"image": torch.zeros(4, DIM), "barycenter": torch.zeros(4, DIM)}, ValueError, "reserved"),
    ],
)
def test_clear_errors(features: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _module()(features)
