"""Deterministic, non-interactive conversion of the public Med-VQA releases into exgra's VQA JSON.

Inputs are the releases as published on the Hugging Face hub (download them with
``huggingface-cli download --repo-type dataset <repo> --local-dir DIR``):

* ``vqa-rad``  — flaviagiammarino/vqa-rad: parquet (``image{bytes,path}``, ``question``, ``answer``),
  splits train/test;
* ``slake``    — BoKelvin/SLAKE: ``train.json``, ``validation.json``, ``test.json`` (``img_name``,
  ``question``, ``answer``, ``answer_type``, ``q_lang``, ``qid``) and an ``imgs/`` folder;
* ``pathvqa``  — flaviagiammarino/path-vqa: parquet (``image``, ``question``, ``answer``),
  splits train/validation/test.

Output (REFERENCE §4.4): ``train_w_options_new.json``, ``val_w_options_new.json``,
``test_w_options_new.json``, ``candidate.json``, ``images/``, ``prepare_info.json`` and
``checksums.sha256``. The policies (closed/open, option suffixes, the seeded VQA-RAD validation
split, ids) are documented in docs/prepare.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError
from pydantic import Field
from rich.progress import track

from exgra.config import Section
from exgra.data.images import safe_image_path
from exgra.data.records import (
    IMAGE_TOKEN,
    VQARecord,
    closed_question_suffix,
    write_checksums,
)
from exgra.errors import DataError, ExgraError
from exgra.io import write_json_atomic
from exgra.outputs import describe_path, staged_output_folder

__all__ = ["DATASETS", "PrepareConfig", "PreparedDataset", "prepare_dataset", "run_prepare"]

DATASETS: tuple[str, ...] = ("vqa-rad", "slake", "pathvqa", "demo")
SPLIT_FILES = {
    "train": "train_w_options_new.json",
    "val": "val_w_options_new.json",
    "test": "test_w_options_new.json",
}
VQA_RAD_VAL_SIZE = 451  # as in the reference's split_data_RAD.py
MAX_OPTIONS = 6  # more distinct answers than this and a closed question gets no option list


@dataclass(frozen=True)
class PreparedDataset:
    """Paths and sizes of a prepared dataset folder."""

    root: Path
    image_folder: Path
    splits: dict[str, Path]
    candidates: Path
    checksums: Path
    counts: dict[str, int]


@dataclass
class _Item:
    """One question before formatting: split, stable id, image file name, question, answer, type."""

    split: str
    id: str
    image: str
    question: str
    answer: str
    answer_type: str


def _require_pyarrow() -> Any:
    try:
        import pyarrow.parquet as parquet
    except ImportError as exc:
        raise ExgraError('reading parquet releases needs pyarrow: pip install "exgra[prepare]"') from exc
    return parquet


def _find_parquet(source: Path, split: str) -> list[Path]:
    files = sorted(p for p in source.rglob(f"{split}-*.parquet") if p.is_file())
    return files or sorted(p for p in source.rglob(f"{split}.parquet") if p.is_file())


def _read_parquet_rows(files: Iterable[Path]) -> list[dict[str, Any]]:
    parquet = _require_pyarrow()
    rows: list[dict[str, Any]] = []
    for path in files:
        try:
            rows.extend(parquet.read_table(path).to_pylist())
        except Exception as exc:  # pyarrow raises many types for a damaged file
            raise DataError(f"cannot read parquet file {path}: {exc}") from exc
    return rows


def _save_image_bytes(data: bytes, images: Path, written: set[str]) -> str:
    """Store an image under its content hash (VQA-RAD repeats one image for many questions)."""
    digest = hashlib.sha256(data).hexdigest()[:20]
    if data[:3] == b"\xff\xd8\xff":
        name, payload = f"{digest}.jpg", data
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        name, payload = f"{digest}.png", data
    else:
        try:
            with Image.open(io.BytesIO(data)) as image:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"an image in the source cannot be decoded: {exc}") from exc
        name, payload = f"{digest}.png", buffer.getvalue()
    if name not in written:
        (images / name).write_bytes(payload)
        written.add(name)
    return name


def _image_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
        return value["bytes"]
    if isinstance(value, bytes):
        return value
    raise DataError(f"{where}: the 'image' column holds no image bytes (found {type(value).__name__})")


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: missing or empty '{key}'")
    return str(value).strip()


def _is_yes_no(answer: str) -> bool:
    return answer.strip().lower() in {"yes", "no"}


def _parquet_items(name: str, source: Path, splits: dict[str, str], images: Path) -> list[_Item]:
    items: list[_Item] = []
    written: set[str] = set()
    for split, source_split in splits.items():
        files = _find_parquet(source, source_split)
        if not files:
            raise DataError(f"no '{source_split}-*.parquet' file under {source}; is this the {name} release?")
        rows = _read_parquet_rows(files)
        for index, row in enumerate(track(rows, description=f"{name} {source_split}", transient=True)):
            where = f"{name} {source_split} row {index}"
            answer = _text(row, "answer", where)
            items.append(
                _Item(
                    split=split,
                    id=f"{name}-{source_split}-{index:06d}",
                    image=_save_image_bytes(_image_bytes(row.get("image"), where), images, written),
                    question=_text(row, "question", where),
                    answer=answer,
                    answer_type="CLOSED" if _is_yes_no(answer) else "OPEN",
                )
            )
    return items


def _slake_items(source: Path, images: Path) -> list[_Item]:
    items: list[_Item] = []
    copied: set[str] = set()
    image_root = source / "imgs"
    if not image_root.is_dir():
        raise DataError(f"no imgs/ folder in {source}; is this the SLAKE release (BoKelvin/SLAKE)?")
    for split, file in (("train", "train.json"), ("val", "validation.json"), ("test", "test.json")):
        path = source / file
        if not path.is_file():
            raise DataError(f"{path} not found; the SLAKE release has train.json, validation.json, test.json")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON at line {exc.lineno}, column {exc.colno}") from exc
        if not isinstance(rows, list):
            raise DataError(f"{path} must contain a JSON list")
        for index, row in enumerate(rows):
            where = f"{file} item {index}"
            if not isinstance(row, dict):
                raise DataError(f"{where} is not a JSON object")
            if row.get("q_lang", "en") != "en":
                continue
            image = _text(row, "img_name", where)
            if image not in copied:
                target = safe_image_path(images, image)
                origin = safe_image_path(image_root, image)
                if not origin.is_file():
                    raise DataError(f"{where}: image {origin} not found")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, target)
                copied.add(image)
            answer_type = _text(row, "answer_type", where).upper()
            if answer_type not in ("OPEN", "CLOSED"):
                raise DataError(f"{where}: answer_type must be OPEN or CLOSED, got '{answer_type}'")
            items.append(
                _Item(
                    split=split,
                    id=str(row.get("qid", f"slake-{split}-{index:06d}")),
                    image=image,
                    question=_text(row, "question", where),
                    answer=_text(row, "answer", where),
                    answer_type=answer_type,
                )
            )
    return items


def _carve_validation(items: list[_Item], val_size: int, seed: int) -> None:
    train = [item for item in items if item.split == "train"]
    if val_size >= len(train):
        raise DataError(f"--val-size {val_size} must be smaller than the {len(train)} training questions")
    for item in random.Random(seed).sample(train, val_size):
        item.split = "val"


def _option_sets(items: list[_Item]) -> dict[str, list[str]]:
    """Per question text, the sorted distinct answers across all splits (the closed-option policy)."""
    answers: dict[str, set[str]] = {}
    for item in items:
        if item.answer_type == "CLOSED":
            answers.setdefault(item.question.strip().lower(), set()).add(item.answer.strip().lower())
    return {question: sorted(values) for question, values in answers.items()}


def _format(item: _Item, option_sets: dict[str, list[str]]) -> dict[str, Any]:
    question = item.question.strip()
    if item.answer_type == "CLOSED":
        if _is_yes_no(item.answer):
            question += closed_question_suffix(["yes", "no"])
        else:
            options = option_sets.get(question.lower(), [])
            if 2 <= len(options) <= MAX_OPTIONS:
                question += closed_question_suffix(options)
    record = {
        "id": item.id,
        "image": item.image,
        "answer_type": item.answer_type,
        "conversations": [
            {"from": "human", "value": f"{question}\n{IMAGE_TOKEN}"},
            {"from": "gpt", "value": item.answer},
        ],
    }
    VQARecord.model_validate(record)  # the converter must never write a record the loaders reject
    return record


def _convert(name: str, source: Path, root: Path, seed: int, val_size: int | None) -> dict[str, int]:
    images = root / "images"
    images.mkdir(parents=True)
    if name == "vqa-rad":
        items = _parquet_items(name, source, {"train": "train", "test": "test"}, images)
        _carve_validation(items, VQA_RAD_VAL_SIZE if val_size is None else val_size, seed)
    elif name == "pathvqa":
        items = _parquet_items(name, source, {"train": "train", "val": "validation", "test": "test"}, images)
    else:
        items = _slake_items(source, images)
    option_sets = _option_sets(items)
    counts = {}
    for split, file in SPLIT_FILES.items():
        records = [_format(item, option_sets) for item in items if item.split == split]
        write_json_atomic(root / file, records)
        counts[split] = len(records)
    open_answers = sorted(
        {i.answer.strip().lower() for i in items if i.split == "train" and i.answer_type == "OPEN"}
    )
    write_json_atomic(root / "candidate.json", {"0": open_answers})
    write_json_atomic(
        root / "prepare_info.json",
        {"dataset": name, "seed": seed, "val_size": val_size, "counts": counts, "format": "exgra-vqa-1"},
    )
    write_checksums(root, [*SPLIT_FILES.values(), "candidate.json"])
    return counts


def prepare_dataset(
    dataset: str,
    output: str | Path,
    source: str | Path | None = None,
    seed: int = 0,
    val_size: int | None = None,
    overwrite: bool = False,
    num_samples: int = 400,
    image_size: int = 64,
) -> PreparedDataset:
    """Convert a published Med-VQA release (or build the demo set) into exgra's VQA JSON folder.

    ``val_size`` (VQA-RAD only; default 451) is the number of training questions moved to the
    seeded validation split. ``num_samples`` / ``image_size`` apply to ``demo`` only. The output is
    built in a temporary folder and renamed into place; an existing non-empty ``output`` is only
    replaced with ``overwrite=True``, and only when it is an earlier ``exgra prepare`` output with
    nothing else in it (see :mod:`exgra.outputs`).
    """
    name = {"path-vqa": "pathvqa"}.get(dataset, dataset)  # the hub's spelling, accepted
    if name not in DATASETS:
        raise ExgraError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    output = Path(output)
    if name == "demo":
        from exgra.data.demo_data import build_demo_dataset

        demo = build_demo_dataset(output, seed, image_size, num_samples, overwrite)
        return PreparedDataset(
            root=demo.root,
            image_folder=demo.image_folder,
            splits={"train": demo.train, "val": demo.val, "test": demo.test},
            candidates=demo.candidates,
            checksums=demo.checksums,
            counts={s: len(json.loads(p.read_text())) for s, p in (("train", demo.train), ("val", demo.val),
                                                                    ("test", demo.test))},
        )  # fmt: skip
    if val_size is not None and name != "vqa-rad":
        raise ExgraError(f"--val-size applies to vqa-rad only; {name} ships its own validation split")
    if source is None:
        raise ExgraError(f"preparing {name} needs --source, the folder of the downloaded release")
    source = Path(source)
    if not source.is_dir():
        if source.exists():
            raise DataError(f"--source {source} is {describe_path(source)}, not a folder")
        raise DataError(f"source folder not found: {source}")
    if output.resolve().is_relative_to(source.resolve()):
        raise ExgraError(f"the output folder {output} must not be inside the source folder {source}")
    # Only an earlier `exgra prepare` output, and nothing else, is ever replaced (exgra.outputs).
    with staged_output_folder(
        output, "prepare", overwrite=overwrite, inputs={"--source": source}
    ) as building:
        counts = _convert(name, source, building, seed, val_size)
    return PreparedDataset(
        root=output,
        image_folder=output / "images",
        splits={split: output / file for split, file in SPLIT_FILES.items()},
        candidates=output / "candidate.json",
        checksums=output / "checksums.sha256",
        counts=counts,
    )


class PrepareConfig(Section):
    """What ``exgra prepare`` builds (validated); ``source`` is the downloaded release (not for ``demo``)."""

    dataset: Literal["vqa-rad", "slake", "pathvqa", "demo"]
    output: Path
    source: Path | None = None
    seed: int = 0
    val_size: int | None = Field(None, ge=1, description="vqa-rad only (default 451)")
    num_samples: int = Field(400, ge=10, description="demo only")
    image_size: int = Field(64, ge=16, description="demo only")
    overwrite: bool = False


def run_prepare(config: PrepareConfig) -> PreparedDataset:
    """The ``exgra prepare`` entry point (see :func:`prepare_dataset`)."""
    return prepare_dataset(**config.model_dump())
