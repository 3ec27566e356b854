"""The ``model`` section of a job: the family and that family's own parameters.

The job file keeps one flat ``model`` section (``family``, ``width``, ``depth``...); each key belongs
to the families whose parameter dataclass has it (:attr:`dcn_ray.models.Family.params`). A key of
another family is refused by name (``model.depth applies to the U-Net only, not to dcn``), unless
``sweep.grid`` varies ``model.family`` over a family that reads it (that family's trials take it,
the others leave it: :func:`dcn_ray.job.sweep_grid.with_params`) or it holds that family's default,
which changes nothing (``model.branch_noise: [0, 0, 0]`` for a U-Net). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from dcn_ray.errors import InputError
from dcn_ray.job.typed import build, plain
from dcn_ray.models import DEFAULT_FAMILY, FAMILIES

_FIELDS = ("family", "params", "others", "context")

#: The largest ``model.context``: 2 * 8 + 1 = 17 slices, far past what anisotropic EM uses (1 or 2).
MAX_CONTEXT = 8


@dataclass(frozen=True, init=False)
class ModelConfig:
    """The family (:data:`dcn_ray.models.FAMILIES`, the DCN by default) and its parameters.

    Its keys read as attributes (``job.model.width``): the family's, then those kept for a grid's other
    families (``others``). ``ModelConfig(family="unet", depth=3)`` takes the keys themselves too."""

    family: str
    #: An instance of the family's parameter dataclass (its defaults when not given).
    params: Any
    #: Keys of other families, kept for the configurations of a grid over ``model.family``.
    others: tuple[tuple[str, Any], ...]
    #: Serial-section context N (every family): the network reads slices z-N..z+N as 2N + 1 input
    #: channels and predicts slice z (:mod:`dcn_ray.core.context`); 0 reads slice z alone.
    context: int

    def __init__(
        self,
        family: str = DEFAULT_FAMILY,
        params: Any = None,
        others: tuple[tuple[str, Any], ...] = (),
        context: int = 0,
        **values: Any,
    ) -> None:
        entry = FAMILIES[family]
        unknown = [key for key in values if not any(key in other.keys for other in FAMILIES.values())]
        if unknown or (params is not None and values):
            raise TypeError(f"ModelConfig got keys {unknown or list(values)} beside its family's parameters")
        if params is None:
            params = entry.params(**{key: value for key, value in values.items() if key in entry.keys})
        foreign = tuple((key, value) for key, value in values.items() if key not in entry.keys)
        object.__setattr__(self, "family", family)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "others", tuple(others) + foreign)
        object.__setattr__(self, "context", context)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in _FIELDS:
            raise AttributeError(name)
        params = self.__dict__.get("params")
        if params is not None and name in {f.name for f in dataclasses.fields(params)}:
            return getattr(params, name)
        for key, value in self.__dict__.get("others", ()):
            if key == name:
                return value
        raise AttributeError(f"model.{name} is not a key of the {self.__dict__.get('family')} family")

    @classmethod
    def from_raw(cls, raw: Any, prefix: str = "model") -> ModelConfig:
        """The section as a job file writes it (:func:`model_from_raw`)."""
        return model_from_raw(raw, prefix)

    def with_keys(self, **values: Any) -> ModelConfig:
        """This section with some of its family's keys set (``with_keys(kernels=(2, 8, 16))``), validated."""
        try:
            params = dataclasses.replace(self.params, **values)
        except TypeError:
            raise ValueError(f"{sorted(values)} are not all keys of the {self.family} family") from None
        return ModelConfig(self.family, params, self.others, self.context)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples), as a job file or a checkpoint holds it: the family, its keys, the others'."""
        own = {key: plain(value) for key, value in dataclasses.asdict(self.params).items()}
        others = {key: plain(value) for key, value in self.others}
        return {"family": self.family, **own, **others, "context": self.context}


