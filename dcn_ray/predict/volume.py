"""Segment a volume of any size into an OME-Zarr store: out of core, in blocks, resumable, on Ray.

The volume is cut into blocks aligned to the output chunks (:mod:`dcn_ray.predict.blocks`); each
block is read with a halo of at least the receptive radius, predicted slice by slice with the
tiled, test-time-augmented engine (:class:`~dcn_ray.predict.engine.BlockPredictor`), cropped to
its core and written straight into the store (:mod:`dcn_ray.io.omezarr`), so the result equals
whole-slice inference and memory is bounded by the block, whatever the volume's size. With
``workers`` or ``address`` the blocks go to the Ray actors of :mod:`~dcn_ray.predict.ray_pool`,
each writing its own chunks (only block descriptions and voxel counts pass through the driver);
with ``resume`` the blocks an interrupted run recorded as written are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from dcn_ray import __version__, models
from dcn_ray.core.evaluation import matching_slices
from dcn_ray.errors import InputError
from dcn_ray.io import omezarr
from dcn_ray.io.fingerprint import check_regions, metadata_fingerprint
from dcn_ray.io.guard import refuse_overlaps
from dcn_ray.io.volumes import is_zarr_path, open_volume, volume_shape
from dcn_ray.predict import blocks as blocking
from dcn_ray.predict.blocks import Block
from dcn_ray.predict.engine import BlockPredictor, PredictOptions, VolumePlan, check_run
from dcn_ray.predict.ray_pool import actor_pool
from dcn_ray.predict.stack import chosen_slices, model_target, read_truth, score_output
from dcn_ray.track.sources import LoadedModel

log = logging.getLogger(__name__)

#: Called with (blocks done, blocks in all, voxels predicted by this run): once before the first
#: block (blocks done by an earlier run count as done), then after each block.
BlockProgress = Callable[[int, int, int], None]
#: Settings that must match for --resume to continue an unfinished store.
RESUME_KEYS = (
    "model_sha256", "model_family", "model_kwargs", "input", "level", "shape", "chunks", "block", "halo", "output", "threshold", "tta", "tile",
    "overlap", "ngff", "label_image", "slices",
)  # fmt: skip
#: What the input was: checked on --resume apart from the settings, to name the input.
INPUT_KEY = "input_fingerprint"


@dataclass(frozen=True)
class VolumeResult:
    output: Path
    blocks: int  # blocks in all
    skipped: int  # blocks an earlier run had written (--resume)
    voxels: int  # voxels predicted by this run
    seconds: float
    workers: tuple[str, ...]  # who predicted each block of this run
    scores: dict[str, float] | None


def plan_volume(
    loaded: LoadedModel,
    input_path: str | Path,
    options: PredictOptions,
    *,
    level: int = 0,
    chunks: tuple[int, int, int] | None = None,
    block: int | None = None,
    span: tuple[int, int] | None = None,
) -> VolumePlan:
    align = blocking.grid_for(models.size_multiple(loaded.model))  # 16 for a U-Net of depth 4
    volume = open_volume(input_path, level)
    halo = blocking.halo_for(models.receptive_radius(loaded.model), align)
    written = volume.shape if span is None else (span[1] - span[0], *volume.shape[1:])
    chunk = blocking.default_chunks(written, chunks, align)
    shape = blocking.default_block(written, chunk, tile=options.tile, halo=halo, block=block)
    return VolumePlan(volume, chunk, shape, halo, options, align, models.context_of(loaded.model), span)


def slice_span(slices: str | None, depth: int) -> tuple[int, int] | None:
    """``--slices`` of a ``depth``-slice input as the range (first, stop) an OME-Zarr output holds."""
    chosen = chosen_slices(slices, depth)
    if chosen is None:
        return None
    if chosen != list(range(chosen[0], chosen[0] + len(chosen))):
        raise InputError(f"--slices {slices}: an OME-Zarr output holds one range of slices in order, e.g. 20:28")
    return chosen[0], chosen[0] + len(chosen)


def check_volume_paths(
    input_path: str | Path,
    output_path: Path,
    *,
    labels: str | Path | None = None,
    level: int = 0,
    model: str | Path | None = None,
    label_slices: str | None = None,
    slices: str | None = None,
) -> tuple[int, int, int]:
    """Before any work: the input (and ``labels``, same shape, and ``slices``) can be read and the OME-Zarr
    ``output_path`` written (new, or a store dcn-ray wrote, which is replaced), touching no input
    (``model`` included); the input's (Z, Y, X)."""
    output_path = Path(output_path)
    if not is_zarr_path(output_path):
        raise InputError(f"{output_path}: an OME-Zarr output ends in .zarr (e.g. out.ome.zarr)")
    volume = open_volume(input_path, level, scan=False)
    slice_span(slices, volume.shape[0])
    if labels is not None:
        matching_slices(volume_shape(labels, level), volume.shape, label_slices, labels)
    inputs = {"the input": input_path, "the --labels volume": labels, "the model file": model}
    refuse_overlaps(output_path, inputs)
    omezarr.check_output(output_path)
    return volume.shape


