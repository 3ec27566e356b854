"""Check a job before it runs: its data, and the trials it will run (no Ray, MLflow or torch).

``dcn-ray sweep --dry-run`` prints what these return and writes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from dcn_ray.core.proposals import plan_followups
from dcn_ray.errors import InputError
from dcn_ray.job.config import JobConfig, kernels_of
from dcn_ray.job.sweep_grid import REDRAW_KEY, Variant, config_name, value_text, variants
from dcn_ray.job.train_config import preset_line
from dcn_ray.kernels import BRANCHES, STRIDES, kernels_text
from dcn_ray.tune.planner import RoundPlanner

log = logging.getLogger(__name__)

#: A rough CPU cost model (2 cores): a training step of the full-width DCN (64) on a 512 x 512 crop
#: costs about 15 s per image (forward ~5 s, backward about twice that), scaling with width^2 and
#: the crop's area, plus a fixed overhead per step that dominates for narrow models and small crops.
CPU_SECONDS_PER_FULL_IMAGE = 15.0
CPU_STEP_OVERHEAD_S = 0.08


def planned_trials(
    job: JobConfig, gpu: float | None = None, configurations: Sequence[Variant] | None = None
) -> list[str]:
    """One line per configuration the sweep will run (the dry-run listing).

    ``gpu``: the GPU share a trial really gets where the sweep runs (0 on a machine without GPUs);
    default: what the job asks for. ``configurations``: the job's grid as the command expanded it.
    """
    resources = job.sweep.resources
    gpu = resources.gpu if gpu is None else gpu
    seeds = ",".join(str(s) for s in job.seeds)
    if job.sweep.search.enabled:
        return planned_search(job, gpu)
    configurations = variants(job) if configurations is None else configurations
    # what the sweep runs is the planner's to say, not a copy of its rule
    queued = RoundPlanner(configurations, job.seeds, job.sweep.followup).queue
    planned = list(
        dict.fromkeys((spec.family, spec.kernels, spec.grid_values) for spec in queued if spec.phase == "grid")
    )
    lines = []
    for variant in configurations:
        k = variant.kernels
        what = f"k1={k[0]} k2={k[1]} k3={k[2]}" if k is not None else f"model.family={variant.family}"
        values = "".join(f" {key}={value_text(value)}" for key, value in variant.params)
        name = variant.name if variant.params or k is None else kernels_text(k)
        lines.append(f"grid  {name:>10}  {what}{values}  seeds {seeds}  gpu={gpu:g} cpu={resources.cpu:g}")
    followup = job.sweep.followup
    count = len(planned)
    listed = {(variant.family, variant.kernels, variant.params) for variant in configurations}
    for _, kernels, _ in (config for config in planned if config not in listed):  # the follow-ups' reference
        lines.insert(0, f"grid  {kernels_text(kernels):>10}  (reference, added for the follow-ups)  seeds {seeds}")
    if followup.enabled:
        reference = tuple(followup.reference)
        controls = "all" if followup.controls is None else f"up to {followup.controls}"
        extras = f" and {followup.random_controls} random extras" if followup.random_controls else ""
        sham = ", a sham control (the reference's kernels, the weak branch's start re-drawn)" if followup.sham else ""
        lines.append(
            f"then, per round ({followup.rounds}): up to {followup.steps} guided follow-ups, {controls} matched "
            f"controls{sham}{extras}, chosen from the calibrated F1-F3 separations of {kernels_text(reference)} over "
            f"its seeds, each run once per seed; verdict with an equivalence margin of +-{followup.margin:g}"
        )
        if followup.weak is not None:
            lines += fixed_round(job)
    lines.append(f"{count * len(job.seeds)} grid trials: {count} configuration(s) x {len(job.seeds)} seed(s)")
    return lines


def planned_search(job: JobConfig, gpu: float) -> list[str]:
    """What a search will run, as its planner says: the algorithm, the budget, the space; and ASHA."""
    from dcn_ray.core.scores import HEADLINE_MODE
    from dcn_ray.tune.search_planner import SearchPlanner, trial_spec
    from dcn_ray.tune.spec import METRIC

    planner = SearchPlanner(job.sweep.search, job.seeds, trial_spec, metric=METRIC, mode=HEADLINE_MODE)
    first, *space = planner.describe()
    kernels = f"k1={job.sweep.kernels[0][0]} k2={job.sweep.kernels[0][1]} k3={job.sweep.kernels[0][2]} "
    resources = job.sweep.resources
    lines = [
        f"{first}; seeds {','.join(str(s) for s in job.seeds)}, gpu={gpu:g} cpu={resources.cpu:g} each",
        f"model.family={job.model.family} {kernels if job.model.family == 'dcn' else ''}unless the space sets them; "
        "the space:",
        *space,
        "each configuration runs once per seed; the searcher is told the mean over seeds of "
        f"{METRIC}; a configuration suggested again is told its result, not rerun",
        "trials named search-CONFIGURATION-sSEED (phase search: reported and judged as grid configurations are)",
    ]
    scheduler = job.sweep.scheduler
    if scheduler.enabled:
        lines.append(
            f"early stopping: ASHA on {METRIC}, first look at step {min(scheduler.grace_steps, job.train.steps)}, "
            f"keeping the top 1/{scheduler.reduction_factor} at each look; stopped trials are listed, not averaged"
        )
    return lines


def fixed_round(job: JobConfig) -> list[str]:
    """Round 1 of a job whose weak branch is fixed in advance: its configurations, queued at once."""
    followup, seeds = job.sweep.followup, len(job.seeds)
    weak = BRANCHES.index(str(followup.weak))
    step = (
        followup.step_size if followup.relative_step is None else max(1, round(followup.relative_step * STRIDES[weak]))
    )
    plan = plan_followups(
        followup.reference, weak, steps=followup.steps, step_size=step, controls=followup.controls,
        random_controls=followup.random_controls, seed=followup.seed, exclude=kernels_of(job),
    )  # fmt: skip
    sham = [config_name("dcn", tuple(followup.reference), ((REDRAW_KEY, (followup.weak,)),))] if followup.sham else []
    new = [k for k in (*plan.guided, *plan.controls, *plan.extras) if k not in kernels_of(job)]
    listed = lambda configs: ", ".join(kernels_text(k) for k in configs) or "none"  # noqa: E731
    return [
        f"round 1, weak branch {followup.weak} fixed in advance (the rule is not asked): guided {listed(plan.guided)}; "
        f"matched controls {listed(plan.controls)}; sham {', '.join(sham) or 'none'}"
        + (f"; random {listed(plan.extras)}" if plan.extras else ""),
        f"{(len(new) + len(sham)) * seeds} round-1 trials, queued at once: guided beside sham seed by seed, then the "
        f"controls, the grid last",
    ]


def cpu_estimate(
    job: JobConfig,
    slots: int,
    *,
    load: float | None = None,
    cpus: int | None = None,
    configurations: Sequence[Variant] | None = None,
) -> str:
    """A rough wall time of the grid trials on CPUs, ``slots`` at a time (the follow-ups add to it).

    The cost model was measured on 2 idle cores; it is scaled by this machine's load now
    (``load``: the 1-minute load average, default :func:`os.getloadavg`; ``cpus``: the cores this
    process may use), since the trials share the cores with whatever else runs, and says both.
    """
    train = job.train
    per_image = CPU_SECONDS_PER_FULL_IMAGE * (job.model.width / 64) ** 2 * (train.crop / 512) ** 2
    per_trial = train.steps * (CPU_STEP_OVERHEAD_S + train.batch_size * per_image)
    search = job.sweep.search
    if not (search.enabled and search.trials):
        configurations = variants(job) if configurations is None else configurations
    trials = (search.trials if search.enabled and search.trials else len(configurations)) * len(job.seeds)
    load = os.getloadavg()[0] if load is None else load
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    slots = max(slots, 1)
    factor = max(1.0, (load + min(slots, cpus)) / max(cpus, 1))  # the sweep's own trials add to the load
    per_trial *= factor
    total = per_trial * -(-trials // slots)
    scaled = f", x{factor:.1f} for the load" if factor > 1.0 else ""
    return (
        f"estimate on CPU: about {_duration(per_trial)} per trial, {_duration(total)} for the {trials} "
        f"{'search' if search.enabled else 'grid'} trials {slots} at a time (rough; follow-ups add more): "
        f"a GPU runs this job far faster. Measured: {CPU_SECONDS_PER_FULL_IMAGE:g} s per 512 x 512 image at "
        f"width 64 on 2 idle cores (bench/train_cpu.py), scaled by width^2 and crop area; this machine now: "
        f"load average {load:.1f} on {cpus} CPU(s){scaled}"
    )


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def synthetic_folder(job: JobConfig) -> Path | None:
    """The folder to make the job's synthetic stack in, or None when the data files exist or none is asked for."""
    data = job.data
    if data.synthetic is None or (Path(data.images).exists() and Path(data.labels).exists()):
        return None
    images, labels = Path(data.images), Path(data.labels)
    if images.parent != labels.parent or images.name != "images.tif" or labels.name != "labels.tif":
        raise InputError(
            "data.synthetic needs data.images and data.labels to be images.tif and labels.tif in one folder"
        )
    return images.parent


