"""Job configuration: frozen dataclasses, YAML job files and ``--set key=value`` overrides.

A job file is YAML whose keys mirror the dataclasses below (``train.steps``,
``sweep.resources.gpu``...). Everything is validated up front; every error is an
:class:`~dcn_ray.errors.InputError` whose message names the offending key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dcn_ray.errors import InputError
from dcn_ray.job.data_config import DataConfig
from dcn_ray.job.model_config import ModelConfig, grid_families, only_its_own, size_multiple, validate_model
from dcn_ray.job.search_config import SchedulerConfig, SearchConfig
from dcn_ray.job.train_config import TrainConfig, resolve_training, validate_train
from dcn_ray.job.typed import build, plain
from dcn_ray.kernels import REFERENCE, Kernels, kernel_problem

#: The largest synthetic stack a job may ask for (slices x size x size).
MAX_SYNTHETIC_VOXELS = 2**27


@dataclass(frozen=True)
class ResourcesConfig:
    gpu: float = 1.0
    cpu: float = 1.0


@dataclass(frozen=True)
class FollowupConfig:
    """Follow-up rounds: guided changes of the weak branch and controls matched to them."""

    enabled: bool = False
    reference: tuple[int, ...] = REFERENCE
    #: Guided follow-ups per round: the weak branch's kernel shrunk by step_size, 2 step_size, ...
    steps: int = 3
    step_size: int = 2
    #: The step as a share of the weak branch's stride (0.5: F1 4 -> 3, F2 8 -> 6, F3 16 -> 12), so that
    #: every branch gets the same change of k / stride; None: ``step_size`` kernel units.
    relative_step: float | None = None
    #: Matched controls per round (the same change of k / stride elsewhere); None: every valid one.
    controls: int | None = None
    #: Extra purely random one-branch changes per round (phase "random"; not in the comparison).
    random_controls: int = 0
    rounds: int = 1
    #: Seed of the random extras' draws (round r uses seed + r - 1); matched controls are not drawn.
    seed: int = 0
    #: Equivalence margin of the verdict (TOST): guided and controls within +-margin count as equivalent.
    margin: float = 0.005
    #: A sham control per round (phase ``sham``): the reference's kernels with the weak branch's
    #: deconvolution re-drawn (model.redraw), every seed; the verdict reports guided minus sham.
    sham: bool = True
    #: The weak branch of round 1's reference fixed in advance ("F1", "F2" or "F3"): the rule is not
    #: asked (a replication of a decision already made); None: the rule over the reference's seeds decides.
    weak: str | None = None


@dataclass(frozen=True)
class SweepConfig:
    #: The values of ``model.kernels`` the sweep runs, one configuration each (a DCN); absent: the job's
    #: ``model.kernels`` alone (:func:`job_from_dict`).
    kernels: tuple[tuple[int, ...], ...] = (REFERENCE,)
    #: Training seeds: every configuration runs once per seed. A list of seeds, or a count n
    #: (seeds 0..n-1); None: the one seed train.seed.
    seeds: tuple[int, ...] | int | None = None
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent: int | None = None
    max_failures: int = 2
    followup: FollowupConfig = field(default_factory=FollowupConfig)
    #: A grid over any job key ``--set`` accepts: ``{"train.lr": [1e-3, 3e-3], "model.family": [dcn, unet]}``,
    #: crossed with ``kernels`` (DCN only) and the seeds (:mod:`dcn_ray.job.sweep_grid`).
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: A search instead of the grid: random or optuna over a space of Tune distributions
    #: (:mod:`dcn_ray.job.search_config`; each key and bound checked by :mod:`dcn_ray.job.search_space`).
    search: SearchConfig = field(default_factory=SearchConfig)
    #: Early stopping (ASHA) on the validation headline; off by default.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass(frozen=True)
class TrackingConfig:
    #: MLflow tracking URI; None: sqlite:///mlflow.db in the working directory.
    uri: str | None = None
    #: Experiment name; None: the job name.
    experiment: str | None = None


@dataclass(frozen=True)
class JobConfig:
    name: str = "sweep"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def seeds(self) -> tuple[int, ...]:
        """The training seeds of every configuration (see SweepConfig.seeds)."""
        seeds = self.sweep.seeds
        if seeds is None:
            return (self.train.seed,)
        return tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)

    def trained_on(self, train_foreground: float) -> JobConfig:
        """This job with ``train.preset`` decided for a training split of this foreground fraction
        (:func:`~dcn_ray.job.train_config.resolve_training`): the job as it trains, and is logged."""
        return dataclasses.replace(self, train=resolve_training(self.train, train_foreground))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples), as YAML or MLflow params want it."""
        return plain({**dataclasses.asdict(self), "model": self.model.to_dict()})

    def flat(self) -> dict[str, Any]:
        """``{"train.steps": 2000, ...}``: every resolved setting under its dotted key."""
        return dict(_flatten(self.to_dict()))