def model_from_raw(raw: Any, prefix: str = "model") -> ModelConfig:
    """The ``model`` section of a job file, typed: its family's keys through the family's dataclass."""
    if not isinstance(raw, Mapping):
        raise InputError(f"{prefix} must be a mapping of keys, got {raw!r}")
    family = raw.get("family", DEFAULT_FAMILY)
    if not isinstance(family, str) or family not in FAMILIES:
        raise InputError(f"model.family must be one of {', '.join(FAMILIES)}, got {family!r}")
    params_type = FAMILIES[family].params
    own_keys = {f.name for f in dataclasses.fields(params_type)}
    known = {key for entry in FAMILIES.values() for key in entry.keys} | {"family", "context"}
    for key in raw:
        if key not in known:
            raise InputError(f"unknown job key '{prefix}.{key}' (known keys here: {', '.join(sorted(known))})")
    own = {key: value for key, value in raw.items() if key in own_keys}
    try:
        params = build(params_type, own, prefix)
    except ValueError as error:
        raise InputError(str(error)) from None
    others = tuple(
        (key, value) for key, value in raw.items() if key not in own_keys and key not in ("family", "context")
    )
    context = raw.get("context", 0)
    if isinstance(context, bool) or not isinstance(context, int) or not 0 <= context <= MAX_CONTEXT:
        raise InputError(
            f"{prefix}.context must be an integer from 0 to {MAX_CONTEXT} (neighbouring slices on each side), "
            f"got {context!r}"
        )
    return ModelConfig(family, params, tuple((key, _typed(key, value, prefix)) for key, value in others), context)


def _typed(key: str, value: Any, prefix: str) -> Any:
    """Another family's key, typed by the first family that reads it (a value a grid's trials will take)."""
    owner = next(entry for entry in FAMILIES.values() if key in entry.keys)
    try:
        return getattr(build(owner.params, {key: value}, prefix), key)
    except ValueError as error:
        raise InputError(str(error)) from None


def _is_default(key: str, value: Any) -> bool:
    """Whether another family's key holds its default: it changes nothing (an older record, a grid's zeros)."""
    defaults = [getattr(entry.params(), key) for entry in FAMILIES.values() if key in entry.keys]
    return any(plain(value) == plain(default) for default in defaults)


def owners(key: str) -> list[str]:
    """The titles of the families that read ``model.<key>``."""
    return [entry.title for entry in FAMILIES.values() if key in entry.keys]


def validate_model(
    model: ModelConfig, need: Callable[[bool, str], None], *, crop: int, grid_families: Collection[str] = ()
) -> None:
    """Check that every key of another family is for a family of the grid, and that ``train.crop`` suits the model."""
    for key, value in model.others:
        readers = [name for name in grid_families if name in FAMILIES and key in FAMILIES[name].keys]
        need(
            bool(readers) or _is_default(key, value),
            f"model.{key} applies to the {' and the '.join(owners(key))} only, not to {model.family}",
        )
    need(
        not isinstance(model.context, bool) and isinstance(model.context, int) and 0 <= model.context <= MAX_CONTEXT,
        f"model.context must be an integer from 0 to {MAX_CONTEXT}, got {model.context!r}",
    )
    family = FAMILIES[model.family]
    multiple = size_multiple(model)  # 8 for the DCN (train.crop's own rule), 2^depth for a U-Net
    name = family.title if family.uses_kernels else family.describe(model.to_dict())  # kernels come per trial
    need(crop % multiple == 0, f"train.crop={crop} must be a multiple of {multiple} for a {name}")


def size_multiple(model: ModelConfig) -> int:
    """The multiple the input sides of this section's network must have (its family's, from the registry)."""
    return FAMILIES[model.family].multiple(model.to_dict())


def grid_families(grid: Mapping[str, Any]) -> set[str]:
    """The families a grid's ``model.family`` axis (alone or linked: ``"model.family,model.width"``) names."""
    found: set[str] = set()
    for axis, values in grid.items():
        keys = [key.strip() for key in axis.split(",")]
        if "model.family" in keys and isinstance(values, list | tuple):
            index = keys.index("model.family")
            for value in values:
                picked = value[index] if len(keys) > 1 and isinstance(value, list | tuple) else value
                found.add(str(picked))
    return found


def only_its_own(model: Mapping[str, Any], families: Collection[str] = ()) -> dict[str, Any]:
    """A ``model`` mapping less the keys that neither its family nor ``families`` read (a grid's trial
    keeps its family's; a record written before families declared their keys held every family's)."""
    named = {model.get("family", DEFAULT_FAMILY), *families}
    keys = {key for name in named if name in FAMILIES for key in FAMILIES[name].keys}
    return {key: value for key, value in model.items() if key == "family" or key in keys or not _read_by_any(key)}


def _read_by_any(key: str) -> bool:
    return any(key in entry.keys for entry in FAMILIES.values())
