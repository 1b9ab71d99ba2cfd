"""Fidelity to the reference's loss (issue #10): the whole loss and its feature gradient against an
independent plain-torch computation with brute-force matchings, and brute-force optimality of the solver
on problems exgra's own pipeline produces (knn_graph -> GraphEncoder -> matching_costs, k = 5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exgra.alignment import AlignmentConfig, MultiGraphAlignment, matching_objective, solve_matching
from tests.alignment.instances import brute_force, brute_force_matching, pipeline_problem

NODES, DIM, K, LAMBDA = 6, 8, 3, 80.0


def _plain_knn(x: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """(query, neighbour) pairs: the k nearest other nodes by Euclidean distance, nearest first."""
    edges = []
    for u in range(x.shape[0]):
        distances = [(float((x[u] - x[w]).pow(2).sum()), w) for w in range(x.shape[0]) if w != u]
        edges += [(u, w) for _, w in sorted(distances)[:k]]
    return edges


def _plain_gnn(x: torch.Tensor, edges: list[tuple[int, int]], module: MultiGraphAlignment) -> torch.Tensor:
    """Two GraphConv(max) layers with ReLU: h_i = W_root x_i + W_rel max_{u->i} x_u + b (0 if no u)."""
    for conv in (module.gnn.conv1, module.gnn.conv2):
        rows = []
        for i in range(x.shape[0]):
            incoming = [x[u] for u, w in edges if w == i]
            aggregated = torch.stack(incoming).amax(0) if incoming else torch.zeros_like(x[i])
            rows.append(conv.lin_rel.weight @ aggregated + conv.lin_rel.bias + conv.lin_root.weight @ x[i])
        x = torch.relu(torch.stack(rows))
    return x


def _plain_pair_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    module: MultiGraphAlignment,
    pairs_count: int,
    edge_gradient: bool,
) -> torch.Tensor:
    """One matching's Hamming loss / pairs_count, differentiated as the reference's blackbox does: the value
    is the brute-force matching's loss, the gradient that of Σ(∂L/∂C ⊙ C) + Σ(∂L/∂Q ⊙ Q) (the second term
    dropped for the unary-only variant)."""
    edges = _plain_knn(source.detach(), K)
    h1, h2 = _plain_gnn(source, edges, module), _plain_gnn(target, edges, module)
    similarity = F.normalize(h1, dim=1) @ F.normalize(h2, dim=1).t()
    f1 = torch.stack([h1[u] - h1[w] for u, w in edges])
    f2 = torch.stack([h2[u] - h2[w] for u, w in edges])
    edge_similarity = F.normalize(f1, dim=1) @ F.normalize(f2, dim=1).t()
    unary = 0.5 - similarity
    quadratic = -0.5 * (edge_similarity - 0.5)
    index = torch.tensor(edges).t()
    matching, _ = brute_force_matching(unary.detach(), quadratic.detach(), index, index)
    eye = torch.eye(NODES)
    grad_matching = (1 - 2 * eye) / (NODES * pairs_count)  # ∂(mean of Hamming losses)/∂M
    perturbed, _ = brute_force_matching(
        unary.detach() + LAMBDA * grad_matching, quadratic.detach(), index, index
    )

    def kept(m: torch.Tensor) -> torch.Tensor:  # Y[a, b] = M[i, k] M[j, l]
        return torch.tensor([[float(m[i, k] * m[j, o]) for k, o in edges] for i, j in edges])

    grad_unary = -(matching - perturbed) / LAMBDA
    grad_quadratic = -(kept(matching) - kept(perturbed)) / LAMBDA
    value = (matching - eye).abs().sum() / NODES / pairs_count
    surrogate = (grad_unary * unary).sum() + (grad_quadratic * quadratic).sum() * edge_gradient
    return value + surrogate - surrogate.detach()


@pytest.mark.parametrize("edge_gradient", [True, False])
def test_loss_and_feature_gradient_equal_a_plain_torch_reference(edge_gradient: bool) -> None:
    torch.manual_seed(0)
    config = AlignmentConfig(k=K, dropout=0.0, gumbel_scale=0.0, edge_gradient=edge_gradient)
    module = MultiGraphAlignment(config, feature_dim=DIM).train()
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(NODES, DIM, generator=generator)
    names = ("image", "response", "caption")
    features = {name: (base + 1.5 * torch.randn(NODES, DIM, generator=generator)) for name in names}
    ours = {name: tensor.clone().requires_grad_(True) for name, tensor in features.items()}
    output = module(ours)
    output.loss.backward()
    plain = {name: tensor.clone().requires_grad_(True) for name, tensor in features.items()}
    barycenter = torch.stack([plain[name] for name in names]).mean(0)
    loss = torch.zeros(())
    for name in names:
        for source, target in ((plain[name], barycenter), (barycenter, plain[name])):
            loss = loss + _plain_pair_loss(source, target, module, 6, edge_gradient)
    loss.backward()
    assert float(output.loss.detach()) == pytest.approx(float(loss.detach()), abs=1e-6)
    for name in names:
        assert plain[name].grad.abs().sum() > 0
        assert torch.allclose(ours[name].grad, plain[name].grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize(("gumbel", "perturbed"), [(True, False), (False, False), (True, True)])
def test_solver_is_optimal_on_pipeline_problems(gumbel: bool, perturbed: bool) -> None:
    # Random features -> knn_graph (k = 5) -> random-weight GraphEncoder -> matching_costs, with and without
    # Gumbel noise, and the blackbox backward's perturbed costs C + λ·g; brute force is the oracle.
    for seed in range(9):
        problem = pipeline_problem(
            5 + seed % 3, seed, noise=(0.5, 1.0, 2.0)[seed // 3 % 3], gumbel=gumbel, perturbed=perturbed
        )
        value = float(matching_objective(solve_matching(*problem), *problem))
        assert value <= brute_force(*problem) + 1e-4, seed
