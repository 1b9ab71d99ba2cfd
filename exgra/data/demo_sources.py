"""The real medical images behind the demo dataset: which files, what they show, their licences.

Every image ships inside a pip package (the ``demo`` extra), so the demo dataset builds offline:
pydicom-data (top-level package ``data_store``), pydicom's own test files, scikit-image's bundled
sample images and nibabel's test volume. The facts recorded here (modality, body region, slice
plane) were checked by looking at each image and its DICOM header; anything uncertain is ``None``
and no question is asked about it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from exgra.errors import ExgraError

__all__ = ["DEMO_PACKAGES", "SourceImage", "check_demo_packages", "demo_sources"]

# import name -> pip distribution name
DEMO_PACKAGES = {
    "pydicom": "pydicom",
    "data_store": "pydicom-data",
    "skimage": "scikit-image",
    "nibabel": "nibabel",
}

# Images are reduced to this longest side once, at load time: the demo images are 64-256 px.
_MAX_SIDE = 384


@dataclass(frozen=True)
class SourceImage:
    """One source image (or one slice of a volume) with the facts the demo questions rely on."""

    name: str  # unique, also the split group for volume slices (e.g. "brain_mri_axial_10")
    group: str  # images of one group come from one scan; used to split by source
    package: str
    file: str
    licence: str
    modality: str  # lower-case answer vocabulary: "x-ray", "ct", "mri", ...
    region: str | None  # body region, None where it cannot be stated with confidence
    plane: str | None  # "axial" / "coronal" / "sagittal" for volume slices
    oriented: bool  # True if a flip or rotation is visible (anatomy has a canonical orientation)
    load: Callable[[], np.ndarray]  # -> H×W×3 uint8


def check_demo_packages() -> None:
    """Raise one clear error naming the extra if a package of the demo dataset is missing."""
    missing = [dist for module, dist in DEMO_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ExgraError(
            f'the demo dataset needs {", ".join(missing)}, which is not installed: pip install "exgra[demo]"'
        )


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ExgraError(f'package {module} is missing: pip install "exgra[demo]"')
    return Path(next(iter(spec.submodule_search_locations)))


def _finish(array: np.ndarray, invert: bool = False) -> np.ndarray:
    """Window to the 0.5-99.5 percentile range, make 8-bit RGB, shrink to at most _MAX_SIDE px."""
    data = np.asarray(array)
    if data.dtype != np.uint8:
        data = data.astype(np.float32)
        low, high = np.percentile(data, [0.5, 99.5])
        data = np.clip((data - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 255.0
        data = data.round().astype(np.uint8)
    if invert:
        data = 255 - data
    image = Image.fromarray(data).convert("RGB")
    image.thumbnail((_MAX_SIDE, _MAX_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(image)


def _dicom_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import pydicom
        from pydicom.pixels import apply_color_lut

        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
        interpretation = str(dataset.get("PhotometricInterpretation", ""))
        if interpretation == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, dataset)
        elif pixels.ndim == 3 and pixels.shape[-1] != 3:  # multi-frame: middle frame
            pixels = pixels[pixels.shape[0] // 2]
        return _finish(pixels, invert=interpretation == "MONOCHROME1")

    return load


def _picture_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        with Image.open(path) as image:
            return _finish(np.asarray(image.convert("RGB")))

    return load


_VOLUME_CACHE: dict[Path, np.ndarray] = {}


def _volume_slice_loader(path: Path, plane: str, fraction: float) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import nibabel

        if path not in _VOLUME_CACHE:
            # RAS+ orientation: axis 0 left→right, 1 posterior→anterior, 2 inferior→superior.
            volume = nibabel.as_closest_canonical(nibabel.load(path))
            data = np.asarray(volume.dataobj, dtype=np.float32)
            _VOLUME_CACHE[path] = data[..., 0] if data.ndim == 4 else data
        volume = _VOLUME_CACHE[path]
        axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
        index = min(int(round(fraction * (volume.shape[axis] - 1))), volume.shape[axis] - 1)
        plane_pixels = np.take(volume, index, axis=axis)
        # rot90 puts anterior at the top of an axial slice (the usual display).
        return _finish(np.rot90(plane_pixels))

    return load


def demo_sources() -> list[SourceImage]:
    """The catalogue of source images; call :func:`check_demo_packages` first."""
    store = _package_dir("data_store") / "data"
    pydicom_files = _package_dir("pydicom") / "data" / "test_files"
    skimage_data = _package_dir("skimage") / "data"
    brain = _package_dir("nibabel") / "tests" / "data" / "example4d.nii.gz"

    mit_store = "MIT (pydicom-data)"
    mit_pydicom = "MIT (pydicom); CT_small is downsized from NEMA WG04 CT1_UNC"
    sources = [
        SourceImage("chest_xray", "chest_xray", "pydicom-data", "data_store/data/RG1_UNCR.dcm", mit_store,
                    "x-ray", "chest", None, True, _dicom_loader(store / "RG1_UNCR.dcm")),
        SourceImage("leg_xray", "leg_xray", "pydicom-data", "data_store/data/RG3_UNCR.dcm", mit_store,
                    "x-ray", "leg", None, True, _dicom_loader(store / "RG3_UNCR.dcm")),
        SourceImage("shoulder_mri", "shoulder_mri", "pydicom-data", "data_store/data/MR2_UNCR.dcm", mit_store,
                    "mri", "shoulder", None, True, _dicom_loader(store / "MR2_UNCR.dcm")),
        SourceImage("head_ct", "head_ct", "pydicom-data", "data_store/data/693_UNCR.dcm", mit_store,
                    "ct", "head", "axial", True, _dicom_loader(store / "693_UNCR.dcm")),
        SourceImage("abdomen_mri", "abdomen_mri", "pydicom-data",
                    "data_store/data/MR-SIEMENS-DICOM-WithOverlays.dcm", mit_store, "mri", "abdomen", "axial",
                    True, _dicom_loader(store / "MR-SIEMENS-DICOM-WithOverlays.dcm")),
        SourceImage("lymph_node_ultrasound", "lymph_node_ultrasound", "pydicom-data",
                    "data_store/data/US1_UNCR.dcm", mit_store, "ultrasound", None, None, True,
                    _dicom_loader(store / "US1_UNCR.dcm")),
        SourceImage("obstetric_ultrasound", "obstetric_ultrasound", "pydicom-data",
                    "data_store/data/OBXXXX1A.dcm", mit_store, "ultrasound", None, None, True,
                    _dicom_loader(store / "OBXXXX1A.dcm")),
        SourceImage("ct_small", "ct_small", "pydicom", "pydicom/data/test_files/CT_small.dcm", mit_pydicom,
                    "ct", None, "axial", True, _dicom_loader(pydicom_files / "CT_small.dcm")),
        SourceImage("mr_small", "mr_small", "pydicom", "pydicom/data/test_files/MR_small.dcm",
                    "MIT (pydicom)", "mri", None, None, False, _dicom_loader(pydicom_files / "MR_small.dcm")),
        SourceImage("retina", "retina", "scikit-image", "skimage/data/retina.jpg",
                    "CC0 1.0 (Mikael Häggström, Wikimedia Commons)", "fundus photograph", "eye", None, True,
                    _picture_loader(skimage_data / "retina.jpg")),
        SourceImage("microaneurysms", "microaneurysms", "scikit-image", "skimage/data/microaneurysms.png",
                    "CC0 (Andreas Maier, HRF image database)", "fundus photograph", "eye", None, False,
                    _picture_loader(skimage_data / "microaneurysms.png")),
        SourceImage("colon_ihc", "colon_ihc", "scikit-image", "skimage/data/ihc.png",
                    "no known copyright restrictions (CMMI, via scikit-image)", "histology", "colon", None,
                    False, _picture_loader(skimage_data / "ihc.png")),
        SourceImage("cell", "cell", "scikit-image", "skimage/data/cell.png",
                    "CC0 (Paul Müller et al., via scikit-image)", "microscopy", None, None, False,
                    _picture_loader(skimage_data / "cell.png")),
    ]  # fmt: skip
    # The brain volume gives distinct axial slices, so its slices can be split between train/val/test.
    # (Its 24 slices of 2.2 mm are too few for useful coronal or sagittal views.)
    for fraction in (0.25, 0.35, 0.45, 0.5, 0.55, 0.65, 0.75, 0.85):
        sources.append(
            SourceImage(
                name=f"brain_mri_axial_{int(fraction * 100)}",
                group="brain_mri",
                package="nibabel",
                file="nibabel/tests/data/example4d.nii.gz",
                licence="MIT (nibabel)",
                modality="mri",
                region="head",
                plane="axial",
                oriented=True,
                load=_volume_slice_loader(brain, "axial", fraction),
            )
        )
    return sources
