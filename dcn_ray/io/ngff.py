"""Check an OME-Zarr image's ``multiscales`` metadata against the NGFF 0.4 / 0.5 schema.

Each required field is checked before ome-zarr-py reads it, so a malformed image is refused
with one line naming the field (``multiscales[0].datasets[1].coordinateTransformations[0].scale``)
rather than with the reader's IndexError or a count of zero levels.
"""

from __future__ import annotations

from typing import Any

from dcn_ray.errors import InputError

_AXIS_TYPES = ("space", "time", "channel")


def check_multiscales(attrs: dict[str, Any], source: str) -> None:
    """InputError naming the first field of ``attrs["multiscales"]`` the schema does not allow."""
    problem = _problem(attrs.get("multiscales"))
    if problem is not None:
        raise InputError(f"{source}: invalid OME-Zarr metadata: {problem}")


def _problem(multiscales: Any) -> str | None:
    if not isinstance(multiscales, list):
        return f"multiscales must be a list of images, not {_kind(multiscales)}"
    if not multiscales:
        return "multiscales is an empty list (no image)"
    image = multiscales[0]
    if not isinstance(image, dict):
        return f"multiscales[0] must be an object, not {_kind(image)}"
    axes = image.get("axes")
    if not isinstance(axes, list) or not 2 <= len(axes) <= 5:
        return f"multiscales[0].axes must be a list of 2 to 5 axes, not {_kind(axes)}"
    for index, axis in enumerate(axes):
        field = f"multiscales[0].axes[{index}]"
        if not isinstance(axis, dict) or not isinstance(axis.get("name"), str):
            return f"{field} must be an object with a string 'name'"
        if "type" in axis and not isinstance(axis["type"], str):
            return f"{field}.type must be a string ({', '.join(_AXIS_TYPES)}, ...)"
    names = [axis["name"] for axis in axes]
    if len(set(names)) != len(names):
        return f"multiscales[0].axes names {names} are not unique"
    datasets = image.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        return f"multiscales[0].datasets must be a non-empty list of levels, not {_kind(datasets)}"
    for index, dataset in enumerate(datasets):
        field = f"multiscales[0].datasets[{index}]"
        if not isinstance(dataset, dict) or not isinstance(dataset.get("path"), str) or not dataset["path"]:
            return f"{field} must be an object with a non-empty string 'path'"
        problem = _transforms(dataset.get("coordinateTransformations"), f"{field}.coordinateTransformations", axes)
        if problem is not None:
            return problem
    if "coordinateTransformations" in image:
        return _transforms(image["coordinateTransformations"], "multiscales[0].coordinateTransformations", axes)
    return None


def _transforms(transforms: Any, field: str, axes: list) -> str | None:
    """A list holding one scale, then at most one translation, each of one number per axis."""
    if not isinstance(transforms, list) or not transforms:
        return f"{field} must be a non-empty list holding a scale, not {_kind(transforms)}"
    if len(transforms) > 2:
        return f"{field} holds {len(transforms)} transformations; at most a scale and a translation"
    for index, (transform, wanted) in enumerate(zip(transforms, ("scale", "translation"))):
        where = f"{field}[{index}]"
        if not isinstance(transform, dict) or transform.get("type") != wanted:
            return f"{where} must be a {wanted} transformation (type '{wanted}')"
        values = transform.get(wanted)
        if not isinstance(values, list) or len(values) != len(axes):
            count = len(values) if isinstance(values, list) else _kind(values)
            return f"{where}.{wanted} must hold one number per axis ({len(axes)}), not {count}"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return f"{where}.{wanted} must hold numbers, not {values!r:.60}"
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "missing"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)
