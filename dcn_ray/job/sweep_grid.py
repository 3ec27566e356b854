"""``sweep.grid``: a grid over any job key, crossed with ``sweep.kernels`` (the values of ``model.kernels``, a
DCN's key) and the seeds; a configuration's ``settings`` are flat job keys, and :func:`applied` makes a trial's job.

A grid maps job keys (any key ``--set`` accepts, except the sweep's own settings, ``name``,
``tracking.*`` and ``train.seed``, whose axis is ``sweep.seeds``) to lists of values. Every
combination of the values is a configuration; a DCN configuration runs once per triple of
``sweep.kernels``, a configuration of another family (``model.family: unet``) once, as kernels are
not its parameter. Each configuration then runs once per seed. Every combination is checked as the
job it makes, so a bad value is refused before anything runs, naming its key.

Keys joined by commas vary together (one axis, not crossed): ``"model.family,model.width":
[[dcn, 8], [unet, 6]]`` compares a DCN of width 8 with a U-Net of width 6 (matched parameter counts).

Follow-up rounds (``sweep.followup``) change the kernels of one DCN configuration and compare them
with matched controls; they are refused together with a grid (one clear line): a round's reference,
controls and verdict would be ambiguous across the other axes, and across families meaningless.
Nothing here imports torch.

>>> from dcn_ray.job.config import job_from_dict
>>> job = job_from_dict({"data": {"images": "i.tif", "labels": "l.tif"}, "sweep": {"kernels": [[4, 8, 16], [2, 8, 16]],
...     "grid": {"model.family": ["dcn", "unet"], "train.lr": [0.001, 0.003]}}})
>>> [variant.name for variant in variants(job)]  # doctest: +NORMALIZE_WHITESPACE
['4-8-16_train.lr=0.001', '2-8-16_train.lr=0.001', '4-8-16_train.lr=0.003', '2-8-16_train.lr=0.003',
 'unet_train.lr=0.001', 'unet_train.lr=0.003']
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dcn_ray.errors import InputError
from dcn_ray.job.config import JobConfig, job_from_dict, kernels_of
from dcn_ray.job.model_config import only_its_own
from dcn_ray.kernels import REFERENCE, Kernels, kernels_text
from dcn_ray.models import FAMILIES, get

#: Keys a grid may not vary: the sweep's own settings, its name and tracking, and the seed (sweep.seeds).
FIXED_KEYS = ("name", "train.seed")
FIXED_PREFIXES = ("sweep.", "tracking.")
#: The most configurations a grid may make (before kernels and seeds).
MAX_COMBINATIONS = 10_000
#: The most trials a sweep may hold: configurations x kernels x seeds.
MAX_TRIALS = 100_000
#: The longest text of one grid value in a configuration's name (a run name, a folder name).
LONGEST_VALUE = 64

Params = tuple[tuple[str, Any], ...]


def plain(value: Any) -> Any:
    """A grid value made hashable: lists become tuples (recursively)."""
    return tuple(plain(v) for v in value) if isinstance(value, list | tuple) else value


def value_text(value: Any) -> str:
    """``0.001``, ``unet``, ``1-0-0`` (a list): how a value is written in a configuration's name."""
    if isinstance(value, tuple | list):
        return "-".join(value_text(v) for v in value)
    if isinstance(value, float):  # 0.0010000001 is "0.001" too: variants() refuses two configurations with one name
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


#: The family of a configuration: its name starts with it (``unet``), or with its kernels (a DCN).
FAMILY_KEY = "model.family"
#: The DCN's kernels: a configuration's name starts with them (``4-8-16``), not ``model.kernels=4-8-16``.
KERNELS_KEY = "model.kernels"
#: The job key of a sham control's re-drawn branches: named ``4-8-16~sham-F3``, not ``..._model.redraw=F3``.
REDRAW_KEY = "model.redraw"


