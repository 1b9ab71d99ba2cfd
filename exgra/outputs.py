"""Who owns an output: the rules every command follows before it writes, replaces or resumes anything.

Three rules (issue #12, "nothing lost"):

1. **A folder is exgra's only if exgra's marker is in it.** Every output folder a command creates gets
   :data:`MARKER_NAME`, a small JSON file naming the command and the entries it owns (names or glob
   patterns). :func:`check_output_folder` refuses a non-empty folder without the marker, a folder
   written by another command, and, even with ``--overwrite``, a folder that holds anything the marker
   does not cover; it names what it found. It changes nothing, so a refused command leaves the folder
   byte-identical. :func:`remove_owned` then removes only what the marker covers.
2. **No output may be one of the command's inputs** (:func:`check_not_inputs`): an output file that is
   an input file, or an output folder that holds an input, is refused before any work.
3. **A resumed run refuses different settings by name** (:func:`check_resume_settings`): each
   resumable command writes its resolved settings beside its output (:func:`write_settings`); a rerun
   compares them and names every setting that changed. An unreadable settings file is refused, not
   ignored.

Typical use in a command that builds a whole folder (see :func:`staged_output_folder`)::

    with staged_output_folder(output, "prepare", overwrite=overwrite, inputs={"--source": source}) as tmp:
        ...  # fill tmp; on success it replaces output and gets the marker

and in one that fills a folder over time (training)::

    state = check_output_folder(out, "train", overwrite=overwrite, resume=resume)
    if state == "owned" and overwrite:
        remove_owned(out)
    claim_folder(out, "train", owned=["config.yaml", "logs", "metrics.jsonl", "checkpoint-*", "final"])
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from exgra.errors import ExgraError

__all__ = [
    "MARKER_NAME",
    "FolderState",
    "Marker",
    "check_distinct_outputs",
    "check_not_inputs",
    "check_output_folder",
    "check_resume_settings",
    "claim_folder",
    "compare_settings",
    "describe_path",
    "foreign_entries",
    "read_marker",
    "read_settings",
    "remove_owned",
    "staged_output_folder",
    "write_marker",
    "write_settings",
]

MARKER_NAME = ".exgra-output.json"
MARKER_KIND = "exgra-output"
_SHOWN = 3

FolderState = Literal["new", "empty", "owned"]


@dataclass(frozen=True)
class Marker:
    """The content of an output folder's marker: which command wrote it and what it owns."""

    command: str
    owned: tuple[str, ...]

    def covers(self, name: str) -> bool:
        return name == MARKER_NAME or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.owned)


