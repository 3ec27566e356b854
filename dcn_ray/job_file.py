"""Job files: read the YAML, apply ``--set key=value`` overrides, resolve data paths.

Only YAML parsing lives here; the typed build and validation is :func:`dcn_ray.config.job_from_dict`.
Nothing here imports Ray, MLflow or torch, so the CLI can refuse a bad job file at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dcn_ray.config import JobConfig, job_from_dict
from dcn_ray.errors import InputError, first_line


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a YAML job file, apply ``key=value`` overrides, validate, resolve data paths.

    Data paths written in the job file are relative to the job file; paths given
    with ``--set`` are relative to the working directory.
    """
    raw = read_job_file(path)
    for override in overrides:
        key, value = parse_override(override)
        if key in ("data.images", "data.labels") and isinstance(value, str):
            value = str(Path(value).resolve())
        _set_key(raw, key, value)
    return job_from_dict(raw)


def read_job_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML job file, its relative data paths made absolute (not validated)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"job file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError(f"job file {path} is not readable YAML: {first_line(error)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"job file {path} must hold a mapping of keys, got {type(raw).__name__}")
    return _resolve_paths(raw, path.parent)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=40"`` -> ``("train.steps", 40)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set expects key=value, got {text!r}")
    try:
        return key, yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise InputError(f"--set {key}: value {value!r} is not valid YAML") from None


def _set_key(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for index, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"--set {dotted}: {'.'.join(parts[: index + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _resolve_paths(raw: dict, base: Path) -> dict:
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    data = dict(data)
    for key in ("images", "labels"):
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[key] = str((base / value).resolve())
    return {**raw, "data": data}
