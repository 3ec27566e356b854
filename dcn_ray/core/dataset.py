"""Training data: cut image and label stacks into train/val/test splits, cropped to a ROI.

Reads the stacks with :mod:`dcn_ray.io.volumes` (TIFF, OME-Zarr, zarr array, HDF5 ``file.h5:/dataset``);
every problem with the user's split or ROI raises :class:`InputError` with one line naming the setting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dcn_ray.core import context as serial
from dcn_ray.core.labels import LabelCheck
from dcn_ray.core.partial import foreground_fraction, label_masks, labelled_slices
from dcn_ray.core.scores import resolve_target
from dcn_ray.errors import InputError
from dcn_ray.io.tiff import PathLike
from dcn_ray.io.volumes import read_label_values, read_label_volume, read_volume
from dcn_ray.job.data_config import DataConfig

log = logging.getLogger(__name__)

SplitSpec = str | int | Sequence[int]


def parse_split(spec: SplitSpec, n_slices: int, *, name: str) -> list[int]:
    """Slice indices of a split: Python slice text ("0:27", "27:", "-3:", "0:30:2"), one index
    ("5"), comma-separated indices ("1,4,7"), or a list of indices (negatives count from the end).

    Bounds past the stack, duplicates, an empty result or anything else: InputError naming ``name``.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = [int(spec)]  # one slice, as `--set data.split.val=5` gives it
    if isinstance(spec, str):
        text = spec.strip()
        if ":" in text:
            return _slice_split(text, n_slices, name)
        try:
            spec = [int(part) for part in text.split(",")]
        except ValueError:
            raise InputError(f"{name}: {spec!r} is neither a slice like '0:27' nor a list of slice indices") from None
    if isinstance(spec, (bytes, dict)) or not isinstance(spec, (Sequence, np.ndarray)):
        raise InputError(f"{name} must be a slice like '0:27' or a list of slice indices, got {spec!r}")
    indices = []
    for item in spec:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise InputError(f"{name}: slice index {item!r} is not an integer")
        if not -n_slices <= item < n_slices:
            raise InputError(
                f"{name}: slice index {item} is out of range for a stack of "
                f"{n_slices} slices (valid: 0..{n_slices - 1}, or negative)"
            )
        indices.append(int(item) % n_slices)
    if not indices:
        raise InputError(f"{name}: selects no slice")
    if len(set(indices)) != len(indices):
        raise InputError(f"{name}: {list(spec)} names a slice twice")
    return indices


def _slice_split(text: str, n_slices: int, name: str) -> list[int]:
    parts = [part.strip() for part in text.split(":")]
    try:
        start, stop, step = [int(part) if part else None for part in parts + [""] * (3 - len(parts))]
    except ValueError:  # not an integer, or more than two colons
        raise InputError(f"{name}: {text!r} is not a slice like '0:27' or '0:30:2'") from None
    if step == 0:
        raise InputError(f"{name}: {text!r} has a step of 0")
    for bound in (start, stop):
        if bound is not None and not -n_slices <= bound <= n_slices:
            raise InputError(f"{name}: {text!r} reaches past a stack of {n_slices} slices")
    indices = list(range(n_slices))[slice(start, stop, step)]
    if not indices:
        raise InputError(f"{name}: {text!r} selects no slice of a stack of {n_slices} slices")
    return indices


