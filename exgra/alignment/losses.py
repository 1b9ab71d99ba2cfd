"""Losses on matchings (REFERENCE §2.8)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hamming_loss", "matching_accuracy"]


def hamming_loss(matching: Tensor, target: Tensor | None = None) -> Tensor:
    """Hamming distance to the target matching divided by the number of rows: ``(1/n1)·Σ_ij |M_ij - T_ij|``.

    Args:
        matching: ``[..., n1, n2]`` 0/1 (or fractional) matching.
        target: ``[..., n1, n2]``; defaults to the identity (sample ``b`` ↔ sample ``b``).

    Returns:
        ``[...]``: 0 for the target, 1 for the empty matching, 2 for a fully wrong permutation.
    """
    if matching.dim() < 2:
        raise ValueError(f"matching must have shape [..., n1, n2], got {list(matching.shape)}")
    if target is None:
        target = torch.eye(
            matching.shape[-2], matching.shape[-1], dtype=matching.dtype, device=matching.device
        )
    elif target.shape[-2:] != matching.shape[-2:]:
        raise ValueError(f"target shape {list(target.shape)} does not match matching {list(matching.shape)}")
    # M(1-T) + (1-M)T is |M - T| for 0/1 entries and stays linear in M (what blackbox backward needs).
    return (matching * (1 - target) + (1 - matching) * target).sum((-2, -1)) / matching.shape[-2]


def matching_accuracy(matching: Tensor) -> Tensor:
    """Fraction of rows matched to their own index (identity ground truth): ``[..., n, n] -> [...]``."""
    return matching.diagonal(dim1=-2, dim2=-1).float().mean(-1)
