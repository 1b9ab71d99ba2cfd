"""The offline demo dataset: real images, checkable answers, deterministic, loadable."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exgra.data import demo_data, demo_sources
from exgra.data.demo_data import build_demo_dataset
from exgra.data.records import (
    alignment_text,
    load_image,
    load_pretrain_records,
    load_vqa_records,
    sha256_file,
    vqa_answer,
    vqa_question,
)
from exgra.errors import ExgraError


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", seed=0, num_samples=120)


def test_layout_and_records_load(demo):
    splits = {name: load_vqa_records(getattr(demo, name)) for name in ("train", "val", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 84, "val": 18, "test": 18}
    assert demo.num_questions == 120
    assert demo.num_images == len(list(demo.image_folder.iterdir())) == 60
    for records in splits.values():
        assert {r.answer_type for r in records} == {"OPEN", "CLOSED"}
        for record in records:
            image = load_image(demo.image_folder, record.image)
            assert image.size == (64, 64) and image.mode == "RGB"
            assert record.conversations[0].value.endswith("\n<image>")
    ids = [r.id for records in splits.values() for r in records]
    assert len(ids) == len(set(ids))


def test_closed_questions_carry_the_reference_suffixes(demo):
    for record in load_vqa_records(demo.train):
        question, answer = vqa_question(record), vqa_answer(record)
        if record.answer_type == "CLOSED" and answer in ("yes", "no"):
            assert question.endswith(' (Answer with either "Yes" or "No").')
        elif record.answer_type == "CLOSED":
            assert f'"{answer}"' in question  # the right answer is one of the listed options


def test_candidates_are_the_open_answers_of_train(demo):
    candidates = json.loads(demo.candidates.read_text())
    expected = {vqa_answer(r).lower() for r in load_vqa_records(demo.train) if r.answer_type == "OPEN"}
    assert sorted(expected) == candidates["0"]


def green_quadrants(image: Image.Image) -> set[str]:
    pixels = np.asarray(image).astype(int)
    green = (pixels[..., 1] > 200) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    ys, xs = np.nonzero(green)
    half = pixels.shape[0] / 2
    return {
        ("upper " if y < half else "lower ") + ("left" if x < half else "right")
        for y, x in zip(ys, xs, strict=True)
    }


def test_marker_answers_match_the_pixels(demo):
    checked = 0
    for path in (demo.train, demo.val, demo.test):
        for record in load_vqa_records(path):
            question, answer = vqa_question(record), vqa_answer(record)
            quadrants = green_quadrants(load_image(demo.image_folder, record.image))
            if question.startswith("Is there a green marker"):
                assert (answer == "yes") == bool(quadrants), record.id
                checked += 1
            elif "green marker" in question:
                assert quadrants == {answer}, record.id
                checked += 1
    assert checked >= 5


def test_pretrain_records_describe_the_same_facts(demo):
    records = load_pretrain_records(demo.pretrain)
    assert len(records) == len({r.image for r in load_vqa_records(demo.train)})
    assert any(len(r.conversations) == 4 for r in records) and any(len(r.conversations) == 2 for r in records)
    for record in records:
        short, long = alignment_text(record.conversations), alignment_text(record.conversations_long)
        assert len(long) > len(short)
        quadrants = green_quadrants(load_image(demo.image_folder, record.image))
        if quadrants:
            (quadrant,) = quadrants
            assert f"marker in the {quadrant}" in short and f"{quadrant} quadrant" in long
        else:
            assert "without a marker" in short and "No marker" in long


def test_sources_licences_and_checksums(demo):
    sources = json.loads(demo.sources.read_text())
    assert {s["package"] for s in sources} == {"pydicom-data", "pydicom", "scikit-image", "nibabel"}
    assert all(s["licence"] for s in sources)
    for line in demo.checksums.read_text().splitlines():
        digest, name = line.split()
        assert sha256_file(demo.root / name) == digest


def test_brain_slices_are_split_by_slice():
    slots = demo_data._split_sources(demo_sources.demo_sources())
    brain = {
        split: {s.name for slot in slots[split] for s in slot if s.group == "brain_mri"} for split in slots
    }
    assert brain["train"] and brain["val"] and brain["test"]
    assert not brain["train"] & brain["test"] and not brain["train"] & brain["val"]


def test_deterministic_for_a_seed_and_different_across_seeds(demo, tmp_path):
    again = build_demo_dataset(tmp_path / "again", seed=0, num_samples=120)
    assert digest_tree(again.root) == digest_tree(demo.root)
    other = build_demo_dataset(tmp_path / "other", seed=1, num_samples=120)
    assert other.train.read_bytes() != demo.train.read_bytes()


def test_refuses_to_overwrite_and_replaces_when_asked(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    for overwrite in (False, True):  # a folder exgra did not write is never replaced (issue #12)
        with pytest.raises(ExgraError, match="mine.txt"):
            build_demo_dataset(target, num_samples=10, overwrite=overwrite)
        assert [p.name for p in target.iterdir()] == ["mine.txt"]
        assert (target / "mine.txt").read_text() == "keep"
    (target / "mine.txt").unlink()
    build_demo_dataset(target, num_samples=10)
    with pytest.raises(ExgraError, match="--overwrite"):
        build_demo_dataset(target, num_samples=10)
    build_demo_dataset(target, num_samples=10, image_size=32, overwrite=True)
    assert Image.open(next((target / "images").iterdir())).size == (32, 32)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_missing_demo_package_names_the_extra(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nibabel" else real(name, *a)
    )
    with pytest.raises(ExgraError, match=r'nibabel.*pip install "exgra\[demo\]"'):
        build_demo_dataset(tmp_path / "x")
    assert not (tmp_path / "x").exists()
