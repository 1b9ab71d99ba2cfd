"""Record schemas for pre-training and VQA JSON files, with loaders that never hide bad data.

Formats (REFERENCE §4.1, §4.4):

* pre-training: ``[{id, image, conversations, conversations_long}]``; the reference's typo keys
  ``conversatons`` / ``conversatons_long`` are accepted as fallbacks. Conversations alternate
  ``human``/``gpt``, have even length, and the first human turn contains ``<image>``.
* VQA: ``[{id, image, answer_type: OPEN|CLOSED, conversations: [human question + "\\n<image>",
  gpt answer]}]``.

A record that breaks these rules is counted by a :class:`BadRecordTracker` (with its id and the
reason) and skipped; beyond ``max_bad_records`` loading stops with a :class:`DataError`. A bad record
is never replaced by another sample.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exgra.data.images import load_image, safe_image_path
from exgra.errors import DataError
from exgra.io import read_json, write_text_atomic

__all__ = [
    "IMAGE_TOKEN",
    "YES_NO_SUFFIX",
    "BadRecordTracker",
    "PretrainRecord",
    "Turn",
    "VQARecord",
    "alignment_text",
    "closed_question_suffix",
    "load_image",
    "load_pretrain_records",
    "load_vqa_records",
    "read_json_list",
    "safe_image_path",
    "sha256_file",
    "vqa_answer",
    "vqa_question",
    "write_checksums",
]

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
YES_NO_SUFFIX = ' (Answer with either "Yes" or "No").'
_ALIGNMENT_DELETIONS = ("\n", "<im_patch>", "<im_start>", "<im_end>")


class Turn(BaseModel):
    """One conversation turn; serialise with ``model_dump(by_alias=True)`` to get ``from``."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    speaker: Literal["human", "gpt"] = Field(alias="from")
    value: str


def _check_conversation(turns: Sequence[Turn], field: str) -> None:
    if not turns:
        raise ValueError(f"'{field}' is empty")
    if len(turns) % 2:
        raise ValueError(f"'{field}' has {len(turns)} turns; it must alternate human/gpt (even length)")
    for index, turn in enumerate(turns):
        expected = "human" if index % 2 == 0 else "gpt"
        if turn.speaker != expected:
            raise ValueError(f"'{field}' turn {index} is from '{turn.speaker}', expected '{expected}'")
    if IMAGE_TOKEN not in turns[0].value:
        raise ValueError(f"the first human turn of '{field}' has no {IMAGE_TOKEN} token")


class _Record(BaseModel):
    # Extra keys are common in published files (e.g. SLAKE's qid); they are ignored, not errors.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    # The id keeps the JSON type it has in the file (VQA-RAD and SLAKE use integers): answers, per-item
    # scores and merged shards write it back unchanged, so scorers that compare ids by type still match.
    id: StrictStr | StrictInt
    image: str

    @field_validator("image")
    @classmethod
    def _image_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("'image' is empty")
        return value

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object written to files (``from`` keys, no empty optional fields)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class PretrainRecord(_Record):
    """A pre-training record; ``conversations_long`` holds the extended assistant answers."""

    conversations: list[Turn]
    conversations_long: list[Turn] | None = None

    @model_validator(mode="before")
    @classmethod
    def _typo_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            for key in ("conversations", "conversations_long"):
                typo = key.replace("conversations", "conversatons")
                if key not in data and typo in data:
                    data[key] = data.pop(typo)
        return data

    @model_validator(mode="after")
    def _check_turns(self) -> PretrainRecord:
        _check_conversation(self.conversations, "conversations")
        if self.conversations_long is not None:
            _check_conversation(self.conversations_long, "conversations_long")
        return self


class VQARecord(_Record):
    """A VQA record: one human question (with ``<image>``) and one gpt answer."""

    answer_type: Literal["OPEN", "CLOSED"]
    conversations: list[Turn]

    @field_validator("answer_type", mode="before")
    @classmethod
    def _normalise_answer_type(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_turns(self) -> VQARecord:
        if len(self.conversations) != 2:
            raise ValueError(
                f"'conversations' has {len(self.conversations)} turns; a VQA record has exactly 2"
            )
        _check_conversation(self.conversations, "conversations")
        if not self.conversations[1].value.strip():
            raise ValueError("the answer is empty")
        return self


class BadRecordTracker:
    """Counts bad records (with ids and reasons) and fails once more than ``max_bad_records`` are seen."""

    def __init__(self, max_bad_records: int = 0, source: str = "records") -> None:
        if max_bad_records < 0:
            raise DataError(f"max_bad_records must be 0 or more, got {max_bad_records}")
        self.max_bad_records = max_bad_records
        self.source = source
        self.bad: list[tuple[str, str]] = []

    @property
    def count(self) -> int:
        return len(self.bad)

    def add(self, record_id: str, reason: str) -> None:
        """Record one bad record; raise :class:`DataError` when the limit is exceeded."""
        self.bad.append((str(record_id), reason))
        if self.count > self.max_bad_records:
            raise DataError(
                f"{self.source}: more than max_bad_records={self.max_bad_records} bad records; "
                f"first: {self._examples()}; fix the records or raise max_bad_records"
            )

    def _examples(self, limit: int = 3) -> str:
        shown = ", ".join(f"'{rid}' ({reason})" for rid, reason in self.bad[:limit])
        more = f" and {self.count - limit} more" if self.count > limit else ""
        return shown + more

    def summary(self) -> str:
        """One line: how many records were skipped and which (empty string when none)."""
        if not self.bad:
            return ""
        return f"{self.source}: skipped {self.count} bad record(s): {self._examples()}"


def _reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error["loc"])
        if error["type"] == "missing":
            parts.append(f"missing field '{location}'")
        else:
            message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
            parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def read_json_list(path: str | Path) -> list[Any]:
    """Read a JSON file that must hold a list; one clear :class:`DataError` for every failure."""
    data = read_json(path, "data file")
    if not isinstance(data, list):
        raise DataError(f"{path} must contain a JSON list of records, found {type(data).__name__}")
    return data


