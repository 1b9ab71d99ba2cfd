"""Pure tensor functions that turn node features into graph-matching costs (REFERENCE §2.3, §2.5, §2.6).

Every function accepts optional leading batch dimensions (``...``) so the six graphs of one training
step are built in one call. Nothing here loops over nodes or edges in Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "edge_affinity",
    "edge_features",
    "gumbel_noise",
    "knn_graph",
    "matching_costs",
    "vertex_affinity",
]


def _check_features(name: str, features: Tensor) -> None:
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {features.dtype}")
    if features.dim() < 2:
        raise ValueError(f"{name} must have shape [..., nodes, dim], got {list(features.shape)}")


def _check_edges(edge_index: Tensor, nodes: int) -> None:
    if not isinstance(edge_index, Tensor) or edge_index.dtype != torch.long:
        raise TypeError("edge_index must be a long (int64) tensor of shape [..., 2, E]")
    if edge_index.dim() < 2 or edge_index.shape[-2] != 2:
        raise ValueError(f"edge_index must have shape [..., 2, E], got {list(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= nodes):
        raise ValueError(f"edge_index holds node indices outside [0, {nodes})")


def knn_graph(features: Tensor, k: int) -> Tensor:
    """Directed k-nearest-neighbour graph without self loops (Euclidean distance).

    Same convention as ``torch_geometric.nn.knn_graph(x, k, loop=False, flow="target_to_source")`` used
    by the reference: ``edge_index[0]`` is the query node ``u`` and ``edge_index[1]`` one of its ``k``
    nearest neighbours ``w``. Edges are grouped by query node (0, 1, ...) and, within a node, ordered by
    increasing distance. ``k`` is capped at ``nodes - 1``.

    Args:
        features: ``[..., nodes, dim]``.
        k: neighbours per node (>= 1).

    Returns:
        ``edge_index [..., 2, nodes * min(k, nodes - 1)]`` (long).
    """
    _check_features("features", features)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    nodes = features.shape[-2]
    k = min(k, nodes - 1)
    batch_shape = features.shape[:-2]
    if k <= 0:
        return torch.zeros(*batch_shape, 2, 0, dtype=torch.long, device=features.device)
    with torch.no_grad():
        distances = torch.cdist(features.float(), features.float())
        distances.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
        neighbours = distances.topk(k, dim=-1, largest=False, sorted=True).indices  # [..., nodes, k]
    queries = torch.arange(nodes, device=features.device)[:, None].expand(nodes, k)
    queries = queries.expand(*batch_shape, nodes, k)
    return torch.stack([queries.reshape(*batch_shape, -1), neighbours.reshape(*batch_shape, -1)], dim=-2)


def edge_features(node_features: Tensor, edge_index: Tensor) -> Tensor:
    """Edge vectors ``f_a = h_u - h_w`` for every edge ``a = (u, w)`` (REFERENCE §2.5, before normalising).

    Args:
        node_features: ``[..., nodes, dim]``.
        edge_index: ``[..., 2, E]`` with the same leading dimensions.

    Returns:
        ``[..., E, dim]``.
    """
    _check_features("node_features", node_features)
    _check_edges(edge_index, node_features.shape[-2])
    dim = node_features.shape[-1]
    source = edge_index[..., 0, :, None].expand(*edge_index.shape[:-2], edge_index.shape[-1], dim)
    target = edge_index[..., 1, :, None].expand_as(source)
    return node_features.gather(-2, source) - node_features.gather(-2, target)


def vertex_affinity(left: Tensor, right: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of all node pairs: ``[..., n1, D] x [..., n2, D] -> [..., n1, n2]``."""
    _check_features("left", left)
    _check_features("right", right)
    if left.shape[-1] != right.shape[-1]:
        raise ValueError(f"left and right features differ in width: {left.shape[-1]} vs {right.shape[-1]}")
    return F.normalize(left, dim=-1, eps=eps) @ F.normalize(right, dim=-1, eps=eps).transpose(-1, -2)


def edge_affinity(left_edges: Tensor, right_edges: Tensor, eps: float = 1e-12) -> Tensor:
    """Inner product of L2-normalised edge vectors: ``[..., E1, D] x [..., E2, D] -> [..., E1, E2]``."""
    _check_features("left_edges", left_edges)
    _check_features("right_edges", right_edges)
    if left_edges.shape[-1] != right_edges.shape[-1]:
        raise ValueError(
            f"left_edges and right_edges differ in width: {left_edges.shape[-1]} vs {right_edges.shape[-1]}"
        )
    return F.normalize(left_edges, dim=-1, eps=eps) @ F.normalize(right_edges, dim=-1, eps=eps).transpose(
        -1, -2
    )


def gumbel_noise(
    shape: tuple[int, ...] | torch.Size,
    scale: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Gumbel(0, ``scale``) samples (the reference draws ``numpy.random.gumbel(0, 0.05)``), float32."""
    uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    return -scale * torch.log(-torch.log(uniform.clamp(min=tiny, max=1.0 - 1e-7)))


def matching_costs(
    vertex_similarity: Tensor,
    edge_similarity: Tensor,
    vertex_noise: Tensor | None = None,
    edge_noise: Tensor | None = None,
    unary_offset: float = 0.5,
    quadratic_offset: float = 0.5,
    quadratic_weight: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Solver costs from affinities (REFERENCE §2.6; the solver minimises).

    ``unary = unary_offset - S - G`` and ``quadratic = -quadratic_weight * (K + G' - quadratic_offset)``.

    Args:
        vertex_similarity: ``S [..., n1, n2]``.
        edge_similarity: ``K [..., E1, E2]``.
        vertex_noise: optional ``G`` broadcastable to ``S``.
        edge_noise: optional ``G'`` broadcastable to ``K``.

    Returns:
        ``(unary [..., n1, n2], quadratic [..., E1, E2])``.
    """
    if vertex_similarity.dim() < 2 or edge_similarity.dim() < 2:
        raise ValueError(
            "vertex_similarity and edge_similarity must be at least 2-D ([..., n1, n2], [..., E1, E2])"
        )
    unary = unary_offset - vertex_similarity
    if vertex_noise is not None:
        unary = unary - vertex_noise
    quadratic = edge_similarity - quadratic_offset
    if edge_noise is not None:
        quadratic = quadratic + edge_noise
    return unary, -quadratic_weight * quadratic