def apply_roi(stack: np.ndarray, roi: Sequence[int] | None) -> np.ndarray:
    """Crop (Z, Y, X) to roi = (y0, x0, height, width); None keeps the whole stack."""
    if roi is None:
        return stack
    if (
        isinstance(roi, (str, bytes))
        or not isinstance(roi, Sequence)
        or len(roi) != 4
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in roi)
    ):
        raise InputError(f"ROI must be four integers (y0, x0, height, width), got {roi!r}")
    y0, x0, height, width = (int(v) for v in roi)
    image_y, image_x = stack.shape[-2:]
    if height < 1 or width < 1 or y0 < 0 or x0 < 0 or y0 + height > image_y or x0 + width > image_x:
        raise InputError(
            f"ROI (y0, x0, height, width) = ({y0}, {x0}, {height}, {width}) does not "
            f"fit in the image of {image_y} x {image_x} pixels (height x width)"
        )
    return np.ascontiguousarray(stack[..., y0 : y0 + height, x0 : x0 + width])


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images (float32 in [0, 1]) and masks (bool) of each split, all shaped (Z, Y, X).

    ``*_labelled``: for partly labelled data (:mod:`dcn_ray.core.partial`), which pixels of the
    split carry a label (bool, (Z, Y, X)); None where every pixel does.

    With serial-section ``context`` N > 0, ``<split>_inputs`` hold what the model reads for each
    slice, (Z, 2N + 1, Y, X), gathered by the rules of :mod:`dcn_ray.core.context` (training never
    reads a validation or test slice; validation and test read as prediction does); the images stay
    the slices themselves (scores, baselines, pictures).
    """

    train_images: np.ndarray
    train_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    test_images: np.ndarray | None
    test_masks: np.ndarray | None
    train_slices: list[int]
    val_slices: list[int]
    test_slices: list[int]  # [] when there is no test split
    train_labelled: np.ndarray | None = None
    val_labelled: np.ndarray | None = None
    test_labelled: np.ndarray | None = None
    #: What the foreground is ("cells" or "objects"), decided: it chooses the scores.
    target: str = "cells"
    #: Per-slice foreground of the whole (ROI-cropped) label stack; None where not measured.
    labels: LabelCheck | None = None
    context: int = 0
    train_inputs: np.ndarray | None = None  # (Z, 2N + 1, Y, X) with context N > 0, else None
    val_inputs: np.ndarray | None = None
    test_inputs: np.ndarray | None = None

    def inputs(self, split: str) -> np.ndarray | None:
        """What the model reads for ``split``'s slices: its (Z, Y, X) images without context, else
        the (Z, 2N + 1, Y, X) inputs; None for a missing test split."""
        if self.context:
            return getattr(self, f"{split}_inputs")
        return getattr(self, f"{split}_images")

    @property
    def train_foreground(self) -> float:
        """The foreground fraction of the training split's labelled pixels (what ``train.preset: auto``
        decides by, and ``weighted_ce`` weighs by)."""
        return foreground_fraction(self.train_masks, self.train_labelled)


def load_dataset(
    images: PathLike,
    labels: PathLike,
    *,
    foreground: int | str,
    train: SplitSpec,
    val: SplitSpec,
    test: SplitSpec | None = None,
    roi: Sequence[int] | None = None,
    background: int | None = None,
    unlabelled: int | None = None,
    target: str = "auto",
    context: int = 0,
) -> Dataset:
    """Read images and labels, crop to ``roi``, and cut them into the train/val/test splits (with
    each slice's ``context`` neighbours as the model's input when ``context`` > 0).

    With ``background`` or ``unlabelled`` the labels are partly labelled (:mod:`dcn_ray.core.partial`).
    ``target`` "auto" is decided from the stack's foreground fraction (:func:`~dcn_ray.core.scores.resolve_target`).
    """
    stack, labelled = read_volume(images), None
    if background is None and unlabelled is None:
        masks = read_label_volume(labels, foreground)
    elif not isinstance(foreground, int):
        raise InputError(f"data.foreground must be an integer label value for partly labelled data, got {foreground!r}")
    else:
        masks, labelled = label_masks(
            read_label_values(labels), foreground=foreground, background=background, unlabelled=unlabelled,
            source=labels,
        )  # fmt: skip
    if stack.shape != masks.shape:
        raise InputError(
            f"images {images} have shape {stack.shape} (Z, Y, X) but labels {labels} have shape {masks.shape}"
        )
    stack, masks = apply_roi(stack, roi), apply_roi(masks, roi)
    if labelled is not None:
        labelled = apply_roi(labelled, roi)
    n_slices = len(stack)
    splits = {
        "train": parse_split(train, n_slices, name="data.split.train"),
        "val": parse_split(val, n_slices, name="data.split.val"),
        "test": [] if test is None else parse_split(test, n_slices, name="data.split.test"),
    }
    where = f"labels {labels} (foreground {foreground!r}" + (f", ROI {list(roi)})" if roi else ")")
    parts = {name: None if labelled is None else labelled[indices] for name, indices in splits.items()}
    if labelled is not None:
        _check_labelled(splits, parts, where)
        parts = {name: None if part is None or part.all() else part for name, part in parts.items()}
    share = foreground_fraction(masks[splits["train"]], parts["train"])
    if share == 0.0:
        raise InputError(f"data.split.train: no foreground pixel in its slices of {where}")
    if share == 1.0:
        raise InputError(f"data.split.train: every pixel of its slices is foreground in {where}")
    if not masks[splits["val"]].any():
        log.warning("data.split.val: no foreground pixel in its slices of %s", where)
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            common = sorted(set(splits[first]) & set(splits[second]))
            if common:
                log.warning("data.split.%s and data.split.%s share %d slice(s): %s", first, second, len(common), common)
    held_out = set(splits["test"])
    for other in ("train", "val"):  # neighbouring sections look alike: a held-out block needs a gap
        touching = sorted(z for z in splits[other] if z not in held_out and {z - 1, z + 1} & held_out)
        if touching:
            log.warning(
                "data.split.test has no gap to data.split.%s: its slice(s) %s neighbour test slices in z; "
                "leave a slice out between the blocks",
                other,
                touching,
            )
    test_slices = splits["test"]
    labels_check = LabelCheck.of(masks, labelled)
    inputs = _context_inputs(stack, splits, context) if context else {}
    return Dataset(
        train_images=stack[splits["train"]],
        train_masks=masks[splits["train"]],
        val_images=stack[splits["val"]],
        val_masks=masks[splits["val"]],
        test_images=stack[test_slices] if test_slices else None,
        test_masks=masks[test_slices] if test_slices else None,
        train_slices=splits["train"],
        val_slices=splits["val"],
        test_slices=test_slices,
        train_labelled=parts["train"],
        val_labelled=parts["val"],
        test_labelled=parts["test"] if test_slices else None,
        target=resolve_target(target, labels_check.stack),
        labels=labels_check,
        context=context,
        **inputs,
    )


def _check_labelled(splits: dict[str, list[int]], parts: dict[str, np.ndarray | None], where: str) -> None:
    """Every split needs a labelled pixel; a scored split's unlabelled slices are named in one line."""
    for name, indices in splits.items():
        part = parts[name]
        if not indices or part is None:
            continue
        has = labelled_slices(part, len(indices))
        if not has.any():
            raise InputError(
                f"data.split.{name}: no labelled pixel in its slices of {where}"
                + ("" if name == "train" else "; it is scored on labelled pixels only: label some of them")
            )
        if name != "train" and not has.all():
            missing = [z for z, kept in zip(indices, has) if not kept]
            log.warning("data.split.%s: slice(s) %s hold no labelled pixel and are not scored", name, missing)


def _context_inputs(stack: np.ndarray, splits: dict[str, list[int]], context: int) -> dict[str, np.ndarray | None]:
    """Each split's (Z, 2N + 1, Y, X) inputs: training within its allowed runs, the others as predicted."""
    n_slices = len(stack)
    forbidden = serial.forbidden_for_training(splits["train"], splits["val"], splits["test"])
    rows = {
        "train": [serial.training_neighbours(z, context, n_slices, forbidden) for z in splits["train"]],
        "val": [serial.neighbours(z, context, n_slices) for z in splits["val"]],
        "test": [serial.neighbours(z, context, n_slices) for z in splits["test"]],
    }
    return {f"{name}_inputs": serial.gather(stack, table) if table else None for name, table in rows.items()}


def load_data(data: DataConfig, *, context: int = 0) -> Dataset:
    """The splits of a job's ``data`` section (``images``, ``labels``, ``split``, ``roi``), with the
    inputs of a model of ``context`` (the job's ``model.context``)."""
    return load_dataset(
        data.images, data.labels, foreground=data.foreground, train=data.split.train,
        val=data.split.val, test=data.split.test, roi=data.roi, background=data.background,
        unlabelled=data.unlabelled, target=data.target, context=context,
    )  # fmt: skip