def describe_path(path: str | Path) -> str:
    """What is at ``path`` in words ("a file", "a folder", "nothing"), for wrong-kind errors."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link"
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return "a file"
    if path.exists():
        return "something that is neither a file nor a folder"
    return "nothing"


def read_marker(folder: str | Path) -> Marker | None:
    """The marker of ``folder``, or None when there is none (or it is not an exgra marker)."""
    path = Path(folder) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("kind") != MARKER_KIND:
        return None
    owned = data.get("owned")
    if not isinstance(data.get("command"), str) or not isinstance(owned, list):
        return None
    return Marker(data["command"], tuple(str(pattern) for pattern in owned))


def write_marker(folder: str | Path, command: str, owned: Iterable[str] | None = None) -> Path:
    """Write ``folder``'s marker; ``owned`` defaults to the entries now in ``folder`` (a finished build).

    The content is deterministic (no time stamp), so a rebuilt folder is byte-identical.
    """
    from exgra import __version__
    from exgra.io import write_json_atomic

    folder = Path(folder)
    if owned is None:
        owned = sorted(entry.name for entry in folder.iterdir() if entry.name != MARKER_NAME)
    marker = {
        "kind": MARKER_KIND,
        "command": command,
        "owned": list(owned),
        "exgra_version": __version__,
        "note": "exgra --overwrite replaces only the entries listed in 'owned'",
    }
    return write_json_atomic(folder / MARKER_NAME, marker)


def claim_folder(folder: str | Path, command: str, owned: Iterable[str]) -> Path:
    """Create ``folder`` (if needed) and mark it as ``command``'s, owning the ``owned`` names/patterns.

    Call it before writing anything else into the folder, so even a run killed at once leaves a
    folder that the next ``--resume`` or ``--overwrite`` recognises.
    """
    from exgra.io import make_parent_dirs, os_errors

    folder = Path(folder)
    make_parent_dirs(folder / MARKER_NAME)
    with os_errors(f"create the folder {folder}"):
        folder.mkdir(parents=True, exist_ok=True)
    return write_marker(folder, command, owned)


def foreign_entries(folder: str | Path, marker: Marker | None = None) -> list[str]:
    """Entries of ``folder`` (sorted names) that its marker does not cover: every entry without a marker."""
    folder = Path(folder)
    marker = marker if marker is not None else read_marker(folder)
    names = sorted(entry.name for entry in folder.iterdir())
    if marker is None:
        return names
    return [name for name in names if not marker.covers(name)]


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def check_not_inputs(
    outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None]
) -> None:
    """Refuse an output that is an input, or an output folder that holds an input (names both options).

    Keys are what the user typed (``"--output"``, ``"--answers"``); ``None`` values are skipped.
    Hard links and symbolic links to the same file count as the same file.
    """
    for out_name, out_path in outputs.items():
        if out_path is None:
            continue
        out = _resolved(Path(out_path))
        for in_name, in_path in inputs.items():
            if in_path is None:
                continue
            source = _resolved(Path(in_path))
            same = out == source
            if not same and out.exists() and source.exists():
                try:
                    same = os.path.samefile(out, source)
                except OSError:
                    same = False
            if same:
                raise ExgraError(
                    f"{out_name} {out_path} is also the input {in_name}; an output may never replace an "
                    "input: choose another path"
                )
            if source.is_relative_to(out):
                raise ExgraError(
                    f"{out_name} {out_path} holds the input {in_name} {in_path}; an output folder may never "
                    "contain the command's inputs: choose another folder"
                )


def check_distinct_outputs(outputs: Mapping[str, str | Path | None]) -> None:
    """Refuse two outputs of one command that are the same path (the second would replace the first)."""
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        key = _resolved(Path(path))
        if key in seen:
            raise ExgraError(f"{seen[key]} and {name} must be different files (both are {path})")
        seen[key] = name


def check_output_folder(
    folder: str | Path,
    command: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Mapping[str, str | Path | None] | None = None,
    option: str = "--output",
) -> FolderState:
    """Decide, changing nothing, whether ``command`` may write into ``folder``; refuse with one line if not.

    Returns ``"new"`` (nothing there), ``"empty"`` (an empty folder) or ``"owned"`` (a folder with
    ``command``'s marker and nothing else in the way, with ``overwrite`` or ``resume`` given). Refused:
    a file in its place; a non-empty folder without the marker or with another command's marker
    (always: exgra never deletes what it did not write); foreign entries beside an owned run (always);
    an owned run without ``overwrite``/``resume``; a folder holding one of ``inputs``.
    """
    folder = Path(folder)
    if inputs:
        check_not_inputs({option: folder}, inputs)
    if folder.exists() and not folder.is_dir():
        raise ExgraError(f"{option} {folder} is {describe_path(folder)}, not a folder; give a folder path")
    if not folder.exists():
        _refuse_file_above(folder)
        return "new"
    entries = sorted(entry.name for entry in folder.iterdir())
    if not entries:
        return "empty"
    marker = read_marker(folder)
    if marker is None:
        raise ExgraError(
            f"{folder} is not empty and holds no exgra {command} output (found {_examples(entries)}); "
            "exgra never replaces files it did not write: choose another folder or empty it yourself"
        )
    if marker.command != command:
        raise ExgraError(
            f"{folder} holds the output of exgra {marker.command}, not of exgra {command}; choose another "
            "folder"
        )
    foreign = foreign_entries(folder, marker)
    if foreign:
        raise ExgraError(
            f"{folder} holds files exgra {command} did not write ({_examples(foreign)}); exgra never "
            "replaces them: move them away or choose another folder"
        )
    if not (overwrite or resume):
        raise ExgraError(f"{folder} already holds an exgra {command} output; pass --overwrite to replace it")
    return "owned"


def _refuse_file_above(path: Path) -> None:
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ExgraError(f"cannot write {path}: {ancestor} is a file, not a folder")
            return


def remove_owned(folder: str | Path) -> list[str]:
    """Remove the entries of ``folder`` that its marker covers (not the marker); return their names.

    Call it only after :func:`check_output_folder` returned ``"owned"``: without a marker it removes
    nothing.
    """
    from exgra.io import os_errors

    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if entry.name == MARKER_NAME or not marker.covers(entry.name):
            continue
        with os_errors(f"remove {entry}"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        removed.append(entry.name)
    return removed


@contextmanager
def staged_output_folder(
    folder: str | Path,
    command: str,
    *,
    overwrite: bool = False,
    inputs: Mapping[str, str | Path | None] | None = None,
    option: str = "--output",
) -> Iterator[Path]:
    """Build a whole output folder under a temporary name; on success it gets the marker and replaces
    ``folder`` (which :func:`check_output_folder` has checked first, so only an exgra output of the
    same command, and nothing else, is ever replaced). A failure or Ctrl-C leaves ``folder`` untouched.
    """
    from exgra.io import staged_output_dir

    check_output_folder(folder, command, overwrite=overwrite, inputs=inputs, option=option)
    with staged_output_dir(folder, overwrite=True) as building:
        yield building
        write_marker(building, command)


# --------------------------------------------------------------------------------------------------
# The resume rule: settings recorded beside the output, compared by name on every rerun
# --------------------------------------------------------------------------------------------------


def read_settings(path: str | Path, hint: str = "pass --overwrite to start over") -> dict[str, Any]:
    """The settings recorded by an earlier run; an unreadable file is refused, not ignored."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ExgraError(f"cannot resume: the run settings {path} are unreadable ({reason}); {hint}") from exc
    if not isinstance(data, dict):
        raise ExgraError(f"cannot resume: the run settings {path} are not a JSON object; {hint}")
    return data


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume_settings(
    path: str | Path,
    current: Mapping[str, Any],
    keys: Iterable[str] | None = None,
    hint: str = "rerun with the same settings, or pass --overwrite to start over",
) -> None:
    """Refuse to resume when a setting in ``keys`` (default: every key of ``current``) differs from the
    one recorded in ``path``; the error names each setting with its old and new value. A missing file
    means there is nothing to compare (a run killed before it wrote its settings).
    """
    path = Path(path)
    if not path.exists():
        return
    compare_settings(read_settings(path), current, keys, path, hint)


def compare_settings(
    previous: Mapping[str, Any],
    current: Mapping[str, Any],
    keys: Iterable[str] | None,
    source: str | Path,
    hint: str = "rerun with the same settings, or pass --overwrite to start over",
) -> None:
    """Refuse when a setting in ``keys`` (default: every key of ``current``) differs between the run
    recorded in ``source`` (``previous``) and this one; name each with its old and new value."""
    current = json.loads(json.dumps(dict(current), default=str))  # compare as stored (paths, tuples)
    names = list(keys) if keys is not None else list(current)
    changed = [name for name in names if previous.get(name) != current.get(name)]
    if changed:
        details = "; ".join(
            f"{name} was {_shown(previous.get(name))}, now {_shown(current.get(name))}" for name in changed
        )
        raise ExgraError(f"cannot resume the run recorded in {source}: {details}; {hint}")


def write_settings(path: str | Path, settings: Mapping[str, Any]) -> Path:
    """Record a run's resolved settings beside its output (atomic JSON), for :func:`check_resume_settings`."""
    from exgra.io import write_text_atomic

    text = json.dumps(dict(settings), indent=2, ensure_ascii=False, default=str) + "\n"
    return write_text_atomic(path, text)