def predict_volume(
    loaded: LoadedModel,
    input_path: str | Path,
    output_path: Path,
    options: PredictOptions,
    *,
    level: int = 0,
    chunks: tuple[int, int, int] | None = None,
    block: int | None = None,
    ngff: str = "0.4",
    label_image: bool = False,
    labels: str | Path | None = None,
    label_slices: str | None = None,
    slices: str | None = None,
    target: str = "auto",
    score_progress: Callable[[int, int], None] | None = None,
    resume: bool = False,
    workers: int | None = None,
    address: str | None = None,
    progress: BlockProgress | None = None,
    ready: Callable[[], None] | None = None,
) -> VolumeResult:
    """Segment ``input_path`` (any format of :mod:`dcn_ray.io.volumes`) into the OME-Zarr ``output_path``.

    With ``labels`` (ground truth) the finished output is read back and scored as ``dcn-ray score``
    scores it. ``slices`` (one range, as data.split writes it: 20:28) writes those slices of the input
    alone (a context model reads their neighbours beyond); ``labels`` are cut alike. ``ready`` is called
    once every check has passed, before the first block. See the module doc for the rest.
    """
    output_path = Path(output_path)
    if ngff not in omezarr.NGFF_VERSIONS:
        raise InputError(f"--ngff {ngff}: choose one of {', '.join(omezarr.NGFF_VERSIONS)}")
    paths = {"labels": labels, "level": level, "model": loaded.location, "label_slices": label_slices}
    depth = check_volume_paths(input_path, output_path, slices=slices, **paths)[0]
    check_run(loaded.model, options, workers=workers, address=address)
    span = slice_span(slices, depth)
    plan = plan_volume(loaded, input_path, options, level=level, chunks=chunks, block=block, span=span)
    predicted = None if span is None else list(range(*span))
    truth = None
    if labels is not None:
        truth = read_truth(labels, plan.volume.shape, loaded, level, label_slices, predicted)
    target = model_target(loaded, target)
    settings = _settings(loaded, plan, level=level, ngff=ngff, label_image=label_image)
    store = omezarr.resumable_store(output_path, settings, RESUME_KEYS) if resume else None
    if resume and store is None and _finished(output_path, settings):
        log.info("%s: already complete with these settings; nothing to do", output_path)
        total = math.prod(plan.grid)
        if ready is not None:
            ready()
        return VolumeResult(
            output_path, total, total, 0, 0.0, (), score_output(output_path, truth, options, target, score_progress)
        )
    created = store is None
    if store is None:
        if resume:
            log.info("%s: no unfinished run to resume; starting a new one", output_path)
        store = omezarr.create_store(
            output_path, shape=plan.shape, chunks=plan.chunks, dtype=plan.dtype, grid=plan.grid,
            axes=plan.volume.axes, scale=plan.volume.scale, ngff=ngff, label=label_image, settings=settings,
        )  # fmt: skip
    done = store.done_blocks() if not store.complete else set(blocking.iter_indices(plan.grid))
    if not created:
        _check_input(plan, store, settings, done)
    if ready is not None:
        ready()
    todo = list(plan.blocks(skip=done))
    total = len(done) + len(todo)
    log.debug(
        "%d block(s) of %s voxels (halo %d)%s",
        total, "x".join(map(str, plan.block)), plan.halo, f", {len(done)} already written" if done else "",
    )  # fmt: skip
    names: list[str] = []
    voxels = 0
    started = time.perf_counter()
    if progress is not None:
        progress(len(done), total, 0)
    try:
        for index, (count, name) in enumerate(_run(loaded, plan, store, todo, workers=workers, address=address)):
            voxels += count
            names.append(name)
            if progress is not None:
                progress(len(done) + index + 1, total, voxels)
    except BaseException as error:
        if created and not names:  # refused or stopped before its first block: leave nothing behind
            omezarr.remove_store(store)
        elif isinstance(error, InputError):  # damage found mid-run: one line says both
            raise InputError(
                f"{error}; {store.path} is unfinished: the same command with --resume continues it"
            ) from None
        else:
            log.warning("%s: unfinished; the same command with --resume continues it", store.path)
        raise
    seconds = time.perf_counter() - started
    omezarr.finish_store(store, output_path)
    scores = score_output(output_path, truth, options, target, score_progress)
    return VolumeResult(output_path, total, len(done), voxels, seconds, tuple(names), scores)