def job_from_dict(raw: Mapping[str, Any]) -> JobConfig:
    """Build and validate a JobConfig from a nested mapping.

    ``sweep.kernels`` lists the values of ``model.kernels``: a job that gives ``model.kernels`` and no
    ``sweep.kernels`` runs that triple (``--set model.kernels=[2,8,16]``)."""
    raw = _kernels_listed(raw)
    job = build(JobConfig, raw, "")  # train.preset's keys stay None until the data is known (JobConfig.trained_on)
    _validate(job)
    return job


def job_from_record(raw: Mapping[str, Any]) -> JobConfig:
    """The job of a sweep's record (``sweep.json``): a record written before each family declared its own
    keys holds every family's (a DCN's ``model.depth: 4``); those neither its family nor its grid reads go."""
    model, sweep = raw.get("model"), raw.get("sweep")
    if isinstance(model, Mapping):
        grid = sweep.get("grid") if isinstance(sweep, Mapping) else None
        families = grid_families(grid) if isinstance(grid, Mapping) else set()
        raw = {**raw, "model": only_its_own(model, families)}
    return job_from_dict(raw)


def _kernels_listed(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` with ``sweep.kernels: [model.kernels]`` where it gives ``model.kernels`` and no ``sweep.kernels``."""
    model, sweep = raw.get("model"), raw.get("sweep")
    if (
        not isinstance(model, Mapping)
        or model.get("kernels") is None
        or sweep is not None
        and not isinstance(sweep, Mapping)
    ):
        return raw
    if "kernels" in (sweep or {}):
        return raw
    return {**raw, "sweep": {**(sweep or {}), "kernels": [model["kernels"]]}}


# ----------------------------------------------------------------------------- validation


def name_problem(name: str) -> str | None:
    """What makes ``name`` unfit as a sweep name (a folder of the storage), or None.

    A plain name: letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit
    (so never ``.``, ``..``, a hidden name, a path or a control character), at most 128 characters.
    """
    if not name:
        return "a sweep name must not be empty"
    if len(name) > 128:
        return f"a sweep name must be at most 128 characters, got {len(name)}"
    if not (name[0].isascii() and name[0].isalnum()) or not all(
        c.isascii() and (c.isalnum() or c in "_-.") for c in name
    ):
        return f"a sweep name must be a plain name (letters, digits, _ - . ; starting with a letter or digit), got {name!r}"
    return None


def _validate(job: JobConfig) -> None:
    def need(condition: bool, message: str) -> None:
        if not condition:
            raise InputError(message)

    problem = name_problem(job.name)
    need(problem is None, f"name: {problem}")
    need(
        bool(job.data.images), "data.images is required (a TIFF stack, OME-Zarr image, zarr array or file.h5:/dataset)"
    )
    need(
        bool(job.data.labels), "data.labels is required (a TIFF stack, OME-Zarr image, zarr array or file.h5:/dataset)"
    )
    foreground = job.data.foreground
    need(
        foreground == "color" or isinstance(foreground, int),
        f"data.foreground must be an integer label value or 'color', got {foreground!r}",
    )
    for key in ("background", "unlabelled"):
        value = getattr(job.data, key)
        need(
            value is None or (isinstance(foreground, int) and value != foreground),
            f"data.{key} {value!r} needs an integer data.foreground other than it, got {foreground!r}",
        )
    need(
        job.data.background is None or job.data.unlabelled is None,
        "data.background and data.unlabelled: give one (background: every other value is unlabelled; "
        "unlabelled: every other value is background)",
    )
    need(
        job.data.target in ("auto", "cells", "objects"),
        f"data.target must be 'auto', 'cells' (cell interior) or 'objects' (mitochondria, synapses), "
        f"got {job.data.target!r}",
    )
    need(
        job.data.roi is None or len(job.data.roi) == 4,
        f"data.roi must be [y0, x0, height, width], got {job.data.roi!r}",
    )
    validate_train(job.train, need)
    validate_model(job.model, need, crop=job.train.crop, grid_families=grid_families(job.sweep.grid))
    scale = size_multiple(job.model)  # the deepest layer's downsampling: 8 for the DCN, 2^depth for a U-Net
    deepest = job.train.batch_size * (job.train.crop // scale) ** 2  # values per channel there
    need(
        not getattr(job.model.params, "batch_norm", False) or deepest > 1,
        f"train.batch_size={job.train.batch_size} with train.crop={job.train.crop}: batch norm needs more than "
        f"one value per channel at the deepest layer (crop / {scale} squared, times the batch); raise either, "
        "or set model.batch_norm=false",
    )
    sweep = job.sweep
    need(len(sweep.kernels) >= 1, "sweep.kernels must list at least one [k1, k2, k3]")
    for index, kernels in enumerate(sweep.kernels):
        problem = kernel_problem(kernels)
        need(problem is None, f"sweep.kernels[{index}]: {problem}")
    need(len(set(sweep.kernels)) == len(sweep.kernels), "sweep.kernels lists a triple twice")
    if isinstance(sweep.seeds, int):
        need(1 <= sweep.seeds <= 1000, f"sweep.seeds as a count must be 1 to 1000, got {sweep.seeds}")
    elif sweep.seeds is not None:
        need(len(sweep.seeds) >= 1, "sweep.seeds must list at least one seed")
        need(len(set(sweep.seeds)) == len(sweep.seeds), f"sweep.seeds lists a seed twice: {list(sweep.seeds)}")
    for seed in job.seeds:
        need(0 <= seed < 2**63, f"seed {seed} is out of range (0 to 2**63 - 1)")
    need(sweep.resources.gpu >= 0, f"sweep.resources.gpu must be >= 0, got {sweep.resources.gpu}")
    need(
        sweep.resources.gpu <= 1 or sweep.resources.gpu.is_integer(),
        "sweep.resources.gpu above 1 must be a whole number",
    )
    need(sweep.resources.cpu > 0, f"sweep.resources.cpu must be > 0, got {sweep.resources.cpu}")
    need(sweep.max_concurrent is None or sweep.max_concurrent >= 1, "sweep.max_concurrent must be >= 1")
    need(sweep.max_failures >= 0, f"sweep.max_failures must be >= 0, got {sweep.max_failures}")
    followup = sweep.followup
    problem = kernel_problem(followup.reference)
    need(problem is None, f"sweep.followup.reference: {problem}")
    need(followup.steps >= 0, f"sweep.followup.steps must be >= 0, got {followup.steps}")
    need(followup.controls is None or followup.controls >= 0, "sweep.followup.controls must be >= 0")
    need(followup.random_controls >= 0, "sweep.followup.random_controls must be >= 0")
    need(followup.step_size >= 1, "sweep.followup.step_size must be >= 1")
    need(
        followup.relative_step is None or 0 < followup.relative_step <= 4,
        f"sweep.followup.relative_step must be in (0, 4], got {followup.relative_step}",
    )
    need(followup.rounds >= 1, f"sweep.followup.rounds must be >= 1, got {followup.rounds}")
    need(0 < followup.margin < 1, f"sweep.followup.margin must be between 0 and 1, got {followup.margin}")
    need(0 <= followup.seed < 2**63, f"sweep.followup.seed {followup.seed} is out of range (0 to 2**63 - 1)")
    need(
        followup.weak in (None, "F1", "F2", "F3"),
        f"sweep.followup.weak must be F1, F2 or F3 (or absent: the rule decides), got {followup.weak!r}",
    )
    synthetic = job.data.synthetic
    if synthetic is not None:
        need(synthetic.slices >= 1, f"data.synthetic.slices must be >= 1, got {synthetic.slices}")
        need(
            synthetic.task in ("cells", "organelles"),
            f"data.synthetic.task must be 'cells' or 'organelles', got {synthetic.task!r}",
        )
        need(synthetic.size >= 16, f"data.synthetic.size must be >= 16, got {synthetic.size}")
        need(0 <= synthetic.seed < 2**63, f"data.synthetic.seed {synthetic.seed} is out of range (0 to 2**63 - 1)")
        need(
            synthetic.slices * synthetic.size**2 <= MAX_SYNTHETIC_VOXELS,
            f"data.synthetic: {synthetic.slices} slices of {synthetic.size} x {synthetic.size} exceed "
            f"{MAX_SYNTHETIC_VOXELS} voxels",
        )


# ----------------------------------------------------------------------------- helpers


def _flatten(tree: Mapping[str, Any], prefix: str = ""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def kernels_of(job: JobConfig) -> list[Kernels]:
    """The grid of the job as (k1, k2, k3) tuples."""
    return [tuple(k) for k in job.sweep.kernels]  # type: ignore[misc]
