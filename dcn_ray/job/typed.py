"""Typed reading of a job's sections: a mapping checked against a dataclass's type hints, key by key.

Every error is an :class:`~dcn_ray.errors.InputError` naming the key (``train.lr must be a number``);
unknown keys are refused naming the known ones. :func:`build` serves every section, and each model
family's parameters (:mod:`dcn_ray.job.model_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from dcn_ray.errors import InputError


def plain(value: Any) -> Any:
    """Lists for tuples, recursively: a value as YAML, JSON or MLflow params hold it."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise InputError(f"{prefix or 'job'} must be a mapping of keys, got {raw!r}")
    hints, names = fields_of(cls)
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            known = ", ".join(sorted(names))
            raise InputError(f"unknown job key '{where}' (known keys here: {known})")
    values = {key: coerce(hints[key], value, f"{prefix}.{key}" if prefix else key) for key, value in raw.items()}
    return cls(**values)


@functools.cache
def fields_of(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A section's type hints and field names, resolved once (a grid builds thousands of jobs)."""
    return typing.get_type_hints(cls), frozenset(f.name for f in dataclasses.fields(cls))


def coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(option, value, key)
            except InputError as error:
                errors.append(error)
        raise errors[0] if len(errors) == 1 else InputError(f"{key} has the wrong type: got {value!r}")
    if hasattr(hint, "from_raw"):  # a section that reads itself (sweep.search: dotted space keys; model: its family's)
        return hint.from_raw(value, key)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin is dict:  # sweep.grid: job keys -> lists of plain values (checked in dcn_ray.job.sweep_grid)
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, list | tuple) for k, v in value.items()
        ):
            raise InputError(f"{key} must map job keys to lists of values, got {value!r}")
        return {k: tuple(v) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{key} must be a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InputError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")
