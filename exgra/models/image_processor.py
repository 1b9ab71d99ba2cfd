"""Image preprocessing: PIL images of any mode (incl. 16-bit medical images) to CLIP ``pixel_values``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from exgra.data.images import IMAGE_CONVERSIONS, to_rgb

__all__ = ["ImageProcessor", "expand_to_square", "to_rgb"]


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad an RGB image to a centred square on ``background`` (LLaVA-1.5's ``image_aspect_ratio=pad``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


class ImageProcessor:
    """Callable: list of PIL images -> ``pixel_values`` ``[B, 3, S, S]`` (float32).

    Images are first made RGB with ``conversion`` (:data:`exgra.data.images.IMAGE_CONVERSIONS`), padded to
    a square with the mean colour when ``aspect_ratio="pad"`` (LLaVA-1.5 / LLaVA-Med v1.5), then CLIP
    preprocessing (resize the shortest side to ``S``, centre-crop ``S`` x ``S``, rescale, CLIP mean/std)
    through transformers' PIL backend, which needs no torchvision.
    """

    def __init__(
        self, processor: CLIPImageProcessorPil, conversion: str = "exgra", aspect_ratio: str = "square"
    ) -> None:
        if conversion not in IMAGE_CONVERSIONS:
            raise ValueError(f"unknown image conversion {conversion!r}")
        if aspect_ratio not in ("square", "pad"):
            raise ValueError(f"unknown image aspect ratio {aspect_ratio!r}; use square or pad")
        self.processor = processor
        self.conversion = conversion
        self.aspect_ratio = aspect_ratio

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

    def configured(self, conversion: str, aspect_ratio: str) -> ImageProcessor:
        """The same CLIP processor with another RGB conversion / aspect-ratio rule."""
        return ImageProcessor(self.processor, conversion, aspect_ratio)

    @property
    def image_size(self) -> int:
        return int(self.processor.crop_size["height"])

    def prepare(self, image: Image.Image) -> Image.Image:
        """One PIL image as the CLIP processor receives it (RGB, padded to a square when configured)."""
        rgb = to_rgb(image, self.conversion)
        if self.aspect_ratio == "pad":
            mean = self.processor.image_mean
            rgb = expand_to_square(rgb, tuple(int(value * 255) for value in mean))
        return rgb

    def __call__(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        return self.processor([self.prepare(image) for image in images], return_tensors="pt")["pixel_values"]

    def save_pretrained(self, path: str | Path) -> None:
        self.processor.save_pretrained(str(path))