def config_name(family: str, kernels: Kernels | None, params: Params) -> str:
    """``4-8-16`` (a DCN), ``unet`` (another family), with the varied values: ``unet_train.lr=0.001``;
    a sham control (``model.redraw``): ``4-8-16~sham-F3``."""
    head = kernels_text(kernels) if kernels is not None else family
    name = "_".join([head, *(f"{key}={value_text(value)}" for key, value in params if key != REDRAW_KEY)])
    redraw = dict(params).get(REDRAW_KEY)
    return f"{name}~sham-{value_text(redraw)}" if redraw else name


@dataclass(frozen=True)
class Variant:
    """One configuration of a sweep (before seeds): the family, its kernels (DCN) and the varied values."""

    family: str
    kernels: Kernels | None
    #: The grid's values of this configuration in the grid's key order, ``model.family`` excluded.
    params: Params = ()

    @property
    def name(self) -> str:
        return config_name(self.family, self.kernels, self.params)

    @property
    def settings(self) -> dict[str, Any]:
        """The configuration as flat job keys: ``{"model.family": "dcn", "model.kernels": (4, 8, 16), "train.lr": ...}``."""
        return dict(configuration_keys(self.family, self.kernels, self.params))


def configuration_keys(family: str, kernels: Kernels | None, params: Params) -> Params:
    """A configuration as flat job keys in their one order: ``model.family``, ``model.kernels`` (a family
    with kernels), then the varied values."""
    return ((FAMILY_KEY, family), *(((KERNELS_KEY, kernels),) if kernels is not None else ()), *params)


def parent_params(job: JobConfig, configurations: Sequence[Variant]) -> dict[str, Any]:
    """The sweep's settings as its parent run's params, less the keys its trials each set their own (the
    kernels, the grid's and the search space's keys, a varied family): the job's own value there would
    read as every trial's. ``sweep.kernels``, ``sweep.grid.*`` and ``sweep.search.*`` say what varies."""
    varied = {KERNELS_KEY, *(key for c in configurations for key, _ in c.params), *job.sweep.search.space}
    if len({c.family for c in configurations}) > 1:
        varied.add(FAMILY_KEY)
    return {key: value for key, value in job.flat().items() if key not in varied}


def with_params(job: JobConfig, params: Mapping[str, Any] | Params, family: str | None = None) -> JobConfig:
    """``job`` with the values ``params`` (and ``model.family``) set, its grid emptied; validated."""
    raw = job.to_dict()
    raw["sweep"]["grid"] = {}
    return _built(raw, tuple(dict(params).items()), family if family is not None else job.model.family)


def linked_keys(axis: str) -> list[str]:
    """The job keys of one grid axis: ``"train.lr"`` -> ``["train.lr"]``; ``"a,b"`` -> ``["a", "b"]`` (linked)."""
    return [key.strip() for key in axis.split(",")]


def axis_values(axis: str, value: Any) -> list[tuple[str, Any]]:
    """The (key, value) pairs one value of a grid axis sets (a linked axis: one value per key)."""
    keys = linked_keys(axis)
    return list(zip(keys, value)) if len(keys) > 1 else [(axis, value)]


