"""Tiny real medical images and record files for the training tests."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

QUESTIONS = [
    ("What stain is shown?", "immunohistochemistry"),
    ("Is this a retina image?", "yes"),
    ("What is visible in the image?", "cells"),
    ("Is there a microaneurysm?", "no"),
]


@lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, ...]:
    import skimage.data as data

    images = [
        data.immunohistochemistry(),
        data.retina()[300:1100, 300:1100],
        data.cell(),
        data.microaneurysms(),
    ]
    return tuple(np.asarray(Image.fromarray(a).convert("RGB").resize((96, 96))) for a in images)


def write_images(folder: Path, count: int) -> list[str]:
    """``count`` distinct 48x48 crops of real medical images (pathology, fundus, cells)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        source = _sources()[index % 4]
        offset = (index // 4) * 7 % 48
        crop = source[offset : offset + 48, offset : offset + 48]
        name = f"img_{index:03d}.png"
        Image.fromarray(crop).save(folder / name)
        names.append(name)
    return names


def pretrain_records(count: int, images: list[str], turns: int = 1) -> list[dict]:
    records = []
    for index in range(count):
        question, answer = QUESTIONS[index % 4]
        conversations, long = [], []
        for turn in range(turns):
            human = f"<image>\n{question}" if turn == 0 else f"And detail {turn}?"
            conversations += [
                {"from": "human", "value": human},
                {"from": "gpt", "value": f"{answer} {index}"},
            ]
            long += [
                {"from": "human", "value": human},
                {"from": "gpt", "value": f"The image shows {answer} in sample {index}, described at length."},
            ]
        records.append(
            {
                "id": f"r{index}",
                "image": images[index % len(images)],
                "conversations": conversations,
                "conversations_long": long,
            }
        )
    return records


def vqa_records(count: int, images: list[str]) -> list[dict]:
    records = []
    for index in range(count):
        question, answer = QUESTIONS[index % 4]
        closed = answer in ("yes", "no")
        suffix = ' (Answer with either "Yes" or "No").' if closed else ""
        records.append(
            {
                "id": f"q{index}",
                "image": images[index % len(images)],
                "answer_type": "CLOSED" if closed else "OPEN",
                "conversations": [
                    {"from": "human", "value": f"{question}{suffix}\n<image>"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    return records


def make_data(root: Path, count: int = 32, kind: str = "pretrain") -> dict[str, str]:
    """Images + record JSON under ``root``; returns the data overrides for a run config."""
    images = write_images(root / "images", 8)
    if kind == "pretrain":
        (root / "train.json").write_text(json.dumps(pretrain_records(count, images)), encoding="utf-8")
        return {"train_json": str(root / "train.json"), "image_folder": str(root / "images")}
    (root / "train.json").write_text(json.dumps(vqa_records(count, images)), encoding="utf-8")
    (root / "val.json").write_text(json.dumps(vqa_records(8, images)), encoding="utf-8")
    return {
        "train_json": str(root / "train.json"),
        "val_json": str(root / "val.json"),
        "image_folder": str(root / "images"),
    }


def data_overrides(data: dict[str, str]) -> list[str]:
    return [f"data.{key}={value}" for key, value in data.items()]


def tiny_config(stage: str, data: dict[str, str], *overrides: str):
    """The shipped tiny recipe of ``stage`` on ``data`` with ``key=value`` overrides."""
    from exgra.training import load_train_config

    configs = Path(__file__).resolve().parents[2] / "exgra" / "configs"
    return load_train_config(stage, configs / f"tiny_{stage}.yaml", [*data_overrides(data), *overrides])
