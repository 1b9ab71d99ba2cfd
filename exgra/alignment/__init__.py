"""ExGra-Med multi-graph alignment as a standalone library piece (no LLM needed).

Pure tensor functions build kNN graphs and matching costs, :func:`solve_matching` solves the partial
graph-matching problem in batched torch, :func:`blackbox_matching` differentiates through it, and
:class:`MultiGraphAlignment` combines everything into the training loss.
"""

from exgra.alignment.blackbox import BlackboxMatching, blackbox_matching
from exgra.alignment.config import AlignmentConfig
from exgra.alignment.gnn import GraphConv, GraphEncoder
from exgra.alignment.graphs import (
    edge_affinity,
    edge_features,
    gumbel_noise,
    knn_graph,
    matching_costs,
    vertex_affinity,
)
from exgra.alignment.losses import hamming_loss, matching_accuracy
from exgra.alignment.module import AlignmentOutput, MultiGraphAlignment, gather_features, graph_pairs
from exgra.alignment.solver import edge_pair_indicator, matching_objective, solve_matching

__all__ = [
    "AlignmentConfig",
    "AlignmentOutput",
    "BlackboxMatching",
    "GraphConv",
    "GraphEncoder",
    "MultiGraphAlignment",
    "blackbox_matching",
    "edge_affinity",
    "edge_features",
    "edge_pair_indicator",
    "gather_features",
    "graph_pairs",
    "gumbel_noise",
    "hamming_loss",
    "knn_graph",
    "matching_accuracy",
    "matching_costs",
    "matching_objective",
    "solve_matching",
    "vertex_affinity",
]
