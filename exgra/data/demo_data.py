"""A small offline VQA + pre-training dataset built from real medical images shipped in pip packages.

Every answer is a fact the builder knows for certain: the modality and body region of the source
image (:mod:`exgra.data.demo_sources`), and what the builder itself did to it (horizontal flip,
rotation by a multiple of 90°, a green marker drawn in one quadrant). Random crops and
intensity changes make every image different. See docs/demo_data.md for the split policy.

Layout of the output folder::

    images/{split}_{index:04d}.png    RGB, image_size px
    train.json val.json test.json     VQA records (REFERENCE §4.4)
    candidate.json                    {"0": [distinct lower-cased OPEN answers of train]}
    pretrain.json                     pre-training records with conversations + conversations_long
    sources.json                      package, file and licence of every source image
    checksums.sha256                  sha256 of every JSON file (``sha256sum -c checksums.sha256``)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from exgra.data.demo_sources import SourceImage, check_demo_packages, demo_sources
from exgra.data.records import IMAGE_TOKEN, closed_question_suffix, write_checksums
from exgra.errors import ExgraError
from exgra.io import write_json_atomic
from exgra.outputs import staged_output_folder

__all__ = ["DemoDataset", "build_demo_dataset"]

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
QUESTIONS_PER_IMAGE = 2
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
ROTATIONS = (0, 90, 180, 270)
MARKER_COLOUR = (0, 255, 0)
# Which slices of a multi-slice group (the brain volume) go to which split; other groups appear in
# every split, with independently drawn augmentations.
_GROUP_SPLITS = {"brain_mri": {"train": (0, 2, 4, 6, 7), "val": (3,), "test": (1, 5)}}
_MODALITY_NAMES = {
    "x-ray": "X-ray",
    "ct": "CT scan",
    "mri": "MRI scan",
    "ultrasound": "ultrasound image",
    "fundus photograph": "fundus photograph",
    "histology": "histology image",
    "microscopy": "microscopy image",
}


@dataclass(frozen=True)
class DemoDataset:
    """Paths of a built demo dataset."""

    root: Path
    image_folder: Path
    train: Path
    val: Path
    test: Path
    candidates: Path
    pretrain: Path
    sources: Path
    checksums: Path
    num_images: int
    num_questions: int

    @classmethod
    def at(cls, root: Path, num_images: int = 0, num_questions: int = 0) -> DemoDataset:
        return cls(
            root=root,
            image_folder=root / "images",
            train=root / "train.json",
            val=root / "val.json",
            test=root / "test.json",
            candidates=root / "candidate.json",
            pretrain=root / "pretrain.json",
            sources=root / "sources.json",
            checksums=root / "checksums.sha256",
            num_images=num_images,
            num_questions=num_questions,
        )


@dataclass(frozen=True)
class _Facts:
    source: SourceImage
    flipped: bool
    rotation: int  # degrees counter-clockwise
    marker: str | None  # quadrant
    crop_fraction: float
    brightness: float  # mean intensity change, -1..1 of full range


def _augment(
    base: np.ndarray, rng: np.random.Generator, image_size: int, source: SourceImage
) -> tuple[Image.Image, _Facts]:
    height, width = base.shape[:2]
    crop_fraction = float(rng.uniform(0.7, 1.0))
    side = max(8, int(min(height, width) * crop_fraction))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    pixels = base[top : top + side, left : left + side].astype(np.float32) / 255.0

    flipped = bool(rng.random() < 0.5)
    rotation = int(rng.choice(ROTATIONS)) if rng.random() < 0.6 else 0
    if flipped:
        pixels = pixels[:, ::-1]
    pixels = np.rot90(pixels, k=rotation // 90)  # counter-clockwise

    gamma = float(rng.uniform(0.7, 1.4))
    contrast = float(rng.uniform(0.8, 1.2))
    offset = float(rng.uniform(-0.08, 0.08))
    mean = float(pixels.mean())
    adjusted = np.clip((pixels**gamma - mean) * contrast + mean + offset, 0.0, 1.0)
    brightness = float(adjusted.mean() - mean)

    image = Image.fromarray((adjusted * 255).round().astype(np.uint8)).resize(
        (image_size, image_size), Image.Resampling.BILINEAR
    )
    marker = QUADRANTS[int(rng.integers(4))] if rng.random() < 0.5 else None
    if marker is not None:
        _draw_marker(image, marker, rng)
    facts = _Facts(source, flipped, rotation, marker, crop_fraction, brightness)
    return image, facts


def _draw_marker(image: Image.Image, quadrant: str, rng: np.random.Generator) -> None:
    size = image.size[0]
    half = size / 2
    radius = max(2, size // 12)
    # Centre far enough from the quadrant's edges that the whole disc lies inside the quadrant.
    x = float(rng.uniform(radius + 1, half - radius - 1))
    y = float(rng.uniform(radius + 1, half - radius - 1))
    if "right" in quadrant:
        x += half
    if "lower" in quadrant:
        y += half
    ImageDraw.Draw(image).ellipse((x - radius, y - radius, x + radius, y + radius), fill=MARKER_COLOUR)


def _with_article(name: str) -> str:
    # "an" by sound: an X-ray, an MRI scan, an ultrasound image.
    return f"an {name}" if name[0] in "aeiouXM" else f"a {name}"


def _yes_no(question: str, answer: bool) -> tuple[str, str, str]:
    return question + closed_question_suffix(["yes", "no"]), "yes" if answer else "no", "CLOSED"


def _questions(facts: _Facts, rng: np.random.Generator, modalities: list[str], regions: list[str]) -> list:
    """Every question this image can answer honestly: (question, answer, answer_type)."""
    source = facts.source
    asked: list[tuple[str, str, str]] = [
        ("What imaging modality is shown in this image?", source.modality, "OPEN")
    ]
    other = [m for m in modalities if m != source.modality]
    shown = source.modality if rng.random() < 0.5 else other[int(rng.integers(len(other)))]
    asked.append(_yes_no(f"Is this {_with_article(_MODALITY_NAMES[shown])}?", shown == source.modality))
    if source.region is not None:
        asked.append(("Which body region is shown?", source.region, "OPEN"))
        other = [r for r in regions if r != source.region]
        shown = source.region if rng.random() < 0.5 else other[int(rng.integers(len(other)))]
        asked.append(_yes_no(f"Does this image show the {shown}?", shown == source.region))
    if source.oriented:
        asked.append(_yes_no("Is this image flipped horizontally?", facts.flipped))
        options = [str(r) for r in ROTATIONS]
        question = "By how many degrees has this image been rotated counter-clockwise?"
        asked.append((question + closed_question_suffix(options), str(facts.rotation), "CLOSED"))
    asked.append(_yes_no("Is there a green marker in this image?", facts.marker is not None))
    if facts.marker is not None:
        if rng.random() < 0.5:
            asked.append(("Where is the green marker?", facts.marker, "OPEN"))
        else:
            question = "In which quadrant is the green marker?" + closed_question_suffix(list(QUADRANTS))
            asked.append((question, facts.marker, "CLOSED"))
    return asked


def _describe(facts: _Facts) -> tuple[str, str]:
    """A short caption and a longer description of the same facts (templates, no LLM)."""
    source = facts.source
    name = _MODALITY_NAMES[source.modality]
    short = f"{name[0].upper()}{name[1:]}"
    if source.region:
        short += f" of the {source.region}"
    changes = []
    if facts.flipped:
        changes.append("flipped horizontally")
    if facts.rotation:
        changes.append(f"rotated {facts.rotation} degrees")
    short += "".join(f", {c}" for c in changes)
    short += f", with a green marker in the {facts.marker}." if facts.marker else ", without a marker."

    sentences = [f"This is {_with_article(name)}" + (f" of the {source.region}." if source.region else ".")]
    if source.plane:
        sentences.append(f"It shows an {source.plane} slice.")
    sentences.append(
        "The image is mirrored from left to right."
        if facts.flipped
        else "The image keeps its original left-right orientation."
    )
    sentences.append(
        f"It has been rotated by {facts.rotation} degrees counter-clockwise."
        if facts.rotation
        else "It is not rotated."
    )
    sentences.append(
        f"A round green marker has been drawn in the {facts.marker} quadrant."
        if facts.marker
        else "No marker has been drawn on it."
    )
    if facts.brightness > 0.01:
        tone = "and is brighter than the source"
    elif facts.brightness < -0.01:
        tone = "and is darker than the source"
    else:
        tone = "about as bright as the source"
    sentences.append(
        f"The view is a square crop of about {round(facts.crop_fraction * 100)} percent of the source "
        f"image's shorter side {tone}."
    )
    return short, " ".join(sentences)


def _marker_turns(facts: _Facts) -> tuple[tuple[str, str], tuple[str, str]]:
    if facts.marker:
        return (
            f"Yes, in the {facts.marker}.",
            f"Yes, a round green marker is drawn in the {facts.marker} quadrant.",
        )
    return ("No.", "No, there is no marker anywhere in the image.")


def _split_sources(sources: list[SourceImage]) -> dict[str, list[list[SourceImage]]]:
    """Per split, the list of source 'slots' (a group's images allowed in that split)."""
    by_group: dict[str, list[SourceImage]] = {}
    for source in sources:
        by_group.setdefault(source.group, []).append(source)
    slots: dict[str, list[list[SourceImage]]] = {split: [] for split in SPLIT_FRACTIONS}
    for group, members in by_group.items():
        for split in SPLIT_FRACTIONS:
            if group in _GROUP_SPLITS:
                chosen = [members[i] for i in _GROUP_SPLITS[group][split] if i < len(members)]
            else:
                chosen = members
            if chosen:
                slots[split].append(chosen)
    return slots


def _question_counts(num_samples: int) -> dict[str, int]:
    val = max(1, round(num_samples * SPLIT_FRACTIONS["val"]))
    test = max(1, round(num_samples * SPLIT_FRACTIONS["test"]))
    return {"train": num_samples - val - test, "val": val, "test": test}


def _build(root: Path, seed: int, image_size: int, num_samples: int) -> tuple[int, int]:
    sources = demo_sources()
    bases = {source.name: source.load() for source in sources}
    modalities = sorted({s.modality for s in sources})
    regions = sorted({s.region for s in sources if s.region})
    question_counts = _question_counts(num_samples)
    (root / "images").mkdir(parents=True)

    split_records: dict[str, list[dict[str, Any]]] = {}
    pretrain: list[dict[str, Any]] = []
    for split_index, (split, slots) in enumerate(_split_sources(sources).items()):
        # One generator per split, so each split's augmentations are independent of the others' sizes.
        rng = np.random.default_rng([seed, split_index])
        records: list[dict[str, Any]] = []
        for index in range(math.ceil(question_counts[split] / QUESTIONS_PER_IMAGE)):
            # Round-robin over sources keeps every modality present in every split.
            slot = slots[index % len(slots)]
            source = slot[int(rng.integers(len(slot)))]
            image, facts = _augment(bases[source.name], rng, image_size, source)
            relative = f"images/{split}_{index:04d}.png"
            image.save(root / relative, format="PNG")
            image_name = relative.removeprefix("images/")

            candidates = _questions(facts, rng, modalities, regions)
            take = min(QUESTIONS_PER_IMAGE, len(candidates), question_counts[split] - len(records))
            for q_index in rng.choice(len(candidates), size=take, replace=False):
                question, answer, answer_type = candidates[int(q_index)]
                records.append(
                    {
                        "id": f"demo-{split}-{len(records):05d}",
                        "image": image_name,
                        "answer_type": answer_type,
                        "conversations": [
                            {"from": "human", "value": f"{question}\n{IMAGE_TOKEN}"},
                            {"from": "gpt", "value": answer},
                        ],
                    }
                )
            if split == "train":
                short, long = _describe(facts)
                prompt = f"{IMAGE_TOKEN}\nDescribe this image briefly."
                conversations = [{"from": "human", "value": prompt}, {"from": "gpt", "value": short}]
                conversations_long = [{"from": "human", "value": prompt}, {"from": "gpt", "value": long}]
                if index % 2 == 1:  # every other record is two-turn, like instruction data
                    marker_short, marker_long = _marker_turns(facts)
                    follow_up = {"from": "human", "value": "Is there a marker in the image?"}
                    conversations += [follow_up, {"from": "gpt", "value": marker_short}]
                    conversations_long += [follow_up, {"from": "gpt", "value": marker_long}]
                pretrain.append(
                    {
                        "id": f"demo-pretrain-{index:05d}",
                        "image": image_name,
                        "conversations": conversations,
                        "conversations_long": conversations_long,
                    }
                )
        split_records[split] = records

    for split, records in split_records.items():
        write_json_atomic(root / f"{split}.json", records)
    open_answers = sorted(
        {r["conversations"][1]["value"].lower() for r in split_records["train"] if r["answer_type"] == "OPEN"}
    )
    write_json_atomic(root / "candidate.json", {"0": open_answers})
    write_json_atomic(root / "pretrain.json", pretrain)
    seen = {}
    for source in sources:
        seen.setdefault((source.package, source.file), source)
    write_json_atomic(
        root / "sources.json",
        [
            {"package": package, "file": file, "licence": source.licence, "content": source.group}
            for (package, file), source in seen.items()
        ],
    )
    names = ["train.json", "val.json", "test.json", "candidate.json", "pretrain.json", "sources.json"]
    write_checksums(root, names)
    num_images = len(list((root / "images").iterdir()))
    return num_images, sum(len(r) for r in split_records.values())


def build_demo_dataset(
    output_dir: str | Path,
    seed: int = 0,
    image_size: int = 64,
    num_samples: int = 400,
    overwrite: bool = False,
) -> DemoDataset:
    """Build the demo dataset in ``output_dir`` (deterministic for a seed, offline, a few seconds).

    ``num_samples`` is the number of VQA questions over the three splits (70/15/15 %, two questions
    per image); ``pretrain.json`` holds one record per training image. An existing non-empty
    ``output_dir`` is only replaced with ``overwrite=True``, only once the new one is complete, and only
    when it holds an earlier demo dataset and nothing else (:mod:`exgra.outputs`).
    """
    check_demo_packages()
    if image_size < 16:
        raise ExgraError(f"image_size must be at least 16 px, got {image_size}")
    if num_samples < 10:
        raise ExgraError(f"num_samples must be at least 10, got {num_samples}")
    output_dir = Path(output_dir)
    with staged_output_folder(output_dir, "prepare", overwrite=overwrite) as building:
        num_images, num_questions = _build(building, seed, image_size, num_samples)
    return DemoDataset.at(output_dir, num_images, num_questions)