def ensure_data(job: JobConfig) -> None:
    """Make the synthetic stack of a job that asks for one (``data.synthetic``) if it is missing."""
    folder = synthetic_folder(job)
    if folder is None:
        return
    from dcn_ray.io.synth import write_synthetic

    synth = job.data.synthetic
    assert synth is not None
    write_synthetic(folder, slices=synth.slices, size=synth.size, seed=synth.seed, task=synth.task)
    log.debug("made the synthetic stack %s", folder)


def check_data(job: JobConfig, *, make: bool = True) -> tuple[str, float | None]:
    """Read and validate the data; the crop must fit the slices. Returns a summary (a line on the data,
    one on the training its preset gives) and the training split's foreground fraction.

    With ``make=False`` (a dry run) a missing synthetic stack is checked, not written (no fraction then).
    """
    folder = synthetic_folder(job)
    if folder is not None and not make:
        synth = job.data.synthetic
        assert synth is not None
        if job.train.crop > synth.size:
            raise InputError(f"train.crop={job.train.crop} is larger than the synthetic slices ({synth.size})")
        return (
            f"data: a synthetic stack of {synth.slices} slices of {synth.size} x {synth.size} will be made in {folder}"
            f"\ntraining: train.preset {job.train.preset}, decided by the training foreground once the stack is made"
        ), None
    ensure_data(job)
    from dcn_ray.core.dataset import load_data

    dataset = load_data(job.data)
    height, width = dataset.train_images.shape[1:]
    if job.train.crop > min(height, width):
        raise InputError(f"train.crop={job.train.crop} is larger than the slices ({height} x {width})")
    test = f", {len(dataset.test_slices)} test slices" if dataset.test_slices else ""
    summary = (
        f"data: {len(dataset.train_slices)} training and {len(dataset.val_slices)} validation slices "
        f"of {height} x {width}{test} from {job.data.images}"
    )
    if dataset.train_labelled is not None:  # partly labelled data: how much of it
        from dcn_ray.core.partial import labelled_slices

        held = int(labelled_slices(dataset.train_labelled, len(dataset.train_slices)).sum())
        summary += (
            f"\nlabels: {100 * dataset.train_labelled.mean():.1f} % of the training pixels are labelled "
            f"({held} of {len(dataset.train_slices)} slices hold labels); unlabelled pixels are left out"
        )
    lines = [summary, *data_lines(job, dataset), preset_line(job.train, dataset.train_foreground)]
    return "\n".join(lines), dataset.train_foreground


