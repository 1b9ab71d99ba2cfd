"""The one map from the dtype names of configs and options to torch dtypes."""

from __future__ import annotations

import torch

__all__ = ["TORCH_DTYPES"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
