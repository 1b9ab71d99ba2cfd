"""Plain-text prompt files shipped with the package, loaded by name."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from exgra.errors import ExgraError


def available_prompts() -> list[str]:
    """Names (without ``.txt``) of the prompts shipped with exgra."""
    return sorted(p.name[:-4] for p in files(__name__).iterdir() if p.name.endswith(".txt"))


def load_prompt(name_or_path: str | Path) -> str:
    """Return a prompt's text: a shipped prompt by name (``extend_caption``) or a file path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".txt" and candidate.is_file():
        return candidate.read_text(encoding="utf-8")
    name = str(name_or_path).removesuffix(".txt")
    resource = files(__name__) / f"{name}.txt"
    if not resource.is_file():
        raise ExgraError(
            f"unknown prompt '{name_or_path}': not a file and not one of {', '.join(available_prompts())}"
        )
    return resource.read_text(encoding="utf-8")
