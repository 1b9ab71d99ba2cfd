"""``MultiGraphAlignment``: the ExGra-Med alignment loss over several modalities (REFERENCE §2.2–§2.11)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from exgra.alignment.blackbox import blackbox_matching
from exgra.alignment.config import AlignmentConfig
from exgra.alignment.gnn import GraphEncoder
from exgra.alignment.graphs import (
    edge_affinity,
    edge_features,
    gumbel_noise,
    knn_graph,
    matching_costs,
    vertex_affinity,
)
from exgra.alignment.losses import hamming_loss, matching_accuracy

__all__ = ["BARYCENTER", "AlignmentOutput", "MultiGraphAlignment", "gather_features", "graph_pairs"]

BARYCENTER = "barycenter"


@dataclass
class AlignmentOutput:
    """Result of one alignment forward.

    ``loss``: scalar float32 tensor; ``diagnostics``: floats (``loss``, ``accuracy/<src>-><dst>``,
    ``hamming/<src>-><dst>``, ``accuracy``, ``certified``: share of the forward solves the solver's lower
    bound proves optimal); ``pairs``: the (structure source, target) graph pairs in
    order; ``matchings``: ``[pairs, B, B]`` 0/1 matchings (B = global batch in global scope).
    """

    loss: Tensor
    diagnostics: dict[str, float] = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    matchings: Tensor | None = None


def graph_pairs(modalities: list[str], scheme: str) -> list[tuple[str, str]]:
    """Matched graph pairs ``(source, target)``; the kNN structure comes from ``source``.

    ``barycenter`` (reference): each modality with the barycenter, both directions. ``pairwise``: every
    pair of modalities, both directions.
    """
    if scheme == "barycenter":
        return [pair for name in modalities for pair in ((name, BARYCENTER), (BARYCENTER, name))]
    if scheme == "pairwise":
        return [
            pair
            for i, first in enumerate(modalities)
            for second in modalities[i + 1 :]
            for pair in ((first, second), (second, first))
        ]
    raise ValueError(f"unknown alignment scheme '{scheme}'; choose 'barycenter' or 'pairwise'")


def gather_features(features: Tensor) -> Tensor:
    """All-gather ``[B_rank, D]`` features across processes with gradients -> ``[Σ B_rank, D]`` (rank order).

    Unequal per-rank batch sizes are padded for the collective and cut out again. Without an
    initialised process group this returns ``features`` unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    size = torch.tensor([features.shape[0]], device=features.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    largest = max(counts)
    padded = features
    if features.shape[0] < largest:
        padded = torch.cat([features, features.new_zeros(largest - features.shape[0], *features.shape[1:])])
    gathered = all_gather(padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts, strict=True)])


def _shared_generator(device: torch.device) -> torch.Generator:
    """A generator seeded identically on every rank, so noise and dropout agree in global scope."""
    seed = torch.randint(0, 2**62, (1,), device=device)
    dist.broadcast(seed, src=0)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


