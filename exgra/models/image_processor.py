"""Image preprocessing: PIL images of any mode (incl. 16-bit medical images) to CLIP ``pixel_values``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from exgra.data.images import to_rgb

__all__ = ["ImageProcessor", "to_rgb"]


class ImageProcessor:
    """Callable: list of PIL images -> ``pixel_values`` ``[B, 3, S, S]`` (float32).

    CLIP preprocessing (resize the shortest side to ``S``, centre-crop ``S`` x ``S``, rescale, CLIP
    mean/std) through transformers' PIL backend, which needs no torchvision.
    """

    def __init__(self, processor: CLIPImageProcessorPil) -> None:
        self.processor = processor

    @classmethod
    def for_size(cls, image_size: int) -> ImageProcessor:
        """The standard CLIP processor for square inputs of ``image_size`` pixels."""
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
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
