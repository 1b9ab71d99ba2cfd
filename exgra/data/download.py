"""Registry of the released ExGra-Med checkpoints and data, fetched with ``huggingface_hub``.

Downloads resume where they stopped, follow ``HF_ENDPOINT`` (mirrors), ``HF_HUB_OFFLINE`` and
``HF_TOKEN``; every failure becomes one clear line.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from exgra.config import Section
from exgra.errors import ExgraError
from exgra.outputs import describe_path, read_marker, write_marker

MERGE_LICENSE = "CC BY-NC 4.0"


@dataclass(frozen=True)
class HubEntry:
    name: str
    repo_id: str
    repo_type: str  # "model" or "dataset"
    kind: str
    license: str
    description: str
    allow_patterns: tuple[str, ...] | None = None


def _checkpoint(name: str, description: str) -> HubEntry:
    return HubEntry(name, f"MERGE-Group/{name}", "model", "checkpoint", MERGE_LICENSE, description)


def _dataset(name: str, repo: str, description: str) -> HubEntry:
    return HubEntry(name, f"MERGE-Group/{repo}", "dataset", "data", MERGE_LICENSE, description)


REGISTRY: dict[str, HubEntry] = {
    entry.name: entry
    for entry in (
        _checkpoint("llava-med-10", "LLaVA-Med 7B pre-trained on 10% of the data (baseline)"),
        _checkpoint("llava-med-40", "LLaVA-Med 7B pre-trained on 40% of the data (baseline)"),
        _checkpoint("exgra-med-10", "ExGra-Med 7B, multi-graph alignment, 10% of the pre-training data"),
        _checkpoint("exgra-med-40", "ExGra-Med 7B, multi-graph alignment, 40% of the pre-training data"),
        _checkpoint("exgra-med", "ExGra-Med 7B, multi-graph alignment, 100% of the pre-training data"),
        _checkpoint("exgra-med-dci", "ExGra-Med 7B with the dense connector (DCI), 100% data"),
        _checkpoint("exgra-med-dci-vqa-rad", "ExGra-Med DCI fine-tuned on VQA-RAD"),
        _checkpoint("exgra-med-dci-slake", "ExGra-Med DCI fine-tuned on SLAKE"),
        _checkpoint("exgra-med-dci-pathvqa", "ExGra-Med DCI fine-tuned on PathVQA"),
        _dataset("vqa-rad", "VQA-RAD", "VQA-RAD train/val/test JSONs with answer options"),
        _dataset("slake", "SLAKE", "SLAKE (English) train/val/test JSONs with answer options"),
        _dataset("pathvqa", "PATH-VQA", "PathVQA train/val/test JSONs"),
        _dataset(
            "extended-caption-gpt",
            "Extended-Caption-GPT",
            "Pre-training JSONs with LLM-extended captions (conversations_long)",
        ),
        HubEntry(
            "llava-med-v1.5-mistral-7b",
            "microsoft/llava-med-v1.5-mistral-7b",
            "model",
            "checkpoint",
            "Microsoft Research License (research use)",
            "LLaVA-Med v1.5: Mistral-7B + CLIP ViT-L/14-336 + mlp2x_gelu; `exgra convert` it before use",
            allow_patterns=("*.json", "*.model", "*.txt", "*.safetensors"),
        ),
        HubEntry(
            "clip-vit-large-patch14-336",
            "openai/clip-vit-large-patch14-336",
            "model",
            "vision tower",
            "MIT",
            "CLIP ViT-L/14 at 336 px, the vision tower of LLaVA-Med v1.5 (safetensors only)",
            allow_patterns=("*.json", "*.txt", "*.safetensors"),
        ),
        HubEntry(
            "clip-vit-large-patch14",
            "openai/clip-vit-large-patch14",
            "model",
            "vision tower",
            "MIT",
            "CLIP ViT-L/14 vision tower used by every released checkpoint (safetensors only)",
            allow_patterns=("*.json", "*.txt", "*.safetensors"),
        ),
    )
}


# Earlier spellings, still accepted (not listed): the data set is `pathvqa` everywhere else in exgra.
ALIASES: dict[str, str] = {"path-vqa": "pathvqa"}


class DownloadConfig(Section):
    """What ``exgra download`` fetches (validated): registry names or repo ids, into ``directory/<name>``."""

    names: list[str] = Field(min_length=1)
    directory: Path = Path("checkpoints")
    revision: str | None = None
    max_workers: int = Field(8, ge=1)


def list_entries() -> list[HubEntry]:
    return list(REGISTRY.values())


def resolve_entry(name: str) -> HubEntry:
    """A registry entry by short name or full repo id; unknown names get the closest matches."""
    name = ALIASES.get(name, name)
    if name in REGISTRY:
        return REGISTRY[name]
    for entry in REGISTRY.values():
        if name.lower() in (entry.repo_id.lower(), entry.name.lower()):
            return entry
    candidates = list(REGISTRY) + [e.repo_id for e in REGISTRY.values()]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ExgraError(f"unknown download name '{name}'{hint} (exgra download --list shows all)")


def download(
    name: str,
    directory: str | Path,
    revision: str | None = None,
    token: str | None = None,
    max_workers: int = 8,
) -> Path:
    """Fetch one registry entry into ``directory/<name>``; an interrupted download resumes on rerun."""
    entry = resolve_entry(name)
    target = Path(directory) / entry.name
    for folder in (Path(directory), *Path(directory).parents):
        if folder.exists() and not folder.is_dir():
            raise ExgraError(f"cannot write {entry.name} to {target}: {folder} is a file, not a folder")
    _check_target(target)
    path = _snapshot(entry, target, revision, token, max_workers)
    # Marked only once complete: huggingface_hub treats any non-empty folder as a finished download
    # when the hub cannot be reached, so an early marker would hide a failed first download.
    write_marker(path, "download", owned=["*"])
    return path


def _check_target(target: Path) -> None:
    """Refuse a target folder holding files that are not an earlier download (changing nothing).

    A download resumes in place, so an earlier download (exgra's marker, or huggingface_hub's
    ``.cache/huggingface`` bookkeeping of an unfinished one) is fine.
    """
    if target.exists() and not target.is_dir():
        raise ExgraError(f"cannot download into {target}: it is {describe_path(target)}, not a folder")
    if target.is_dir() and any(target.iterdir()):
        marker = read_marker(target)
        earlier = (marker is not None and marker.command == "download") or (
            marker is None and (target / ".cache" / "huggingface").is_dir()
        )
        if not earlier:
            raise ExgraError(
                f"{target} already holds files that exgra download did not write; exgra never mixes a "
                "download into them: move them away or choose another --output"
            )


def _snapshot(
    entry: HubEntry, target: Path, revision: str | None, token: str | None, max_workers: int
) -> Path:
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at import: mirrors set late work
    where = f"{entry.repo_id}" + (f" at revision {revision}" if revision else "")
    try:
        path = snapshot_download(
            entry.repo_id,
            repo_type=entry.repo_type,
            revision=revision,
            local_dir=target,
            allow_patterns=list(entry.allow_patterns) if entry.allow_patterns else None,
            token=token,
            endpoint=endpoint,
            max_workers=max_workers,
        )
    except GatedRepoError as exc:
        raise ExgraError(f"{where} is gated: accept its terms on the hub and set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise ExgraError(f"{where} was not found on the hub (or is private: set HF_TOKEN)") from exc
    except RevisionNotFoundError as exc:
        raise ExgraError(f"revision '{revision}' does not exist for {entry.repo_id}") from exc
    except LocalEntryNotFoundError as exc:
        from huggingface_hub.constants import is_offline_mode

        offline = is_offline_mode()
        reason = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
        raise ExgraError(f"cannot download {where}: {reason} and it is not complete in {target}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise ExgraError(f"the hub answered HTTP {status} for {where}; try again later") from exc
    except (httpx2.HTTPError, ConnectionError, TimeoutError) as exc:
        raise ExgraError(
            f"network error while downloading {where} ({type(exc).__name__}); rerun to resume"
        ) from exc
    except OSError as exc:
        raise ExgraError(f"cannot write {entry.name} to {target}: {exc.strerror or exc}") from exc
    return Path(path)


def run_download(config: DownloadConfig, on_start: Callable[[HubEntry], None] | None = None) -> list[Path]:
    """The ``exgra download`` entry point: check every name first, then fetch each (resumable)."""
    entries = [resolve_entry(name) for name in config.names]  # every name checked before any download
    directory = config.directory
    if directory.exists() and not directory.is_dir():
        raise ExgraError(f"--output {directory} is {describe_path(directory)}; give the path of a folder")
    paths = []
    for entry in entries:
        if on_start is not None:
            on_start(entry)
        paths.append(
            download(entry.name, directory, revision=config.revision, max_workers=config.max_workers)
        )
    return paths
