"""Segment a stack (or a 2-D image) into a TIFF: streamed slice by slice, locally or on Ray.

One slice at a time (with the 2N neighbours a model of context N reads,
:func:`dcn_ray.core.context.windows`) is read, predicted by the engine's tiled, test-time-augmented
:class:`~dcn_ray.predict.engine.SlicePredictor` (in this process, or on the actors of
:mod:`~dcn_ray.predict.ray_pool`) and written, so memory is bounded by a slice whatever the
stack's depth.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from dcn_ray import __version__, models
from dcn_ray.core import context as serial
from dcn_ray.core.dataset import parse_split
from dcn_ray.core.evaluation import matching_slices, score_probabilities
from dcn_ray.core.partial import read_truth as partial_truth
from dcn_ray.errors import InputError
from dcn_ray.io.paths import output_file
from dcn_ray.io.predictions import read_prediction
from dcn_ray.io.tiff_writer import StackWriter, needs_bigtiff
from dcn_ray.io.volumes import input_slices, open_volume, volume_shape
from dcn_ray.predict.engine import PredictOptions, SlicePredictor, check_run, encode
from dcn_ray.predict.ray_pool import actor_pool
from dcn_ray.track.sources import LoadedModel

log = logging.getLogger(__name__)


#: Maps slices (Y, X) float32 in [0, 1] to (foreground probability, name of who predicted it).
SliceMapper = Callable[[Iterable[np.ndarray]], Iterator[tuple[np.ndarray, str]]]
#: Called with (slices done, slices in all): 0 once before the first slice, then after each.
Progress = Callable[[int, int], None]
#: ``--labels`` as scored: the foreground mask, and the labelled pixels (None: every pixel, fully labelled truth).
Truth = tuple[np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class PredictResult:
    output: Path
    slices: int
    seconds: float  # from the first slice read to the last one written
    #: Who predicted each slice ("local", or a Ray worker's name).
    workers: tuple[str, ...]
    #: Scores against --labels as ``dcn-ray score`` gives them (core.evaluation.score_probabilities); None without.
    scores: dict[str, float] | None


@contextmanager
def local_mapper(model: nn.Module, options: PredictOptions) -> Iterator[SliceMapper]:
    """Predict in this process, one slice after the other."""
    predict = SlicePredictor(model, options)
    yield lambda slices: ((predict(image), "local") for image in slices)


def check_paths(
    input_path: Path,
    output_path: Path,
    *,
    labels: Path | None = None,
    model: str | Path | None = None,
    level: int = 0,
    label_slices: str | None = None,
    slices: str | None = None,
) -> tuple[int, int, int]:
    """The files of a prediction, checked before any work: the input stack and ``labels`` (same
    shape), the ``slices`` to segment, and an output file that can be written and is none of the
    inputs (``model`` included).

    Returns the input's (Z, Y, X).
    """
    shape = volume_shape(input_path, level)
    chosen_slices(slices, shape[0])
    if labels is not None:
        matching_slices(volume_shape(labels, level), shape, label_slices, labels)
    inputs = {"the input stack": input_path, "the --labels file": labels, "the model file": model}
    output_file(output_path, inputs)
    return shape


def chosen_slices(slices: str | None, depth: int) -> list[int] | None:
    """``--slices`` (as data.split writes them: 20:28, 3,5,9) of a ``depth``-slice input; None for all."""
    return None if slices is None else parse_split(slices, depth, name="--slices")


def predict_stack(
    loaded: LoadedModel,
    input_path: Path,
    output_path: Path,
    options: PredictOptions,
    *,
    labels: Path | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: Progress | None = None,
    level: int = 0,
    label_slices: str | None = None,
    slices: str | None = None,
    target: str = "auto",
    score_progress: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """Segment the stack (or 2-D image) ``input_path`` into ``output_path``, streamed.

    One slice at a time is read, predicted and written (to a temporary name, renamed at the
    end). ``workers`` or ``address`` spread the slices over Ray actors, one GPU each where the
    cluster has GPUs. With ``labels`` the written output is read back and scored exactly as
    ``dcn-ray score OUTPUT LABELS`` scores it (a probability map: pixel scores at
    ``options.threshold``, V_rand and V_info at their best threshold; a mask: as it is). The
    foreground label value comes from the model's config; ``label_slices`` picks the labels' slices the
    input holds (an input cut from a larger stack); ``target`` "auto" is the model's ``data.target`` where
    it was set, else decided by the labels. ``slices`` (as data.split writes them) segments those
    slices of the input alone, in that order (a model of context N reads their neighbours in the
    input); the output holds them, and ``labels`` are cut alike. Every check that needs no work (the
    labels read, the tiling, the device, the workers) comes before Ray or the first slice.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    paths = {"labels": labels, "model": loaded.location, "level": level, "label_slices": label_slices}
    shape = check_paths(input_path, output_path, slices=slices, **paths)
    chosen = chosen_slices(slices, shape[0])
    check_run(loaded.model, options, workers=workers, address=address)
    truth = read_truth(labels, shape, loaded, level, label_slices, chosen) if labels is not None else None
    depth = shape[0] if chosen is None else len(chosen)
    page_bytes = 4 if options.output == "float" else 1
    bigtiff = needs_bigtiff(depth * math.prod(shape[1:]) * page_bytes)
    names: list[str] = []
    with (
        _mapper(loaded, options, workers, address) as mapper,
        StackWriter(output_path, metadata=_metadata(loaded, options, chosen), bigtiff=bigtiff) as writer,
    ):
        started = time.perf_counter()
        if progress is not None:
            progress(0, depth)
        inputs = _inputs(input_path, level, shape[0], models.context_of(loaded.model), chosen)
        for index, (probability, name) in enumerate(mapper(inputs)):
            writer.write(encode(probability, options.output, options.threshold))
            names.append(name)
            if progress is not None:
                progress(index + 1, depth)
        seconds = time.perf_counter() - started
    scores = score_output(output_path, truth, options, model_target(loaded, target), score_progress)
    return PredictResult(output_path, len(names), seconds, tuple(names), scores)


