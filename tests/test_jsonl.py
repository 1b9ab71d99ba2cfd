"""exgra.jsonl: the durable-output layer (torn tails, fsync policies, truncation, shards, journals)."""

from __future__ import annotations

import json
import os

import pytest

from exgra.errors import DataError
from exgra.jsonl import AnswerShards, Journal, JsonlWriter, read_records, repair_torn_tail, truncate_records


@pytest.mark.parametrize("fsync", ["never", "each", "background"])
def test_writer_appends_complete_lines_and_drops_a_torn_tail(tmp_path, fsync, monkeypatch):
    path = tmp_path / "out.jsonl"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with JsonlWriter(path, fsync=fsync).open() as writer:
        writer.append({"id": 1, "text": "é"})
        writer.extend([{"id": 2}, {"id": 3}])
    assert path.read_bytes() == '{"id": 1, "text": "é"}\n{"id": 2}\n{"id": 3}\n'.encode()
    assert (len(synced) > 0) == (fsync != "never")
    with path.open("ab") as handle:  # a kill in the middle of a write
        handle.write(b'{"id": 4, "te')
    assert [r["id"] for r in read_records(path)] == [1, 2, 3]
    with JsonlWriter(path, fsync=fsync).open() as writer:  # reopening cuts the torn line away
        writer.append({"id": 4})
    assert [r["id"] for r in read_records(path, allow_torn_tail=False)] == [1, 2, 3, 4]


def test_reading_is_tolerant_only_of_the_tail(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(DataError, match="bad.jsonl line 2 is not valid JSON"):
        read_records(path)
    path.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2 must be a JSON object, found list"):
        read_records(path)
    path.write_text('{"id": 1}\n{"id": 2}')  # complete JSON without its newline: torn by definition
    assert [r["id"] for r in read_records(path)] == [1]
    assert repair_torn_tail(path) == len('{"id": 2}') and path.read_text() == '{"id": 1}\n'
    assert read_records(tmp_path / "missing.jsonl") == []


def test_truncate_records_keeps_what_the_predicate_keeps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"st')
    assert truncate_records(path, lambda r: r["step"] <= 3) == 2
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    assert truncate_records(path, lambda r: True) == 0 and path.read_text().count("\n") == 3


def test_shards_merge_in_item_order_and_remove_parts(tmp_path):
    shards = AnswerShards(tmp_path / "answers.jsonl")
    for rank, ids in enumerate([["c", "a"], ["b"]]):
        with shards.open_part(rank) as part:
            part.extend({"question_id": i, "text": i.upper()} for i in ids)
    assert set(shards.load_done()) == {"a", "b", "c"}
    assert shards.merge(["a", "b", "c", "d"]) == 3
    assert [r["question_id"] for r in read_records(shards.output)] == ["a", "b", "c"]
    assert shards.part_paths() == []


def test_journal_keeps_its_header_across_resume(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    journal.open({"kind": "run", "model": "m"}, resume=False)
    journal.append({"index": 0})
    journal.close()
    with (tmp_path / "j.jsonl").open("ab") as handle:
        handle.write(b'{"index": 1')  # killed mid-line
    journal.open({"kind": "run", "model": "m"}, resume=True)
    journal.append({"index": 1})
    journal.close()
    header, entries = journal.read()
    assert header == {"kind": "run", "model": "m"} and entries == [{"index": 0}, {"index": 1}]
    journal.open({"kind": "run", "model": "other"}, resume=False)  # a new run starts over
    journal.close()
    assert journal.read() == ({"kind": "run", "model": "other"}, [])
