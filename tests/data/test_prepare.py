"""``exgra prepare``: deterministic conversion of the published VQA-RAD, SLAKE and PathVQA layouts."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from exgra.data.prepare import prepare_dataset
from exgra.data.records import (
    YES_NO_SUFFIX,
    load_image,
    load_vqa_records,
    sha256_file,
    vqa_answer,
    vqa_question,
)
from exgra.errors import DataError, ExgraError

pa = pytest.importorskip("pyarrow")
parquet = pytest.importorskip("pyarrow.parquet")


def png_bytes(shade: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 255 - shade, 40)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    parquet.write_table(pa.Table.from_pylist(rows), path)


def qa_rows(count: int, split: str, fmt: str = "PNG") -> list[dict]:
    rows = []
    for i in range(count):
        # Three questions per image, like VQA-RAD.
        image = {"bytes": png_bytes(i // 3 * 10 % 250, fmt), "path": f"{split}_{i // 3}.jpg"}
        answer = ["yes", "no", f"organ {i % 4}"][i % 3]
        rows.append({"image": image, "question": f"question {i} of {split}?", "answer": answer})
    return rows


@pytest.fixture
def vqa_rad_source(tmp_path) -> Path:
    source = tmp_path / "vqa-rad"
    write_parquet(source / "data" / "train-00000-of-00001-aaaa.parquet", qa_rows(30, "train"))
    write_parquet(source / "data" / "test-00000-of-00001-bbbb.parquet", qa_rows(9, "test", "JPEG"))
    return source


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_vqa_rad_conversion(vqa_rad_source, tmp_path):
    result = prepare_dataset("vqa-rad", tmp_path / "out", source=vqa_rad_source, val_size=6)
    assert result.counts == {"train": 24, "val": 6, "test": 9}
    splits = {s: load_vqa_records(p) for s, p in result.splits.items()}
    assert result.splits["train"].name == "train_w_options_new.json"
    train_ids = {r.id for r in splits["train"]}
    assert not train_ids & {r.id for r in splits["val"]}
    assert all(r.id.startswith("vqa-rad-train-") for r in splits["val"])  # carved from train
    for records in splits.values():
        for record in records:
            answer = vqa_answer(record)
            assert record.answer_type == ("CLOSED" if answer in ("yes", "no") else "OPEN")
            assert vqa_question(record).endswith(YES_NO_SUFFIX) == (record.answer_type == "CLOSED")
            assert load_image(result.image_folder, record.image).size == (8, 8)
    # One file per distinct image (content-addressed), JPEG kept as JPEG.
    assert len(list(result.image_folder.iterdir())) == 10 + 3
    assert {p.suffix for p in result.image_folder.iterdir()} == {".png", ".jpg"}
    candidates = json.loads(result.candidates.read_text())["0"]
    assert candidates == sorted({vqa_answer(r).lower() for r in splits["train"] if r.answer_type == "OPEN"})
    lines = result.checksums.read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        digest, name = line.split()
        assert sha256_file(result.root / name) == digest


def test_vqa_rad_is_deterministic_and_seeded(vqa_rad_source, tmp_path):
    first = prepare_dataset("vqa-rad", tmp_path / "a", source=vqa_rad_source, val_size=6, seed=3)
    second = prepare_dataset("vqa-rad", tmp_path / "b", source=vqa_rad_source, val_size=6, seed=3)
    assert digest_tree(first.root) == digest_tree(second.root)
    other = prepare_dataset("vqa-rad", tmp_path / "c", source=vqa_rad_source, val_size=6, seed=4)
    assert other.splits["val"].read_bytes() != first.splits["val"].read_bytes()


def test_vqa_rad_validation_size_must_fit(vqa_rad_source, tmp_path):
    with pytest.raises(DataError, match="--val-size 451 must be smaller than the 30"):
        prepare_dataset("vqa-rad", tmp_path / "out", source=vqa_rad_source)
    assert not (tmp_path / "out").exists()


def test_pathvqa_conversion(tmp_path):
    source = tmp_path / "path-vqa"
    for split, count in (("train", 6), ("validation", 3), ("test", 3)):
        write_parquet(source / "data" / f"{split}-00000-of-00001.parquet", qa_rows(count, split))
    result = prepare_dataset("pathvqa", tmp_path / "out", source=source)
    assert result.counts == {"train": 6, "val": 3, "test": 3}
    val = load_vqa_records(result.splits["val"])
    assert val[0].id == "pathvqa-validation-000000"
    assert [r.answer_type for r in val] == ["CLOSED", "CLOSED", "OPEN"]
    with pytest.raises(ExgraError, match="vqa-rad only"):
        prepare_dataset("pathvqa", tmp_path / "out2", source=source, val_size=3)


def slake_source(tmp_path: Path) -> Path:
    source = tmp_path / "SLAKE"
    (source / "imgs" / "xmlab1").mkdir(parents=True)
    (source / "imgs" / "xmlab2").mkdir(parents=True)
    Image.new("RGB", (6, 6), "white").save(source / "imgs" / "xmlab1" / "source.jpg")
    Image.new("RGB", (6, 6), "gray").save(source / "imgs" / "xmlab2" / "source.jpg")

    def item(qid, image, question, answer, answer_type, lang="en"):
        return {
            "img_name": image,
            "question": question,
            "answer": answer,
            "answer_type": answer_type,
            "q_lang": lang,
            "qid": qid,
        }

    train = [
        item(1, "xmlab1/source.jpg", "Where is the lesion?", "Left Lung", "CLOSED"),
        item(2, "xmlab2/source.jpg", "Where is the lesion?", "Right Lung", "CLOSED"),
        item(3, "xmlab1/source.jpg", "Is this a CT?", "Yes", "closed"),
        item(4, "xmlab1/source.jpg", "Which organ is shown?", "Lung", "OPEN"),
        item(5, "xmlab1/source.jpg", "这是什么?", "肺", "OPEN", lang="zh"),
        item(6, "xmlab2/source.jpg", "What modality?", "MRI", "CLOSED"),
    ]
    (source / "train.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    (source / "validation.json").write_text(
        json.dumps([item(7, "xmlab2/source.jpg", "Organ?", "Liver", "OPEN")])
    )
    (source / "test.json").write_text(
        json.dumps([item(8, "xmlab2/source.jpg", "Where is the lesion?", "Right Lung", "CLOSED")])
    )
    return source


def test_slake_conversion_and_option_policy(tmp_path):
    result = prepare_dataset("slake", tmp_path / "out", source=slake_source(tmp_path))
    assert result.counts == {"train": 5, "val": 1, "test": 1}  # the Chinese question is dropped
    train = {r.id: r for r in load_vqa_records(result.splits["train"])}
    assert (
        vqa_question(train["1"]) == 'Where is the lesion? (Answer with either "left lung" or "right lung").'
    )
    assert vqa_question(train["3"]) == f"Is this a CT?{YES_NO_SUFFIX}"
    assert train["3"].answer_type == "CLOSED"
    assert vqa_question(train["6"]) == "What modality?"  # one known answer: no option list
    assert vqa_question(train["4"]) == "Which organ is shown?"
    assert (result.image_folder / "xmlab2" / "source.jpg").is_file()
    assert json.loads(result.candidates.read_text()) == {"0": ["lung"]}


def test_slake_rejects_image_paths_outside_imgs(tmp_path):
    source = slake_source(tmp_path)
    rows = json.loads((source / "train.json").read_text(encoding="utf-8"))
    rows[0]["img_name"] = "../../etc/passwd"
    (source / "train.json").write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataError, match="outside the image folder"):
        prepare_dataset("slake", tmp_path / "out", source=source)


def test_missing_source_and_existing_output(vqa_rad_source, tmp_path):
    with pytest.raises(ExgraError, match="needs --source"):
        prepare_dataset("slake", tmp_path / "out")
    with pytest.raises(DataError, match="source folder not found"):
        prepare_dataset("slake", tmp_path / "out", source=tmp_path / "nope")
    with pytest.raises(DataError, match="train.json"):
        (tmp_path / "empty" / "imgs").mkdir(parents=True)
        prepare_dataset("slake", tmp_path / "out", source=tmp_path / "empty")
    with pytest.raises(DataError, match="no 'train-\\*.parquet'"):
        prepare_dataset("pathvqa", tmp_path / "out", source=tmp_path / "empty")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    # Issue #12.4: --overwrite never deletes files exgra did not write; it refuses, changing nothing.
    for overwrite in (False, True):
        with pytest.raises(ExgraError, match="holds no exgra prepare output .*x"):
            prepare_dataset(
                "vqa-rad", tmp_path / "taken", source=vqa_rad_source, val_size=6, overwrite=overwrite
            )
        assert [p.name for p in (tmp_path / "taken").iterdir()] == ["x"]
        assert (tmp_path / "taken" / "x").read_bytes() == b"mine"
    again = tmp_path / "again"
    prepare_dataset("vqa-rad", again, source=vqa_rad_source, val_size=6)
    with pytest.raises(ExgraError, match="--overwrite"):
        prepare_dataset("vqa-rad", again, source=vqa_rad_source, val_size=6)
    prepare_dataset("vqa-rad", again, source=vqa_rad_source, val_size=7, overwrite=True)
    assert len(json.loads((again / "val_w_options_new.json").read_text())) == 7
    (again / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in again.iterdir() if p.is_file()}
    with pytest.raises(ExgraError, match="did not write .*notes.txt"):
        prepare_dataset("vqa-rad", again, source=vqa_rad_source, val_size=6, overwrite=True)
    assert {p.name: p.read_bytes() for p in again.iterdir() if p.is_file()} == before


def test_missing_pyarrow_names_the_extra(vqa_rad_source, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ExgraError, match=r'pip install "exgra\[prepare\]"'):
        prepare_dataset("vqa-rad", tmp_path / "out", source=vqa_rad_source, val_size=6)


def test_cli_prepare(run_exgra, vqa_rad_source, tmp_path):
    result = run_exgra(
        "prepare", "vqa-rad", "--source", vqa_rad_source, "--output", tmp_path / "o", "--val-size", "6"
    )
    assert result.exit_code == 0, result.stderr
    assert "train 24, val 6, test 9" in result.stdout
    again = run_exgra(
        "prepare", "vqa-rad", "--source", vqa_rad_source, "--output", tmp_path / "o", "--val-size", "6"
    )
    assert again.exit_code == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    unknown = run_exgra("prepare", "mimic", "--output", tmp_path / "m")
    assert unknown.exit_code == 1 and "unknown dataset 'mimic'" in unknown.stderr


def test_cli_prepare_demo(run_exgra, tmp_path):
    result = run_exgra(
        "prepare", "demo", "--output", tmp_path / "demo", "--num-samples", "20", "--image-size", "32"
    )
    assert result.exit_code == 0, result.stderr
    assert len(load_vqa_records(tmp_path / "demo" / "train.json")) == 14


def test_prepare_cli_output_in_a_file_is_one_error_line(tmp_path: Path, run_exgra) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    for output in (blocker, blocker / "demo"):
        result = run_exgra("prepare", "demo", "-o", output, "--num-samples", "10")
        assert result.exit_code == 1 and "Traceback" not in result.stderr
        assert "is a file" in result.stderr and result.stderr.count("error:") == 1
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no staging folder left