def _inputs(input_path: Path, level: int, depth: int, context: int, chosen: list[int] | None) -> Iterator[np.ndarray]:
    """What the model reads for each slice to segment: the slice (Y, X), or with ``context`` N the
    (2N + 1, Y, X) slice and its neighbours, reflected at the stack's ends; streamed for a whole stack."""
    if chosen is None:
        slices = input_slices(input_path, level)
        return serial.windows(slices, context, depth) if context else slices
    volume = open_volume(input_path, level)

    def read(z: int) -> np.ndarray:
        return volume.read(slice(z, z + 1))[0]

    if not context:
        return (read(z) for z in chosen)
    return (np.stack([read(i) for i in serial.neighbours(z, context, depth)]) for z in chosen)


def score_output(
    path: Path, truth: Truth | None, options: PredictOptions, target: str, progress: Progress | None = None
) -> dict[str, Any] | None:
    """What ``dcn-ray score`` gives for the finished output ``path`` (read back as written) against ``truth``."""
    if truth is None:
        return None
    mask, labelled = truth
    probability = read_prediction(path)[0]
    return score_probabilities(
        probability, mask, target=target, threshold=options.threshold, progress=progress, labelled=labelled
    )


def _mapper(
    loaded: LoadedModel, options: PredictOptions, workers: int | None, address: str | None
) -> AbstractContextManager[SliceMapper]:
    if workers is None and address is None:
        return local_mapper(loaded.model, options)
    build = partial(SlicePredictor, options=options)
    return actor_pool(loaded.payload, build, device=options.device, workers=workers, address=address)


def read_truth(
    labels: str | Path,
    shape: tuple[int, int, int],
    loaded: LoadedModel,
    level: int = 0,
    slices: str | None = None,
    predicted: list[int] | None = None,
) -> Truth:
    """The ``--labels`` (foreground, labelled) masks of the slices the input holds (``slices``: which
    of the labels' they are), those ``predicted`` alone where given, read as the model's ``data``
    section says (foreground value; partly labelled where it names ``background`` or ``unlabelled``:
    then only labelled pixels are scored, and ``labelled`` is not None)."""
    chosen = matching_slices(volume_shape(labels, level), shape, slices, labels)
    if predicted is not None:
        chosen = [(chosen or list(range(shape[0])))[z] for z in predicted]
    data = loaded.payload.get("config", {}).get("data", {})
    mask, labelled = partial_truth(labels, data, level)
    partial = data.get("background") is not None or data.get("unlabelled") is not None
    if partial and labelled is None:
        labelled = np.ones_like(mask)  # said as such: every pixel of it labelled
    if chosen is not None:
        mask, labelled = mask[chosen], None if labelled is None else labelled[chosen]
    if labelled is not None and not labelled.any():
        raise InputError(f"--labels {labels}: no pixel of the slices the input holds is labelled; nothing to score")
    return mask, labelled


def model_target(loaded: LoadedModel, target: str) -> str:
    """``--target`` as given, or for "auto" the model's own ``data.target`` when its job set one."""
    if target != "auto":
        return target
    return str(loaded.payload.get("config", {}).get("data", {}).get("target", "auto"))


def _metadata(loaded: LoadedModel, options: PredictOptions, chosen: list[int] | None) -> dict:
    return {
        "model": loaded.source,
        "model_location": loaded.location,
        "model_family": models.family_of(loaded.model).name,
        "kernels": list(loaded.model.kernels) if models.family_of(loaded.model).uses_kernels else None,
        "model_step": loaded.payload.get("step"),
        "context": models.context_of(loaded.model),
        "dcn_ray_version": __version__,
        "output": options.output,
        "threshold": options.threshold if options.output == "mask" else None,
        "tta": options.tta,
        "tile": options.tile,
        "overlap": options.overlap,
        "slices": chosen,  # the input's slices the output holds (None: all of them)
    }
