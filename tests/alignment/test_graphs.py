"""Graph construction, GNN equivalence with torch-geometric, costs, Hamming loss, config."""

from __future__ import annotations

import pytest
import torch

from exgra.alignment import (
    AlignmentConfig,
    GraphConv,
    edge_affinity,
    edge_features,
    hamming_loss,
    knn_graph,
    matching_costs,
    vertex_affinity,
)
from exgra.config import apply_overrides
from exgra.errors import ConfigError


def test_knn_graph_direction_order_and_no_self_loops() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    edges = knn_graph(points, k=2)
    expected = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3], [1, 2, 0, 2, 1, 0, 2, 1]])
    assert torch.equal(edges, expected)
    batched = knn_graph(torch.randn(3, 10, 4), k=5)
    assert batched.shape == (3, 2, 50)
    assert not bool((batched[:, 0] == batched[:, 1]).any())
    assert knn_graph(torch.randn(4, 2), k=5).shape == (2, 12)  # k capped at nodes - 1


def test_edge_features_affinities_and_costs() -> None:
    nodes = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    edges = torch.tensor([[0, 2], [1, 0]])
    assert torch.equal(edge_features(nodes, edges), torch.tensor([[1.0, -2.0], [2.0, 3.0]]))
    similarity = vertex_affinity(nodes, nodes)
    assert torch.allclose(similarity.diagonal(), torch.ones(3))
    assert similarity[0, 1] == pytest.approx(0.0)
    edge_similarity = edge_affinity(edge_features(nodes, edges), -edge_features(nodes, edges))
    assert torch.allclose(edge_similarity.diagonal(), -torch.ones(2))
    unary, quadratic = matching_costs(similarity, edge_similarity, torch.full((3, 3), 0.1), torch.zeros(2, 2))
    assert torch.allclose(unary, 0.5 - similarity - 0.1)
    assert torch.allclose(quadratic, -0.5 * (edge_similarity - 0.5))


def test_graph_conv_matches_torch_geometric() -> None:
    torch_geometric = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    reference = torch_geometric.GraphConv(8, 6, aggr="max")
    ours = GraphConv(8, 6)
    ours.load_state_dict(reference.state_dict())
    features = torch.randn(2, 7, 8)
    edges = knn_graph(features, k=3)
    expected = torch.stack([reference(features[i], edges[i]) for i in range(2)])
    assert torch.allclose(ours(features, edges), expected, atol=1e-5)


def test_hamming_loss_range() -> None:
    identity = torch.eye(4)
    assert float(hamming_loss(identity)) == 0.0
    assert float(hamming_loss(torch.zeros(4, 4))) == 1.0
    assert float(hamming_loss(identity.roll(1, 0))) == 2.0


def test_config_defaults_and_validation() -> None:
    config = AlignmentConfig()
    assert (config.k, config.gnn_width, config.dropout, config.gumbel_scale, config.lambda_val) == (
        5,
        None,
        0.1,
        0.05,
        80.0,
    )
    assert (config.scheme, config.graph_scope, config.quadratic_weight) == ("barycenter", "local", 0.5)
    assert apply_overrides(config, ["scheme=pairwise"]).scheme == "pairwise"
    with pytest.raises(ConfigError, match="lamda_val"):
        apply_overrides(config, ["lamda_val=3"])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: knn_graph(torch.zeros(4, 2, dtype=torch.long), 2), TypeError),
        (lambda: knn_graph(torch.zeros(4, 2), 0), ValueError),
        (lambda: edge_features(torch.zeros(3, 2), torch.tensor([[0], [5]])), ValueError),
        (lambda: vertex_affinity(torch.zeros(3, 2), torch.zeros(3, 4)), ValueError),
    ],
)
def test_graph_function_errors(call, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()
