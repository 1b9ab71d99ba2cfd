"""Configuration of the multi-graph alignment loss (reference defaults, REFERENCE §2.12)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from exgra.config import Section

__all__ = ["AlignmentConfig"]


class AlignmentConfig(Section):
    """Multi-graph alignment hyperparameters; defaults reproduce the reference's stage 2."""

    k: int = Field(5, ge=1, description="neighbours per node in the kNN graphs")
    gnn_width: int | None = Field(None, ge=1, description="GNN hidden width; None = feature dimension")
    aggregation: Literal["max"] = Field("max", description="GNN neighbour aggregation")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout after the GNN")
    gumbel_scale: float = Field(
        0.05, ge=0.0, description="scale of the Gumbel noise on costs (training only)"
    )
    unary_offset: float = Field(0.5, description="unary cost = offset - similarity - noise")
    quadratic_offset: float = Field(
        0.5, description="quadratic cost = -weight * (similarity + noise - offset)"
    )
    quadratic_weight: float = Field(0.5, ge=0.0, description="weight of the edge (quadratic) costs")
    lambda_val: float = Field(80.0, gt=0.0, description="blackbox-differentiation interpolation strength")
    edge_gradient: bool = Field(
        True,
        description="blackbox gradient for the edge costs too (reference); false = unary costs only",
    )
    solver_search: Literal["iterated", "plain"] = Field(
        "iterated",
        description="iterated: extra starts and kick rounds (optimal as far as measured); plain: faster",
    )
    scale_invariant_gradient: bool = Field(
        True, description="make the blackbox gradient independent of a mixed-precision loss scale"
    )
    scheme: Literal["barycenter", "pairwise"] = Field(
        "barycenter", description="barycenter: each modality vs the mean (reference); pairwise: every pair"
    )
    graph_scope: Literal["local", "global"] = Field(
        "local",
        description="local: graphs over each process's micro-batch (reference); global: gathered batch",
    )
