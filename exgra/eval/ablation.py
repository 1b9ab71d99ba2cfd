"""Blind-image controls: replace the real image to measure how much a model's answers depend on it.

``blank`` keeps the image size but makes every pixel mid-grey; ``noise`` draws uniform RGB noise seeded
by the question id, so a rerun (or a resumed run) sees the same noise; ``shuffle`` gives each question
the image of other questions (:func:`shuffled_images`, seeded). Scoring the same test set with ``none``
and with a control gives the grounding gap: a model that ignores the image scores the same.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

import numpy as np
from PIL import Image

from exgra.choices import ImageAblation, choices

__all__ = ["ABLATIONS", "ImageAblation", "ablate_image", "shuffled_images"]

ABLATIONS: tuple[str, ...] = choices(ImageAblation)


def _seed_for(key: str, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def ablate_image(image: Image.Image, mode: str, key: str = "", seed: int = 0) -> Image.Image:
    """Return ``image`` unchanged (``none``), a mid-grey image (``blank``) or seeded noise (``noise``).

    The replacement has the size of the original so the image processor treats it the same way;
    ``key`` (usually the question id) and ``seed`` make the noise reproducible per question.
    """
    if mode in ("none", "shuffle"):  # shuffle swaps the image file, not its pixels
        return image
    width, height = image.size
    if mode == "blank":
        return Image.new("RGB", (width, height), (128, 128, 128))
    if mode == "noise":
        rng = np.random.default_rng(_seed_for(key, seed))
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels, mode="RGB")
    raise ValueError(f"unknown image ablation {mode!r}; choose one of {', '.join(ABLATIONS)}")


def shuffled_images(pairs: Iterable[tuple[str, str]], seed: int) -> dict[str, str]:
    """``(question id, image)`` pairs -> question id -> the image it is shown under ``shuffle``.

    The distinct images are put in a seeded random cycle and each image is replaced by the next one,
    so no question keeps its own image (when there are at least two images), questions that share an
    image are shown the same other image, and the mapping depends only on the set of images and the
    seed (a resumed run sees the same one).
    """
    pairs = list(pairs)
    images = sorted({image for _, image in pairs})
    random.Random(f"shuffle:{seed}").shuffle(images)
    following = {image: images[(index + 1) % len(images)] for index, image in enumerate(images)}
    return {key: following[image] for key, image in pairs}
