"""Reading and writing user files with one clear error per mistake, and atomic writes.

Every input file a command reads goes through :func:`read_text` (and :func:`read_json` /
:func:`read_jsonl`), so a missing file, a folder given for a file, an empty file, bad UTF-8 or bad
JSON all end in one :class:`DataError` that names the file. Every output goes through
:func:`check_output_file` before the work starts (an existing output is refused unless
``overwrite``; a folder or a file in the way of the parent folder is named) and through
:func:`write_text_atomic` at the end (temporary name in the same folder, fsync, rename), so a crash or
Ctrl-C never leaves half a file and never destroys the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from exgra.errors import DataError, ExgraError

__all__ = [
    "check_output_dir",
    "check_output_file",
    "make_parent_dirs",
    "os_errors",
    "read_json",
    "read_jsonl",
    "read_jsonl_lines",
    "read_text",
    "staged_output_dir",
    "write_json_atomic",
    "write_text_atomic",
]


@contextmanager
def os_errors(action: str) -> Iterator[None]:
    """Turn an ``OSError`` (permission denied, disk full, read-only file system) into one :class:`ExgraError`.

    ``action`` completes the sentence "cannot ...", e.g. ``"write out/metrics.json"``.
    """
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ExgraError(f"cannot {action}: {reason}") from exc


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; ``what`` names the file in errors (``"ground-truth file"``)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; give the path of a file")
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    with os_errors(f"read {what} {path}"):
        data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; an empty file and invalid JSON are :class:`DataError` with line and column."""
    path = Path(path)
    text = read_text(path, what)
    if not text.strip():
        raise DataError(f"{what} {path} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    except RecursionError as exc:  # json gives up on very deep nesting with a bare RecursionError
        raise DataError(f"{what} {path} is nested too deeply to read") from exc


def read_jsonl_lines(
    path: str | Path, what: str = "file", required_key: str | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file of objects.

    Each object must hold ``required_key`` if given. A file without a single object is an error:
    scoring or judging nothing is never what the user meant.
    """
    path = Path(path)
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"line {number} of {what} {path} is not valid JSON ({exc.msg})") from exc
        except RecursionError as exc:
            raise DataError(f"line {number} of {what} {path} is nested too deeply to read") from exc
        if not isinstance(row, dict):
            raise DataError(f"line {number} of {what} {path} is not a JSON object")
        if required_key is not None and required_key not in row:
            raise DataError(f"line {number} of {what} {path} has no '{required_key}'")
        rows.append((number, row))
    if not rows:
        raise DataError(f"{what} {path} is empty")
    return rows


def read_jsonl(path: str | Path, what: str = "file", required_key: str | None = None) -> list[dict[str, Any]]:
    """The objects of a JSONL file (see :func:`read_jsonl_lines`)."""
    return [row for _, row in read_jsonl_lines(path, what, required_key)]


def _refuse_file_in_the_way(path: Path) -> None:
    # mkdir(parents=True) would fail with a bare FileExistsError; name the file that is in the way.
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ExgraError(f"cannot write {path}: {ancestor} is a file, not a folder")
            return


def make_parent_dirs(path: str | Path) -> None:
    """Create the folders above ``path``; a file standing where a folder must go is named in the error."""
    parent = Path(path).parent
    _refuse_file_in_the_way(Path(path))
    with os_errors(f"create the folder {parent}"):
        parent.mkdir(parents=True, exist_ok=True)


def check_output_file(path: str | Path, overwrite: bool = False, *, hint: str = "pass --overwrite") -> Path:
    """Refuse an output file before any work: an existing file (unless ``overwrite``) or a folder.

    ``hint`` finishes the refusal ("pass --overwrite", "pass --resume to continue it or ...").
    Nothing is created here, so a refused or failing command leaves the file system as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise ExgraError(f"output {path} is a folder; give the path of a file inside it")
    if path.exists() and not overwrite:
        raise ExgraError(f"{path} already exists; {hint} to replace it")
    _refuse_file_in_the_way(path)
    return path


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it into place.

    With ``overwrite=False`` an existing ``path`` is refused. The temporary file is removed when
    anything (an error, Ctrl-C) interrupts the write, and the previous ``path`` is kept intact.
    """
    path = check_output_file(path, overwrite)
    make_parent_dirs(path)
    with os_errors(f"write {path}"):
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            # mkstemp creates 0600 files; outputs are ordinary files the user's group may read.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return path


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2, overwrite: bool = True) -> Path:
    """Write ``data`` as UTF-8 JSON (non-ASCII kept) through :func:`write_text_atomic`."""
    return write_text_atomic(
        path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n", overwrite=overwrite
    )


def check_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output folder before any work: a file in its place, or (unless ``overwrite``) a
    folder that is not empty."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExgraError(f"output {path} is a file; give the path of a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ExgraError(f"{path} already exists and is not empty; pass --overwrite to replace it")
    _refuse_file_in_the_way(path)
    return path


@contextmanager
def staged_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path``; move it into place only when complete.

    Yields the (not yet existing) folder to fill. If the body fails or is interrupted, the temporary
    folder is removed and an existing ``path`` is untouched; a replaced ``path`` is removed only after
    the new folder is in place.
    """
    path = check_output_dir(path, overwrite)
    make_parent_dirs(path)
    with os_errors(f"create a temporary folder beside {path}"):
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        with os_errors(f"write {path}"):
            yield staging / "new"
            if path.exists():
                path.replace(staging / "previous")
            try:
                (staging / "new").replace(path)
            except BaseException:
                if (staging / "previous").exists():
                    (staging / "previous").replace(path)
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
