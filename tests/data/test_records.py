"""Record schemas, loaders, the bad-record tracker and the text helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exgra.data.records import (
    YES_NO_SUFFIX,
    BadRecordTracker,
    PretrainRecord,
    VQARecord,
    alignment_text,
    closed_question_suffix,
    load_pretrain_records,
    load_vqa_records,
    sha256_file,
    vqa_answer,
    vqa_question,
    write_checksums,
)
from exgra.errors import DataError
from exgra.io import write_json_atomic


def turns(*values: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def pretrain(record_id: str = "a", **extra) -> dict:
    record = {
        "id": record_id,
        "image": "a.png",
        "conversations": turns("<image>\nWhat is shown?", "A chest x-ray."),
        "conversations_long": turns("<image>\nWhat is shown?", "A frontal chest x-ray with clear lungs."),
    }
    record.update(extra)
    return record


def vqa(record_id: str = "q1", answer_type: str = "CLOSED", answer: str = "yes") -> dict:
    return {
        "id": record_id,
        "image": "a.png",
        "answer_type": answer_type,
        "conversations": turns(f"Is there a fracture?{YES_NO_SUFFIX}\n<image>", answer),
    }


def dump(tmp_path: Path, data, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_pretrain_record_accepts_typo_keys_and_serialises_with_from():
    record = PretrainRecord.model_validate(
        {
            "id": 7,
            "image": "x.png",
            "conversatons": turns("<image> hi", "ok"),
            "conversatons_long": turns("<image>", "x"),
        }
    )
    assert record.id == 7  # ids keep their JSON type (answers must write them back unchanged)
    assert record.conversations[1].value == "ok"
    assert record.conversations_long is not None and record.conversations_long[1].value == "x"
    assert record.to_json()["conversations"][0] == {"from": "human", "value": "<image> hi"}


@pytest.mark.parametrize(
    ("conversations", "message"),
    [
        ([], "empty"),
        (turns("<image> q"), "even length"),
        ([{"from": "gpt", "value": "<image>"}, {"from": "human", "value": "x"}], "expected 'human'"),
        (turns("no image token", "a"), "no <image> token"),
    ],
)
def test_pretrain_conversation_rules(conversations, message):
    with pytest.raises(ValueError, match=message):
        PretrainRecord.model_validate({"id": "a", "image": "a.png", "conversations": conversations})


def test_vqa_record_normalises_answer_type_and_rejects_bad_ones():
    assert VQARecord.model_validate(vqa(answer_type=" open ")).answer_type == "OPEN"
    with pytest.raises(ValueError):
        VQARecord.model_validate(vqa(answer_type="MAYBE"))
    with pytest.raises(ValueError, match="exactly 2"):
        VQARecord.model_validate({**vqa(), "conversations": turns("<image> q", "a", "q2", "a2")})
    with pytest.raises(ValueError, match="answer is empty"):
        VQARecord.model_validate(vqa(answer="  "))


def test_load_vqa_records_reads_a_valid_file(tmp_path):
    records = load_vqa_records(dump(tmp_path, [vqa("q1"), vqa("q2", "open", "left lung")]))
    assert [r.id for r in records] == ["q1", "q2"]
    assert records[1].answer_type == "OPEN"
    assert vqa_question(records[0]) == f"Is there a fracture?{YES_NO_SUFFIX}"
    assert vqa_answer(records[1]) == "left lung"


def test_file_level_errors_are_one_clear_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_vqa_records(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"id": 1,,}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2, column 11"):
        load_vqa_records(bad)
    with pytest.raises(DataError, match="must contain a JSON list.*dict"):
        load_pretrain_records(dump(tmp_path, {"id": "a"}))


def test_bad_records_fail_by_default_naming_the_first_ids(tmp_path):
    data = [
        vqa("good"),
        vqa("broken", answer_type="MAYBE"),
        {"id": "noimage", **{k: v for k, v in vqa().items() if k != "image" and k != "id"}},
    ]
    with pytest.raises(DataError, match=r"max_bad_records=0.*'broken' \(answer_type"):
        load_vqa_records(dump(tmp_path, data))


def test_bad_records_below_the_limit_are_skipped_and_reported(tmp_path):
    data = [
        vqa("good"),
        vqa("broken", answer_type="MAYBE"),
        "not an object",
        {"id": "noimage", "answer_type": "OPEN"},
    ]
    tracker = BadRecordTracker(max_bad_records=3, source="vqa.json")
    records = load_vqa_records(dump(tmp_path, data), tracker=tracker)
    assert [r.id for r in records] == ["good"]  # never a substitute sample
    assert tracker.count == 3
    assert [rid for rid, _ in tracker.bad] == ["broken", "#2", "noimage"]
    assert "missing field 'image'" in tracker.bad[2][1]
    assert tracker.summary().startswith("vqa.json: skipped 3 bad record(s): 'broken'")
    with pytest.raises(DataError, match="more than max_bad_records=3"):
        tracker.add("one-more", "reason")


def test_require_long_makes_records_without_extended_captions_bad(tmp_path):
    short_only = pretrain("short")
    del short_only["conversations_long"]
    path = dump(tmp_path, [pretrain("full"), short_only])
    with pytest.raises(DataError, match="'short' \\(missing field 'conversations_long'\\)"):
        load_pretrain_records(path)
    assert [r.id for r in load_pretrain_records(path, require_long=False)] == ["full", "short"]
    assert [r.id for r in load_pretrain_records(path, max_bad_records=1)] == ["full"]


def test_alignment_text_follows_the_reference():
    conversations = turns("<image>\nDescribe.", "A1 line\nbreak<im_start><im_patch><im_end>", "More?", "A2")
    assert alignment_text(conversations) == "A1 linebreak. A2"
    record = PretrainRecord.model_validate(pretrain())
    assert alignment_text(record.conversations) == "A chest x-ray."
    assert alignment_text(record.conversations_long) == "A frontal chest x-ray with clear lungs."


def test_closed_question_suffix():
    assert closed_question_suffix(["No", "yes"]) == ' (Answer with either "Yes" or "No").'
    assert closed_question_suffix(["left", "right"]) == ' (Answer with either "left" or "right").'
    assert closed_question_suffix(["0", "90", "180"]) == ' (Answer with either "0", "90" or "180").'
    with pytest.raises(DataError):
        closed_question_suffix(["only"])


def test_write_json_and_checksums(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "x.json", [{"a": "é"}])
    assert json.loads(path.read_text(encoding="utf-8")) == [{"a": "é"}]
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left
    checksums = write_checksums(path.parent, ["x.json"])
    digest, name = checksums.read_text().split()
    assert name == "x.json" and digest == sha256_file(path) and len(digest) == 64


def test_tracker_rejects_negative_limit():
    with pytest.raises(DataError):
        BadRecordTracker(-1)
