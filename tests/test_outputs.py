"""The output-ownership rules of exgra.outputs: refuse, changing nothing, whatever exgra did not write."""

from __future__ import annotations

import json

import pytest

from exgra.errors import ExgraError
from exgra.outputs import (
    MARKER_NAME,
    check_distinct_outputs,
    check_not_inputs,
    check_output_folder,
    check_resume_settings,
    claim_folder,
    remove_owned,
    staged_output_folder,
    write_settings,
)


def snapshot(folder):
    """Every file under ``folder`` with its bytes (the oracle for "nothing changed")."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_and_empty_folders_are_free(tmp_path):
    assert check_output_folder(tmp_path / "new", "prepare") == "new"
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", "prepare") == "empty"


def test_unmarked_folder_is_refused_even_with_overwrite(tmp_path):
    mine = tmp_path / "mine"
    (mine / "logs").mkdir(parents=True)
    (mine / "thesis.tex").write_text("t")
    (mine / "logs" / "notes.txt").write_text("n")
    before = snapshot(mine)
    with pytest.raises(ExgraError, match="thesis.tex"):
        check_output_folder(mine, "prepare", overwrite=True)
    with pytest.raises(ExgraError, match="never replaces"):
        check_output_folder(mine, "prepare", resume=True)
    assert remove_owned(mine) == []
    assert snapshot(mine) == before


def test_owned_folder_needs_overwrite_and_foreign_entries_block_it(tmp_path):
    out = tmp_path / "out"
    claim_folder(out, "train", owned=["metrics.jsonl", "checkpoint-*"])
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "checkpoint-2").mkdir()
    with pytest.raises(ExgraError, match="--overwrite"):
        check_output_folder(out, "train")
    assert check_output_folder(out, "train", overwrite=True) == "owned"
    with pytest.raises(ExgraError, match="exgra train, not of exgra prepare"):
        check_output_folder(out, "prepare", overwrite=True)
    (out / "thesis.tex").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ExgraError, match="thesis.tex"):
        check_output_folder(out, "train", overwrite=True)
    assert snapshot(out) == before
    (out / "thesis.tex").unlink()
    assert remove_owned(out) == ["checkpoint-2", "metrics.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME]


def test_a_file_where_a_folder_goes_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ExgraError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "f", "prepare")


def test_staged_folder_marks_and_replaces_only_its_own_output(tmp_path):
    out = tmp_path / "out"
    with staged_output_folder(out, "prepare") as building:
        building.mkdir()
        (building / "a.json").write_text("1")
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["command"] == "prepare" and marker["owned"] == ["a.json"]
    with staged_output_folder(out, "prepare", overwrite=True) as building:
        building.mkdir()
        (building / "b.json").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, "b.json"]
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with (
        pytest.raises(ExgraError, match="notes.txt"),
        staged_output_folder(out, "prepare", overwrite=True),
    ):
        raise AssertionError("the body must not run")
    assert snapshot(out) == before


def test_outputs_never_inputs(tmp_path):
    data = tmp_path / "answers.jsonl"
    data.write_text("{}\n")
    with pytest.raises(ExgraError, match="--output .* is also the input --answers"):
        check_not_inputs({"--output": data}, {"--answers": tmp_path / "." / "answers.jsonl"})
    link = tmp_path / "link.jsonl"
    link.hardlink_to(data)
    with pytest.raises(ExgraError, match="also the input"):
        check_not_inputs({"--output": link}, {"--answers": data})
    with pytest.raises(ExgraError, match="holds the input"):
        check_not_inputs({"--output": tmp_path}, {"--answers": data})
    check_not_inputs({"--output": tmp_path / "metrics.json"}, {"--answers": data, "--candidates": None})
    with pytest.raises(ExgraError, match="--output and --per-item must be different"):
        check_distinct_outputs({"--output": data, "--per-item": tmp_path / "answers.jsonl"})


def test_resume_settings_named_and_unreadable_refused(tmp_path):
    path = tmp_path / "run.json"
    check_resume_settings(path, {"method": "likelihood"})  # nothing recorded yet
    write_settings(path, {"method": "likelihood", "seed": 1})
    check_resume_settings(path, {"method": "likelihood", "seed": 1})
    with pytest.raises(ExgraError, match=r'method was "likelihood", now "legacy"'):
        check_resume_settings(path, {"method": "legacy", "seed": 1})
    check_resume_settings(path, {"method": "likelihood", "seed": 2}, keys=["method"])
    path.write_text('{"method": ')
    with pytest.raises(ExgraError, match="unreadable"):
        check_resume_settings(path, {"method": "likelihood"})