class MultiGraphAlignment(nn.Module):
    """Multi-graph alignment loss: kNN graphs + Siamese GNN + graph matching + Hamming loss.

    ``forward({"image": [B, D], "response": [B, D], "caption": [B, D]}) -> AlignmentOutput``. Any two or
    more modalities work. Computation is float32 whatever the caller's autocast; the GNN is the only
    trainable part. Sample ``b`` of every modality is the same item (identity ground truth).
    """

    def __init__(self, config: AlignmentConfig | None = None, feature_dim: int = 4096) -> None:
        super().__init__()
        self.config = config or AlignmentConfig()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.feature_dim = feature_dim
        self.gnn = GraphEncoder(feature_dim, self.config.gnn_width or feature_dim, self.config.dropout)

    def _check(self, features: Mapping[str, Tensor]) -> tuple[list[str], int]:
        if not isinstance(features, Mapping) or len(features) < 2:
            raise ValueError(
                "MultiGraphAlignment needs a dict of at least two modalities {name: features [B, D]}"
            )
        if BARYCENTER in features:
            raise ValueError(
                f"'{BARYCENTER}' is reserved for the mean of the modalities; rename that modality"
            )
        batch = None
        for name, tensor in features.items():
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                raise TypeError(f"features['{name}'] must be a floating-point tensor")
            if tensor.dim() != 2 or tensor.shape[1] != self.feature_dim:
                raise ValueError(
                    f"features['{name}'] must have shape [B, {self.feature_dim}], got {list(tensor.shape)}"
                )
            if batch is None:
                batch = tensor.shape[0]
            elif tensor.shape[0] != batch:
                raise ValueError(
                    f"all modalities need the same batch size; '{name}' has {tensor.shape[0]}, not {batch}"
                )
        if batch is None or batch < 1:
            raise ValueError("features must hold at least one sample")
        return list(features), batch

    def forward(self, features: Mapping[str, Tensor]) -> AlignmentOutput:
        modalities, _ = self._check(features)
        config = self.config
        device = next(iter(features.values())).device
        device_type = device.type if device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            nodes = {name: features[name].float() for name in modalities}
            generator = None
            if config.graph_scope == "global":
                nodes = {name: gather_features(tensor) for name, tensor in nodes.items()}
                randomised = self.training and (config.gumbel_scale > 0 or config.dropout > 0)
                if randomised and dist.is_available() and dist.is_initialized():
                    generator = _shared_generator(device)
            if config.scheme == "barycenter":
                nodes[BARYCENTER] = torch.stack([nodes[name] for name in modalities]).mean(0)
            pairs = graph_pairs(modalities, config.scheme)
            return self._align(nodes, pairs, generator)

    def _align(
        self, nodes: dict[str, Tensor], pairs: list[tuple[str, str]], generator: torch.Generator | None
    ) -> AlignmentOutput:
        config = self.config
        sources = torch.stack([nodes[source] for source, _ in pairs])  # [P, B, D]
        targets = torch.stack([nodes[target] for _, target in pairs])
        count, batch = sources.shape[:2]
        edges = knn_graph(sources.detach(), config.k)  # [P, 2, E]; both graphs of a pair share it
        hidden = self.gnn(torch.cat([sources, targets]), torch.cat([edges, edges]), generator)
        hidden_source, hidden_target = hidden[:count], hidden[count:]
        similarity = vertex_affinity(hidden_source, hidden_target)
        edge_similarity = edge_affinity(
            edge_features(hidden_source, edges), edge_features(hidden_target, edges)
        )
        vertex_noise = edge_noise = None
        if self.training and config.gumbel_scale > 0:
            device = similarity.device
            # One node-noise matrix shared by all matchings, fresh edge noise per matching (reference).
            vertex_noise = gumbel_noise((batch, batch), config.gumbel_scale, generator, device)
            edge_noise = gumbel_noise(edge_similarity.shape, config.gumbel_scale, generator, device)
        unary, quadratic = matching_costs(
            similarity,
            edge_similarity,
            vertex_noise,
            edge_noise,
            config.unary_offset,
            config.quadratic_offset,
            config.quadratic_weight,
        )
        # The loss is the mean of P Hamming losses, each (1/B)Σ|M - I|: every entry of ∂loss/∂M has
        # magnitude 1/(P·B) for an unscaled loss, the reference's perturbation size.
        gradient_norm = 1.0 / (count * batch) if config.scale_invariant_gradient else None
        matchings, certified = blackbox_matching(
            unary,
            quadratic,
            edges,
            edges,
            config.lambda_val,
            gradient_norm,
            config.edge_gradient,
            return_certificate=True,
            search=config.solver_search,
        )
        per_pair = hamming_loss(matchings)
        loss = per_pair.mean()
        accuracy = matching_accuracy(matchings.detach())
        diagnostics = {
            "loss": float(loss.detach()),
            "accuracy": float(accuracy.mean()),
            "certified": float(certified.float().mean()),
        }
        for (source, target), acc, ham in zip(
            pairs, accuracy.tolist(), per_pair.detach().tolist(), strict=True
        ):
            diagnostics[f"accuracy/{source}->{target}"] = acc
            diagnostics[f"hamming/{source}->{target}"] = ham
        return AlignmentOutput(loss=loss, diagnostics=diagnostics, pairs=pairs, matchings=matchings.detach())