RecordT = TypeVar("RecordT", bound=_Record)


def _load(
    path: str | Path,
    model: type[RecordT],
    max_bad_records: int,
    tracker: BadRecordTracker | None,
    extra_check: Any = None,
) -> list[RecordT]:
    items = read_json_list(path)
    tracker = tracker or BadRecordTracker(max_bad_records, source=str(path))
    records: list[RecordT] = []
    for index, item in enumerate(items):
        record_id = item.get("id", f"#{index}") if isinstance(item, dict) else f"#{index}"
        if not isinstance(item, dict):
            tracker.add(str(record_id), f"not a JSON object but {type(item).__name__}")
            continue
        try:
            record = model.model_validate(item)
        except ValidationError as exc:
            tracker.add(str(record_id), _reason(exc))
            continue
        problem = extra_check(record) if extra_check else None
        if problem:
            tracker.add(record.id, problem)
            continue
        records.append(record)
    if tracker.count:
        logger.warning(tracker.summary())
    return records


def load_pretrain_records(
    path: str | Path,
    require_long: bool = True,
    max_bad_records: int = 0,
    tracker: BadRecordTracker | None = None,
) -> list[PretrainRecord]:
    """Load a pre-training JSON list; records without ``conversations_long`` are bad when required.

    The reference needs ``conversations_long`` in both stages, so ``require_long`` defaults to True.
    Pass your own ``tracker`` to read its :meth:`BadRecordTracker.summary` afterwards.
    """

    def check(record: PretrainRecord) -> str | None:
        if require_long and record.conversations_long is None:
            return "missing field 'conversations_long'"
        return None

    return _load(path, PretrainRecord, max_bad_records, tracker, check)


def load_vqa_records(
    path: str | Path, max_bad_records: int = 0, tracker: BadRecordTracker | None = None
) -> list[VQARecord]:
    """Load a VQA JSON list (REFERENCE §4.4) with ``answer_type`` normalised to OPEN/CLOSED."""
    return _load(path, VQARecord, max_bad_records, tracker)


def _turn_values(conversations: Iterable[Turn | Mapping[str, Any]]) -> list[tuple[str, str]]:
    pairs = []
    for turn in conversations:
        if isinstance(turn, Turn):
            pairs.append((turn.speaker, turn.value))
        else:
            pairs.append((str(turn.get("from", "")), str(turn.get("value", ""))))
    return pairs


def alignment_text(conversations: Iterable[Turn | Mapping[str, Any]]) -> str:
    """The assistant answers of a conversation as one string (REFERENCE §4.3).

    Every second turn (the assistant's) with ``\\n`` and image tokens deleted, joined with ``". "``.
    """
    values = [value for index, (_, value) in enumerate(_turn_values(conversations)) if index % 2 == 1]
    cleaned = []
    for value in values:
        for token in _ALIGNMENT_DELETIONS:
            value = value.replace(token, "")
        cleaned.append(value)
    return ". ".join(cleaned)


def vqa_question(record: VQARecord) -> str:
    """The question as asked (options suffix kept), with ``<image>`` removed and whitespace stripped."""
    return record.conversations[0].value.replace(IMAGE_TOKEN, "").strip()


def vqa_answer(record: VQARecord) -> str:
    """The reference answer (the gpt turn), stripped."""
    return record.conversations[1].value.strip()


def closed_question_suffix(options: Sequence[str]) -> str:
    """The suffix appended to a closed question: the reference's yes/no wording, else the options.

    ``["yes", "no"]`` → `` (Answer with either "Yes" or "No").``; ``["left", "right"]`` →
    `` (Answer with either "left" or "right").``; three or more options are comma-separated.
    """
    if {option.strip().lower() for option in options} == {"yes", "no"}:
        return YES_NO_SUFFIX
    if len(options) < 2:
        raise DataError(f"a closed question needs at least two options, got {list(options)}")
    quoted = [f'"{option}"' for option in options]
    listed = quoted[0] if len(quoted) == 2 else ", ".join(quoted[:-1])
    return f" (Answer with either {listed} or {quoted[-1]})."


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | Path, names: Iterable[str], filename: str = "checksums.sha256") -> Path:
    """Write ``<sha256>  <name>`` lines for files in ``folder`` (verify with ``sha256sum -c``)."""
    folder = Path(folder)
    lines = [f"{sha256_file(folder / name)}  {name}\n" for name in names]
    return write_text_atomic(folder / filename, "".join(lines))
