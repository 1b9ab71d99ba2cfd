"""The reference's Siamese GNN (``GDPModel1``, REFERENCE §2.4), batched over graphs.

``GraphConv`` is a batched equivalent of ``torch_geometric.nn.GraphConv(aggr="max")`` with the same
parameter names (``lin_rel`` with bias, ``lin_root`` without), so state dicts are interchangeable; it
takes ``[..., nodes, dim]`` features and ``[..., 2, E]`` edges so the six graphs of a step run at once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GraphConv", "GraphEncoder"]


class GraphConv(nn.Module):
    """``h_i = W_root x_i + W_rel · max_{u:(u→i)∈E} x_u + b`` (a node without incoming edges aggregates 0)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.lin_rel = nn.Linear(in_features, out_features, bias=True)
        self.lin_root = nn.Linear(in_features, out_features, bias=False)

    def forward(self, features: Tensor, edge_index: Tensor) -> Tensor:
        """``features [..., nodes, in]``, ``edge_index [..., 2, E]`` (row 0 → 1) -> ``[..., nodes, out]``."""
        dim = features.shape[-1]
        batch_shape = edge_index.shape[:-2]
        edges = edge_index.shape[-1]
        source = edge_index[..., 0, :, None].expand(*batch_shape, edges, dim)
        target = edge_index[..., 1, :, None].expand(*batch_shape, edges, dim)
        messages = features.gather(-2, source)
        aggregated = torch.zeros_like(features).scatter_reduce(
            -2, target, messages, "amax", include_self=False
        )
        return self.lin_rel(aggregated) + self.lin_root(features)


class GraphEncoder(nn.Module):
    """Two max-aggregation GraphConv layers with ReLU, then dropout (shared by both graphs of a pair)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.conv1 = GraphConv(in_features, hidden_features)
        self.conv2 = GraphConv(hidden_features, hidden_features)
        self.dropout = dropout

    def forward(
        self, features: Tensor, edge_index: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[..., nodes, in]``, ``[..., 2, E]`` -> ``[..., nodes, hidden]``.

        ``generator`` makes the dropout mask reproducible (used to keep ranks identical in global scope).
        """
        hidden = torch.relu(self.conv1(features, edge_index))
        hidden = torch.relu(self.conv2(hidden, edge_index))
        if self.training and self.dropout > 0:
            keep = torch.rand(hidden.shape, generator=generator, device=hidden.device) >= self.dropout
            hidden = hidden * keep / (1.0 - self.dropout)
        return hidden