def _run(
    loaded: LoadedModel,
    plan: VolumePlan,
    store: omezarr.OutputStore,
    todo: list[Block],
    *,
    workers: int | None,
    address: str | None,
) -> Iterator[tuple[int, str]]:
    """(voxels, who) of each block of ``todo``, in its order."""
    if workers is None and address is None:
        predict = BlockPredictor(loaded.model, plan, store)
        for block in todo:
            yield predict(block), "local"
        return
    build = partial(BlockPredictor, plan=plan, store=store)
    with actor_pool(loaded.payload, build, device=plan.options.device, workers=workers, address=address) as pool:
        yield from pool(todo)


def _check_input(plan: VolumePlan, store: omezarr.OutputStore, settings: dict[str, Any], done: set) -> None:
    """InputError naming the input unless it is what the unfinished ``store`` read for its blocks."""
    recorded = (omezarr.stored_settings(Path(store.path)) or {}).get(INPUT_KEY)
    if recorded != settings[INPUT_KEY]:
        raise InputError(
            f"{plan.volume.source}: the input's metadata (shape, type, chunks or value range) differs from what "
            f"the unfinished run in {store.path} read; run without --resume to start again"
        )
    if store.complete:  # every block in, the record already dropped: only the rename was left
        return
    regions = ((b.index, b.region) for b in plan.blocks() if b.index in done)
    check_regions(plan.volume, regions, store.digests(), store.path)


def _finished(path: Path, settings: dict[str, Any]) -> bool:
    """Whether ``path`` is a complete store written with the same settings."""
    stored = omezarr.stored_settings(path) if path.exists() else None
    return bool(
        stored and stored.get("complete") and all(stored.get(k) == settings.get(k) for k in (*RESUME_KEYS, INPUT_KEY))
    )


def _settings(loaded: LoadedModel, plan: VolumePlan, *, level: int, ngff: str, label_image: bool) -> dict[str, Any]:
    """Provenance and settings, stored in the output's attributes."""
    options, volume = plan.options, plan.volume
    source = loaded.source
    run_id = source[len("runs:/") :].split("/")[0] if source.startswith("runs:/") else None
    return {
        "model": source,
        "model_location": loaded.location,
        "model_sha256": model_digest(loaded.payload),
        "mlflow_run_id": loaded.mlflow_run_id or run_id or loaded.payload.get("mlflow_run_id"),
        "model_family": models.family_of(loaded.model).name,
        "model_kwargs": json.loads(json.dumps(dict(loaded.payload.get("model_kwargs", {})), default=str)),
        "kernels": list(loaded.model.kernels) if models.family_of(loaded.model).uses_kernels else None,
        "model_step": loaded.payload.get("step"),
        "dcn_ray_version": __version__,
        "input": volume.source,
        "input_format": volume.kind if volume.version is None else f"{volume.kind} {volume.version}",
        INPUT_KEY: metadata_fingerprint(volume),
        "level": level,
        "shape": list(plan.shape),
        "slices": None if plan.span is None else list(plan.span),  # the input's slices written (first, stop)
        "chunks": list(plan.chunks),
        "block": list(plan.block),
        "halo": plan.halo,
        "context": plan.context,  # provenance: the model (model_sha256) fixes it
        "output": options.output,
        "threshold": options.threshold,
        "tta": options.tta,
        "tile": options.tile,
        "overlap": options.overlap,
        "ngff": ngff,
        "label_image": label_image,
    }


def model_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's weights (names, shapes and values): which model wrote a store."""
    digest = hashlib.sha256()
    for name, tensor in sorted(payload["weights"].items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
