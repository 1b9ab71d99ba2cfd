"""Typed configuration: pydantic section models, YAML loading, ``key.sub=value`` overrides.

Precedence is defaults < YAML file < command-line overrides. Every section model derives from
:class:`Section` (``extra="forbid"``), so a misspelt key is an error that names the key and the
valid ones. The resolved config is written next to every checkpoint and results file with
:func:`dump_config`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from exgra.errors import ConfigError

__all__ = [
    "Section",
    "apply_overrides",
    "dump_config",
    "load_config",
    "merge_dicts",
    "parse_overrides",
    "read_yaml",
]

SectionT = TypeVar("SectionT", bound=BaseModel)


class Section(BaseModel):
    """Base of every config group: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into one clear :class:`ConfigError`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give the path of a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # e.g. a Latin-1 file from an old editor
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from exc
    except RecursionError as exc:
        raise ConfigError(f"{path} is nested too deeply to be a config file") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping of config keys, found {type(data).__name__}")
    return data


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["train.lr=2e-5", "model.name=tiny"]`` into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        # YAML 1.1 reads "1e-5" as a string; pydantic's lax mode turns it into the float field's value.
        cursor = nested
        parts = key.split(".")
        for part in parts[:-1]:
            existing = cursor.setdefault(part, {})
            if not isinstance(existing, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
            cursor = existing
        cursor[parts[-1]] = value
    return nested


def merge_dicts(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (nested mappings merge, other values replace)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def _valid_keys(model_cls: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    """Field names of the (possibly nested) model found at ``location``."""
    cls: Any = model_cls
    for part in location[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cls = annotation
        else:
            return []
    return sorted(getattr(cls, "model_fields", {}))


def _explain(exc: ValidationError, model_cls: type[BaseModel], source: str) -> ConfigError:
    lines = []
    for error in exc.errors():
        location = tuple(error["loc"])
        dotted = ".".join(str(p) for p in location)
        if error["type"] == "extra_forbidden":
            valid = _valid_keys(model_cls, location)
            close = difflib.get_close_matches(str(location[-1]), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"unknown config key '{dotted}'{hint}; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"config key '{dotted}': {error['msg']} (got {error.get('input')!r})")
    return ConfigError(f"invalid configuration in {source}: " + "; ".join(lines))


def validate_config(model_cls: type[SectionT], data: Mapping[str, Any], source: str = "config") -> SectionT:
    """Validate a plain mapping into ``model_cls`` with a user-readable error."""
    try:
        return model_cls.model_validate(dict(data))
    except ValidationError as exc:
        raise _explain(exc, model_cls, source) from None


def apply_overrides(config: SectionT, overrides: Iterable[str]) -> SectionT:
    """Return a copy of ``config`` with ``key.sub=value`` overrides applied and re-validated."""
    data = merge_dicts(config.model_dump(mode="json"), parse_overrides(overrides))
    return validate_config(type(config), data, "command-line overrides")


def load_config(
    model_cls: type[SectionT],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> SectionT:
    """Defaults < ``base`` (a preset) < YAML file < overrides, validated once."""
    data: dict[str, Any] = dict(base or {})
    source = "defaults"
    if path is not None:
        data = merge_dicts(data, read_yaml(path))
        source = str(path)
    overrides = list(overrides)
    if overrides:
        data = merge_dicts(data, parse_overrides(overrides))
        source = f"{source} with overrides {' '.join(overrides)}"
    return validate_config(model_cls, data, source)


def dump_config(config: BaseModel, path: str | Path | None = None) -> str:
    """Serialise a resolved config to YAML; also write it to ``path`` when given."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if path is not None:
        from exgra.io import write_text_atomic

        write_text_atomic(path, text)
    return text