def data_lines(job: JobConfig, dataset) -> list[str]:
    """The target the scores fit (and why) and the labels checked slice by slice (:mod:`dcn_ray.core.labels`)."""
    from dcn_ray.core.labels import label_lines
    from dcn_ray.core.scores import target_line

    check = dataset.labels
    splits = {"train": dataset.train_slices, "val": dataset.val_slices, "test": dataset.test_slices}
    return [
        target_line(job.data.target, dataset.target, check.stack),
        *label_lines(check, splits, allow_empty=job.data.allow_empty_slices),
    ]


#: Feature maps of the model's width that one training step holds at the crop's full size, at the
#: least (forward only, the first levels): a lower bound of a step's memory, to refuse the impossible.
MAPS_PER_CHANNEL = 8


def check_trials(job: JobConfig, configurations: Sequence[Variant] | None = None) -> None:
    """Each configuration's data, crop and batch, checked before any state is made (InputError naming
    its grid values): the data files exist and hold slices the crop fits, and one training step's
    memory (a lower bound) fits this machine (or, for GPU trials, the largest GPU)."""
    from dcn_ray.io.volumes import volume_shape

    flat = job.flat()
    sides: dict[tuple, tuple[int, int]] = {}
    checked: set[tuple] = set()
    for variant in variants(job) if configurations is None else configurations:
        given = dict(variant.params)
        get = lambda key: given.get(key, flat.get(key))  # noqa: E731
        keys = ("data.images", "data.labels", "data.roi", "data.synthetic.size", "train.crop", "train.batch_size")
        trial = tuple(repr(get(key)) for key in (*keys, "model.width"))
        if trial in checked:  # a grid of other keys: each distinct data, crop and batch checked once
            continue
        checked.add(trial)
        where = "".join(f" ({k}={value_text(v)})" for k, v in variant.params if k.startswith(("data.", "train.")))
        prefix = f"sweep.grid{where}: " if where else ""
        data = (get("data.images"), get("data.labels"), tuple(get("data.roi") or ()), get("data.synthetic.size"))
        if data not in sides:
            try:
                sides[data] = _slice_sides(*data, volume_shape)
            except InputError as error:
                raise InputError(f"{prefix}{error}") from None
        height, width = sides[data]
        crop = int(get("train.crop"))
        if crop > min(height, width):
            raise InputError(f"{prefix}train.crop={crop} is larger than the slices ({height} x {width})")
        needed = int(get("train.batch_size")) * crop * crop * 4 * (MAPS_PER_CHANNEL * int(get("model.width") or 1) + 2)
        memory = _memory(job.sweep.resources.gpu)
        if needed > memory:
            raise InputError(
                f"{prefix}train.batch_size={get('train.batch_size')} with train.crop={crop} needs at least "
                f"{needed / 2**30:.3g} GiB for one training step, more than the {memory / 2**30:.0f} GiB here"
            )


def _slice_sides(images: str, labels: str, roi: tuple, synthetic_size: int | None, volume_shape) -> tuple[int, int]:
    """(height, width) of the slices a trial trains on, from the files' metadata (or the stack to be made)."""
    if synthetic_size is not None and not (Path(images).exists() and Path(labels).exists()):
        return int(synthetic_size), int(synthetic_size)
    shape = volume_shape(images)
    if volume_shape(labels) != shape:
        raise InputError(f"data.labels {labels} have shape {volume_shape(labels)} but data.images {images} {shape}")
    return (int(roi[2]), int(roi[3])) if len(roi) == 4 else (shape[1], shape[2])


def _memory(gpu: float) -> int:
    """This machine's memory in bytes; for GPU trials at least that of the largest GPU (192 GiB)."""
    import os

    here = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(here, 192 * 2**30) if gpu else here
