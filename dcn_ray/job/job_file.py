"""Job files: read the YAML, apply ``--set key=value`` overrides, resolve data paths.

Only YAML parsing lives here; the typed build and validation is :func:`dcn_ray.job.config.job_from_dict`.
Nothing here imports Ray, MLflow or torch, so the CLI can refuse a bad job file at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dcn_ray.errors import InputError, first_line
from dcn_ray.io.paths import input_file
from dcn_ray.job.config import JobConfig, job_from_dict
from dcn_ray.job.search_space import check_search
from dcn_ray.job.strict_yaml import load_yaml, yaml_problem
from dcn_ray.job.sweep_grid import Variant, variants


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a YAML job file, apply ``key=value`` overrides, validate, resolve data paths.

    Data paths written in the job file are relative to the job file; paths given
    with ``--set`` are relative to the working directory.
    """
    return load_sweep(path, overrides)[0]


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> tuple[JobConfig, list[Variant]]:
    """:func:`load_job`, with the configurations of its grid: expanded once, here, and passed along
    (the checks, the dry run's listing and the planner take them)."""
    raw = read_job_file(path)
    for override in overrides:
        key, value = parse_override(override)
        if key in ("data.images", "data.labels") and isinstance(value, str):
            value = _absolute(Path(value))
        _set_key(raw, key, value)
    job = job_from_dict(raw)
    configurations = variants(job)  # every combination of sweep.grid is a valid job (InputError naming it otherwise)
    check_search(job)  # every key and bound of sweep.search's space, as a grid value is
    return job, configurations


def read_job_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML job file, its relative data paths made absolute (not validated)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise InputError(f"job file not found: {path}")
    input_file(path, "job file")  # a FIFO or device would block; a symlink loop is named
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"job file {path} is not readable: {first_line(error)}") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as error:
        raise InputError(f"job file {path} is not readable YAML: {yaml_problem(error)}") from None
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
        return key, load_yaml(value) if value.strip() else ""
    except yaml.YAMLError as error:
        raise InputError(f"--set {key}: value {value!r} is not valid YAML: {yaml_problem(error)}") from None


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
            data[key] = _absolute(base / value)
    return {**raw, "data": data}


def _absolute(path: Path) -> str:
    """``path`` made absolute, symlinks resolved where they can be (a loop is reported when it is read)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return str(path.absolute())
