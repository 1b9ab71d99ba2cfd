"""Builders the eval tests share: a tiny saved model and the demo dataset (real medical images)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A random ``tiny`` model saved to ``path`` (deterministic for ``seed``)."""
    from exgra.models import create_model

    torch.manual_seed(seed)
    create_model("tiny").save(path)
    return path


def build_demo(path: Path, num_samples: int = 60) -> object:
    """The demo dataset (real medical images from pip packages) in ``path``."""
    from exgra.data.demo_data import build_demo_dataset

    return build_demo_dataset(path, num_samples=num_samples)
