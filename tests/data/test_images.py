"""Image paths must stay inside their folder; every image loads as 8-bit RGB."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from exgra.data.records import load_image, safe_image_path
from exgra.errors import DataError


def test_safe_image_path_accepts_nested_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    assert safe_image_path(tmp_path, "sub/a.png") == (tmp_path / "sub" / "a.png").resolve()
    assert safe_image_path(tmp_path, "sub/../a.png") == (tmp_path / "a.png").resolve()


@pytest.mark.parametrize("relative", ["/etc/passwd", "../outside.png", "sub/../../outside.png", "", "  "])
def test_safe_image_path_rejects_escapes(tmp_path, relative):
    with pytest.raises(DataError):
        safe_image_path(tmp_path / "images", relative)


def test_safe_image_path_rejects_symlinks_leading_outside(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    os.symlink(secret, folder / "link.png")
    os.symlink(tmp_path, folder / "up")
    with pytest.raises(DataError, match="outside the image folder"):
        load_image(folder, "link.png")
    with pytest.raises(DataError, match="outside the image folder"):
        safe_image_path(folder, "up/secret.png")


def test_load_image_16bit_grayscale_is_rescaled(tmp_path):
    ramp = np.linspace(1000, 4000, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ct.png")
    assert Image.open(tmp_path / "ct.png").mode.startswith("I")
    image = load_image(tmp_path, "ct.png")
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (8, 8, 3)
    assert pixels.min() == 0 and pixels.max() == 255  # full contrast, not clipped to white
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_load_image_palette_rgba_and_gray(tmp_path):
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "p.png")
    assert tuple(np.asarray(load_image(tmp_path, "p.png"))[1, 1]) == (200, 10, 20)

    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.save(tmp_path / "a.png")
    loaded = np.asarray(load_image(tmp_path, "a.png"))
    assert tuple(loaded[0, 0]) == (10, 20, 30) and tuple(loaded[3, 3]) == (0, 0, 0)

    Image.new("L", (3, 3), 77).save(tmp_path / "g.jpg")
    assert load_image(tmp_path, "g.jpg").mode == "RGB"


def test_load_image_missing_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="image not found"):
        load_image(tmp_path, "nope.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        load_image(tmp_path, "broken.png")
