"""Durable JSONL outputs: the one implementation behind answers files, journals and metrics logs.

Every line is written with its newline in one ``write`` on an ``O_APPEND`` descriptor, so a killed
process leaves at most one torn last line (text after the last newline). Readers that tolerate a
torn tail ignore it, :func:`repair_torn_tail` truncates it away before appending again, and a
complete last line without its newline counts as torn too (the kill came between the object and its
newline). When lines reach the disk is the writer's ``fsync`` policy:

- ``"never"``: the OS decides (metrics logs: losing the last lines of a log costs nothing);
- ``"each"``: ``fsync`` after every write (answer shards: one write per batch);
- ``"background"``: a thread fsyncs after new lines arrive (group commit; journals written from an
  event loop, where a 5 ms ``fsync`` per item would stall every request).

:class:`AnswerShards` is the per-process shard layout of a resumable run (``<output>.part-<rank>``)
and its merge into one file; :class:`Journal` is a JSONL file whose first line describes its run.
Whole files are still written through :func:`exgra.io.write_text_atomic`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from exgra.errors import DataError
from exgra.io import make_parent_dirs, os_errors, write_text_atomic

__all__ = [
    "AnswerShards",
    "FsyncPolicy",
    "Journal",
    "JsonlWriter",
    "append_jsonl",
    "encode_records",
    "read_records",
    "repair_torn_tail",
    "truncate_records",
]

FsyncPolicy = Literal["never", "each", "background"]


def encode_records(records: Iterable[dict[str, Any]]) -> str:
    """JSON lines (non-ASCII kept), each ending in a newline."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def repair_torn_tail(path: str | Path) -> int:
    """Truncate ``path`` after its last newline; return how many bytes of a torn last line were dropped.

    Every line is written with its newline in one call, so text after the last newline is a line that a
    kill interrupted: it is incomplete by construction and its item is simply done again.
    """
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        # Read backwards in blocks until a newline is found (lines are short, usually one block).
        position, block, keep = size, 4096, 0
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            index = handle.read(position - start).rfind(b"\n")
            if index >= 0:
                keep = start + index + 1
                break
            position = start
        if keep < size:
            handle.truncate(keep)
        return size - keep


