"""Image preprocessing: PIL images of any mode (incl. 16-bit medical images) to CLIP ``pixel_values``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

__all__ = ["ImageProcessor", "to_rgb"]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    High-bit-depth modes (``I;16``, ``I``, ``F``, common for DICOM-derived and 16-bit PNG medical
    images) are min-max rescaled to 0-255 first: PIL's own conversion clips them, which turns most
    radiographs white.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return image.convert("RGB")


class ImageProcessor:
    """Callable: list of PIL images -> ``pixel_values`` ``[B, 3, S, S]`` (float32).

    CLIP preprocessing (resize the shortest side to ``S``, centre-crop ``S`` x ``S``, rescale, CLIP
    mean/std) through transformers' PIL backend, which needs no torchvision.
    """

    def __init__(self, processor: CLIPImageProcessorPil) -> None:
        self.processor = processor

    @classmethod
    def for_size(cls, image_size: int, siglip: bool = False) -> ImageProcessor:
        """The standard CLIP processor for square inputs of ``image_size`` pixels (SigLIP's mean/std 0.5)."""
        normalisation = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if siglip else {}
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            **normalisation,
        )
        return cls(processor)

    @classmethod
    def from_pretrained(cls, source: str | Path, image_size: int | None = None) -> ImageProcessor:
        """Load a ``preprocessor_config.json`` from a directory or hub name; fall back to ``for_size``."""
        try:
            return cls(CLIPImageProcessorPil.from_pretrained(str(source)))
        except OSError:
            if image_size is None:
                raise
            return cls.for_size(image_size)

    @property
    def image_size(self) -> int:
        return int(self.processor.crop_size["height"])

    def __call__(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        rgb = [to_rgb(image) for image in images]
        return self.processor(rgb, return_tensors="pt")["pixel_values"]

    def save_pretrained(self, path: str | Path) -> None:
        self.processor.save_pretrained(str(path))