def check_grid(job: JobConfig) -> None:
    """Refuse a grid that names an unknown or fixed key, lists no value or one twice, or combines with follow-ups."""
    families = {f"model.{key}" for family in FAMILIES.values() for key in family.keys}
    known = {k for k in {*JobConfig().flat(), *job.flat(), *families} if not k.startswith("sweep.grid.")}
    seen: set[str] = set()
    for axis, values in job.sweep.grid.items():
        keys = linked_keys(axis)
        for key in keys:
            if key in FIXED_KEYS or key.startswith(FIXED_PREFIXES):
                where = "sweep.seeds" if key == "train.seed" else "a separate sweep"
                raise InputError(f"sweep.grid: {key} cannot be varied in a grid (use {where})")
            if key not in known:
                raise InputError(f"sweep.grid: unknown job key '{key}'")
            if key in seen:
                raise InputError(f"sweep.grid: {key} is varied twice")
            seen.add(key)
        if not values:
            raise InputError(f"sweep.grid.{axis} must list at least one value")
        if len(keys) > 1 and not all(isinstance(v, list | tuple) and len(v) == len(keys) for v in values):
            raise InputError(
                f"sweep.grid.{axis} varies {len(keys)} keys together: each value must be a list of {len(keys)}"
            )
        for value in values:
            _check_value(axis, value)
        if len({plain(v) for v in values}) != len(values):
            raise InputError(f"sweep.grid.{axis} lists a value twice: {list(values)}")
        if len(keys) == 1 and keys[0] != "model.family":  # each value alone, as the job reads it: 0.001 is 1e-3
            _check_alone(job, axis, values)
    if KERNELS_KEY in seen and kernels_of(job) != [tuple(getattr(job.model, "kernels", REFERENCE))]:
        raise InputError(
            "sweep.grid varies model.kernels and sweep.kernels lists other kernels: give the kernels in one of them"
        )
    if job.sweep.grid and job.sweep.followup.enabled:
        raise InputError(
            "sweep.followup.enabled cannot be combined with sweep.grid: follow-up rounds change the kernels of one "
            "DCN configuration (run the grid and the follow-ups as two sweeps)"
        )
    if job.sweep.followup.enabled and not get(job.model.family).branches:
        raise InputError(
            f"sweep.followup.enabled needs the DCN's branches F1-F3; model.family is {job.model.family}: "
            "turn the follow-ups off (--set sweep.followup.enabled=false)"
        )
    count = 1
    for values in job.sweep.grid.values():
        count *= len(values)
    if count > MAX_COMBINATIONS:
        raise InputError(f"sweep.grid makes {count} combinations; at most {MAX_COMBINATIONS}")
    trials = count * max(1, len(kernels_of(job))) * len(job.seeds)  # an upper bound (families without kernels run once)
    if trials > MAX_TRIALS:
        raise InputError(
            f"the sweep would run up to {trials} trials ({count} configuration(s) x {len(kernels_of(job))} kernel "
            f"triple(s) x {len(job.seeds)} seed(s)); at most {MAX_TRIALS}"
        )


def _check_value(axis: str, value: Any) -> None:
    """A grid value is a number, a string, a boolean or a list of them, and names a configuration safely."""
    if _holds_mapping(value):
        raise InputError(
            f"sweep.grid.{axis}: the value {value!r} is a mapping; a grid varies single keys "
            f"(e.g. {linked_keys(axis)[0]}.KEY: [...])"
        )
    text = value_text(plain(value))
    if len(text) > LONGEST_VALUE or not text.isascii() or not text.isprintable() or any(c in text for c in "/\\"):
        shown = text if len(text) <= LONGEST_VALUE else text[:LONGEST_VALUE] + "..."
        raise InputError(
            f"sweep.grid.{axis}: the value {shown!r} cannot be part of a configuration's name (a run and folder "
            f"name): plain ASCII without / or \\, at most {LONGEST_VALUE} characters"
        )


def _check_alone(job: JobConfig, key: str, values: Sequence[Any]) -> None:
    """Each value of the single-key axis ``key`` set alone in ``job``: valid, and no two read the same."""
    base = job.to_dict()
    base["sweep"]["grid"] = {}
    read: dict[Any, Any] = {}
    for value in values:
        try:
            built = _built(base, ((key, plain(value)),), job.model.family)
        except InputError as error:
            raise InputError(f"sweep.grid ({key}={value_text(plain(value))}): {error}") from None
        seen = plain(built.flat().get(key, value))
        if seen in read:
            raise InputError(
                f"sweep.grid.{key} lists one value twice: {read[seen]!r} and {value!r} are both {value_text(seen)}"
            )
        read[seen] = value


def _holds_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, list | tuple) and any(_holds_mapping(v) for v in value))


