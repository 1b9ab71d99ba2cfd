"""exgra.io: one clear error per input mistake, output refusals before work, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exgra.errors import DataError, ExgraError
from exgra.io import (
    check_output_dir,
    check_output_file,
    os_errors,
    read_json,
    read_jsonl,
    read_jsonl_lines,
    read_text,
    staged_output_dir,
    write_json_atomic,
    write_text_atomic,
)


def test_read_errors_name_the_mistake(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="answers file not found"):
        read_text(tmp_path / "nope.jsonl", "answers file")
    with pytest.raises(DataError, match="is a folder; give the path of a file"):
        read_json(tmp_path, "data file")
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty.json is empty"):
        read_json(empty)
    with pytest.raises(DataError, match="empty.json is empty"):
        read_jsonl(empty)
    binary = tmp_path / "latin1.json"
    binary.write_bytes(b'["caf\xe9"]')
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_json(binary)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n  oops}')
    with pytest.raises(DataError, match=r"bad.json is not valid JSON \(line 2, column 3"):
        read_json(bad)


def test_read_jsonl_rows_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question_id": 1}\n\n{"question_id": 2, "text": "é"}\n')
    assert read_jsonl_lines(path, required_key="question_id") == [
        (1, {"question_id": 1}),
        (3, {"question_id": 2, "text": "é"}),
    ]
    path.write_text('{"question_id": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2 of answers file .* is not a JSON object"):
        read_jsonl(path, "answers file")
    path.write_text('{"question_id": 1}\n{"id": 2}\n')
    with pytest.raises(DataError, match="line 2 .* has no 'question_id'"):
        read_jsonl(path, required_key="question_id")


def test_check_output_file_refuses_before_work(tmp_path: Path) -> None:
    existing = tmp_path / "m.json"
    existing.write_text("{}")
    with pytest.raises(ExgraError, match="already exists; pass --overwrite"):
        check_output_file(existing)
    assert check_output_file(existing, overwrite=True) == existing
    with pytest.raises(ExgraError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True)
    with pytest.raises(ExgraError, match="m.json is a file, not a folder"):
        check_output_file(existing / "sub" / "x.json")
    assert not (tmp_path / "new").exists()
    check_output_file(tmp_path / "new" / "x.json")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    path = write_json_atomic(tmp_path / "sub" / "x.json", {"a": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "new")
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left
    monkeypatch.undo()
    with pytest.raises(ExgraError, match="already exists"):
        write_text_atomic(path, "new", overwrite=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_os_errors_become_one_sentence(tmp_path: Path, monkeypatch) -> None:
    with (
        pytest.raises(ExgraError, match="cannot write out.json: Permission denied"),
        os_errors("write out.json"),
    ):
        raise PermissionError(13, "Permission denied")

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(ExgraError, match="cannot write .*x.json: Read-only file system"):
        write_text_atomic(tmp_path / "x.json", "text")


def test_staged_output_dir_replaces_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_output_dir(out) as building:
        building.mkdir()
        (building / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(ExgraError, match="not empty; pass --overwrite"):
        check_output_dir(out)
    with pytest.raises(KeyboardInterrupt), staged_output_dir(out, overwrite=True) as building:
        building.mkdir()
        (building / "a.txt").write_text("second")
        raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "first"  # the old folder survives an interrupted rebuild
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    with staged_output_dir(out, overwrite=True) as building:
        building.mkdir()
        (building / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    with pytest.raises(ExgraError, match="is a file; give the path of a folder"):
        check_output_dir(out / "b.txt", overwrite=True)
