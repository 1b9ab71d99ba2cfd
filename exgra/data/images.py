"""Image paths that cannot escape their folder, and image loading that always gives 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from exgra.errors import DataError

__all__ = ["IMAGE_CONVERSIONS", "array_to_rgb", "load_image", "safe_image_path", "to_rgb"]

# How a non-RGB image becomes RGB. "reference": PIL's own conversion, which is what transformers 4.28's
# ``convert_to_rgb`` (the reference's CLIP processor) does: the alpha channel is dropped and 16-bit /
# float values are clipped to 0..255. "exgra": alpha composited on black, high-bit-depth data min-max
# rescaled (keeps the contrast of 12/16-bit radiographs). Models answer as trained with the conversion
# they were trained with; see docs/models.md.
IMAGE_CONVERSIONS = ("reference", "exgra")


def safe_image_path(folder: str | Path, relative: str | Path) -> Path:
    """Resolve ``relative`` inside ``folder``; refuse anything that would leave the folder.

    Absolute paths, ``..`` components and symlinks that point outside the folder are all
    rejected: a record file must never make the trainer read (or leak) arbitrary files.
    """
    relative_text = str(relative)
    if not relative_text.strip():
        raise DataError(f"empty image path in a record (image folder {folder})")
    candidate = Path(relative_text)
    if candidate.is_absolute() or relative_text.startswith(("/", "\\")) or candidate.drive:
        raise DataError(f"image path '{relative_text}' must be relative to the image folder {folder}")
    root = Path(folder).resolve()
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"image path '{relative_text}' resolves outside the image folder {root}")
    return resolved


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """Turn a 2-D (gray) or H×W×3/4 array of any numeric dtype into an 8-bit RGB image.

    Non-uint8 data (16-bit DICOM/PNG, floats) is min-max rescaled to 0..255, so a 12-bit
    radiograph keeps its full contrast instead of being clipped or shown black.
    """
    data = np.asarray(array)
    if data.ndim == 3 and data.shape[-1] == 4:
        data = data[..., :3]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] != 3):
        raise DataError(f"cannot make an RGB image from an array of shape {tuple(data.shape)}")
    if data.dtype != np.uint8:
        data = data.astype(np.float64)
        low, high = float(np.nanmin(data)), float(np.nanmax(data))
        scale = 255.0 / (high - low) if high > low else 0.0
        data = np.nan_to_num((data - low) * scale).round().clip(0, 255).astype(np.uint8)
    image = Image.fromarray(data)
    return image.convert("RGB")


def to_rgb(image: Image.Image, conversion: str = "exgra") -> Image.Image:
    """Convert a PIL image of any mode (16-bit/32-bit gray, float, palette, RGBA, CMYK) to RGB.

    ``conversion`` is one of :data:`IMAGE_CONVERSIONS`.
    """
    if conversion not in IMAGE_CONVERSIONS:
        raise ValueError(f"unknown image conversion {conversion!r}; use {' or '.join(IMAGE_CONVERSIONS)}")
    if image.mode == "RGB":
        return image
    if conversion == "reference":
        return image.convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return array_to_rgb(np.asarray(image))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become black, the usual background of medical images.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(folder: str | Path, relative: str | Path, conversion: str | None = "exgra") -> Image.Image:
    """Open ``folder/relative`` (checked with :func:`safe_image_path`) as an 8-bit RGB PIL image.

    ``conversion=None`` keeps the file's own mode, for callers whose image processor converts
    (the model's :class:`exgra.models.ImageProcessor` applies the model's ``image_conversion``).
    """
    path = safe_image_path(folder, relative)
    if not path.is_file():
        raise DataError(f"image not found: {path} (record image '{relative}' in folder {folder})")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened if conversion is None else to_rgb(opened, conversion)
    except Image.DecompressionBombError as exc:  # a header claiming e.g. 60000 x 60000 pixels
        raise DataError(
            f"image {path} declares more pixels than Pillow's safety limit ({Image.MAX_IMAGE_PIXELS}); "
            "it is refused as a possible decompression bomb"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