def variants(job: JobConfig) -> list[Variant]:
    """Every configuration of the job, grid values (in the grid's order) outermost, kernels innermost.

    Expanded once per command (:func:`dcn_ray.job.job_file.load_sweep`) and passed along. Each value is checked alone as the job it makes (:func:`check_grid`);
    a grid of at most FULL_CHECK combinations also has each combination checked as its whole job
    (InputError naming its values). Two configurations with one name are refused."""
    check_grid(job)
    axes = list(job.sweep.grid)
    count = math.prod(len(job.sweep.grid[a]) for a in axes)
    base = job.to_dict()
    base["sweep"]["grid"] = {}
    found: list[Variant] = []
    names: dict[str, str] = {}
    for combination in itertools.product(*(job.sweep.grid[a] for a in axes)):
        values = dict(pair for axis, value in zip(axes, combination) for pair in axis_values(axis, plain(value)))
        family = str(values.pop("model.family", job.model.family))
        kernels = values.pop(KERNELS_KEY, None)  # a grid over model.kernels: its values, as sweep.kernels lists them
        params: Params = tuple(values.items())
        shown = ", ".join(f"{k}={value_text(v)}" for a, c in zip(axes, combination) for k, v in axis_values(a, c))
        if count <= FULL_CHECK:
            try:
                _built(
                    base, params + (((KERNELS_KEY, kernels),) if kernels and get(family).uses_kernels else ()), family
                )
            except InputError as error:
                raise InputError(f"sweep.grid ({shown}): {error}") from None
        if not get(family).uses_kernels:
            axis = [None]
        else:
            axis = [tuple(kernels)] if kernels is not None else kernels_of(job)
        for kernel in axis:
            variant = Variant(family, kernel, params)
            if variant.name in names:
                if kernels is not None and kernel is None:  # a family without kernels, crossed with model.kernels: once
                    continue
                raise InputError(
                    f"sweep.grid: ({names[variant.name]}) and ({shown}) would both be named {variant.name!r}; "
                    "give values that differ in their text"
                )
            names[variant.name] = shown
            found.append(variant)
    return found


#: Grids of at most this many combinations have every combination checked as its whole job.
FULL_CHECK = 1000


def _built(base: dict[str, Any], params: Params, family: str) -> JobConfig:
    """The job of ``base`` (a job's dict, its grid emptied) with ``params`` and ``family`` set; validated."""
    raw = copy.deepcopy(base)
    values = {**dict(params), "model.family": family}
    raw["model"] = only_its_own({**raw["model"], "family": family})  # the keys kept for a grid's other families go
    for key, value in values.items():
        node = raw
        *sections, last = key.split(".")
        for section in sections:
            if node.get(section) is None:  # data.synthetic: a section that is off (None)
                node[section] = {}
            node = node[section]
        node[last] = list(value) if isinstance(value, tuple) else value
    return job_from_dict(raw)


def applied(job: JobConfig, settings: Mapping[str, Any]) -> JobConfig:
    """The job as one trial trains it: a trial's settings (flat job keys: ``model.family``,
    ``model.kernels``, ``train.seed``, the varied values) set, its grid emptied; validated."""
    values = dict(settings)
    seed = values.pop("train.seed", job.train.seed)
    family = str(values.pop(FAMILY_KEY, job.model.family))
    if family == job.model.family and set(values) <= {KERNELS_KEY}:  # kernels and seed alone: no round trip
        kernels = values.get(KERNELS_KEY)
        model = job.model if kernels is None else job.model.with_keys(kernels=tuple(kernels))
        varied = dataclasses.replace(job, model=model)
    else:
        varied = with_params(job, tuple(values.items()), family)
    return dataclasses.replace(varied, train=dataclasses.replace(varied.train, seed=seed))


def trial_job(job: JobConfig, family: str, params: Params | Sequence[tuple[str, Any]], seed: int) -> JobConfig:
    """The job as one trial trains it: its family, the grid's values of its configuration and its seed set."""
    return applied(job, {FAMILY_KEY: family, **dict(params), "train.seed": seed})