def read_records(path: str | Path, allow_torn_tail: bool = True, what: str = "") -> list[dict[str, Any]]:
    """The objects of a JSONL file written by :class:`JsonlWriter`; a missing file holds none.

    With ``allow_torn_tail`` the text after the last newline (a torn line) is ignored. Any other
    unreadable line, or a line that is not an object, is a :class:`DataError` naming the file and line.
    """
    path = Path(path)
    name = f"{what} {path}".strip()
    if not path.exists():
        return []
    with os_errors(f"read {name}"):
        data = path.read_bytes()
    lines = data.split(b"\n")
    if allow_torn_tail:
        lines = lines[:-1]  # the text after the last newline (empty when the file ends in one)
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise DataError(f"{name} line {number} is not valid JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise DataError(f"{name} line {number} must be a JSON object, found {type(record).__name__}")
        records.append(record)
    return records


def truncate_records(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``path`` (atomically) with only the records for which ``keep`` is true; a torn last line
    goes too. Returns how many records were dropped. Used on resume: a metrics log must not hold the
    steps between the checkpoint and the kill twice."""
    path = Path(path)
    if not path.exists():
        return 0
    records = read_records(path)
    kept = [record for record in records if keep(record)]
    if len(kept) != len(records) or path.read_bytes()[-1:] not in (b"", b"\n"):
        write_text_atomic(path, encode_records(kept))
    return len(records) - len(kept)


class JsonlWriter:
    """Append-only JSONL file: one ``write`` per call, so lines never interleave or tear mid-file."""

    def __init__(self, path: str | Path, fsync: FsyncPolicy = "each") -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fd: int | None = None
        self._pending = threading.Event()
        self._closing = False
        self._syncer: threading.Thread | None = None

    def open(self, truncate: bool = False) -> JsonlWriter:
        """Open for appending (after dropping a torn last line), or start an empty file (``truncate``)."""
        make_parent_dirs(self.path)
        with os_errors(f"open {self.path}"):
            if truncate:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC
            else:
                repair_torn_tail(self.path)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            self._fd = os.open(self.path, flags, 0o644)
        if self.fsync == "background":
            self._closing = False
            self._syncer = threading.Thread(target=self._sync_loop, name="jsonl-fsync", daemon=True)
            self._syncer.start()
        return self

    def _sync_loop(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            fd = self._fd
            if fd is not None:
                # closed concurrently: close() does the final fsync itself
                with contextlib.suppress(OSError):
                    os.fsync(fd)
            if self._closing:
                return

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records in one write, then apply the fsync policy."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not open for writing")
        view = memoryview(encode_records(records).encode("utf-8"))
        if not view:
            return
        with os_errors(f"write {self.path}"):
            while view:  # regular files write everything at once; the loop covers the rare short write
                view = view[os.write(self._fd, view) :]
            if self.fsync == "each":
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
        if self.fsync == "background":
            self._pending.set()

    def append(self, record: dict[str, Any]) -> None:
        self.extend([record])

    def close(self) -> None:
        if self._syncer is not None:
            self._closing = True
            self._pending.set()
            self._syncer.join()
            self._syncer = None
        if self._fd is not None:
            if self.fsync != "never":
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def append_jsonl(handle: JsonlWriter, records: Iterable[dict[str, Any]]) -> None:
    """Append ``records`` to an open writer in one write (kept for the eval commands' call sites)."""
    handle.extend(records)


class AnswerShards:
    """The output file of a run and the per-process part files beside it.

    ``<output>.part-<rank>`` holds what process ``rank`` wrote so far; :meth:`merge` turns the output
    and all parts into one file in item order.
    """

    def __init__(self, output: str | Path, key_field: str = "question_id") -> None:
        self.output = Path(output)
        self.key_field = key_field

    def part_path(self, rank: int) -> Path:
        return self.output.with_name(f"{self.output.name}.part-{rank}")

    def part_paths(self) -> list[Path]:
        return sorted(self.output.parent.glob(f"{self.output.name}.part-*"))

    def has_unfinished_run(self) -> bool:
        """Part files are left: a run was killed (or is running) before its merge."""
        return bool(self.part_paths())

    def load_done(self, include_output: bool = True) -> dict[str, dict[str, Any]]:
        """Records already written (output first, then parts), keyed by ``str(item id)``."""
        done: dict[str, dict[str, Any]] = {}
        sources = ([self.output] if include_output and self.output.exists() else []) + self.part_paths()
        for path in sources:
            # The merged output is written atomically, so its last line is complete even without a
            # newline (files from other tools); only part files can end in a torn line.
            for record in read_records(path, allow_torn_tail=path != self.output):
                if self.key_field in record:
                    done.setdefault(str(record[self.key_field]), record)
        return done

    @contextlib.contextmanager
    def open_part(self, rank: int) -> Iterator[JsonlWriter]:
        """This process's part file, open for appending (fsync after every write), torn tail dropped."""
        with JsonlWriter(self.part_path(rank), fsync="each").open() as writer:
            yield writer

    def remove_parts(self) -> None:
        for path in self.part_paths():
            path.unlink(missing_ok=True)

    def merge(self, order: Sequence[Any], include_output: bool = True) -> int:
        """Write every known record whose id is in ``order`` to the output in that order; drop parts.

        Returns the number of records written. Records of ids not in ``order`` are dropped only from the
        merged file (the ids of the input define the output file).
        """
        done = self.load_done(include_output=include_output)
        records = [done[str(item)] for item in order if str(item) in done]
        write_text_atomic(self.output, encode_records(records))
        self.remove_parts()
        return len(records)


class Journal:
    """A JSONL file whose first line is (by default) a header describing the run it belongs to."""

    def __init__(self, path: str | Path, fsync: bool = True, with_header: bool = True) -> None:
        self.path = Path(path)
        self.with_header = with_header
        self._writer = JsonlWriter(self.path, fsync="background" if fsync else "never")

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Return (header, entries); a torn last line from a killed run is ignored.

        Without a header (``with_header=False``) the header is always None.
        """
        parsed = read_records(self.path, what="journal")
        if not self.with_header:
            return None, parsed
        if not parsed:
            return None, []
        return parsed[0], parsed[1:]

    def open(self, header: dict[str, Any] | None, resume: bool) -> None:
        """Start a new journal (writing ``header``) or continue one, dropping a torn last line."""
        continuing = resume and self.path.exists()
        self._writer.open(truncate=not continuing)
        if header is not None and (not continuing or self.path.stat().st_size == 0):
            self.append(header)

    def append(self, entry: dict[str, Any]) -> None:
        self._writer.append(entry)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
