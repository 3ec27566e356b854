"""The ``data`` section of a job: the stack, its labels, the splits and the synthetic fallback.

Split out of :mod:`dcn_ray.job.config` (which validates them), as
:mod:`dcn_ray.job.model_config` and :mod:`dcn_ray.job.train_config` are, so that ``core`` takes the
section it reads and never the whole job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: A split: slice text ("0:27"), one slice index (5), or a list of indices.
Split = str | int | tuple[int, ...]


@dataclass(frozen=True)
class SplitConfig:
    """Slices of the stack used for training, validation and (optionally) testing."""

    train: Split = "0:27"
    val: Split = "27:30"
    test: Split | None = None


@dataclass(frozen=True)
class SynthConfig:
    """Make the data with ``dcn-ray synth`` settings when the files are missing."""

    slices: int = 24
    size: int = 256
    seed: int = 0
    #: "cells" (cell interior, ~80 % of pixels, as ISBI) or "organelles" (sparse blobs, ~4 %).
    task: str = "cells"


@dataclass(frozen=True)
class DataConfig:
    images: str = ""
    labels: str = ""
    #: Label value of the foreground (ISBI: 255 = cell interior), or "color" for RGB labels.
    foreground: int | str = 255
    #: Partly labelled data (napari's labels layer paints 1, 2, ...; 0 is unpainted): the label value
    #: of the background; every value that is neither it nor ``foreground`` is unlabelled. None
    #: (default): every value but ``foreground`` is background, every pixel labelled.
    background: int | None = None
    #: Or: the one label value that marks unlabelled pixels (every other value but ``foreground`` is
    #: background). Unlabelled pixels add nothing to the loss and count in no score.
    unlabelled: int | None = None
    #: What the foreground is, which decides the scores: "cells" (cell interior, ISBI: V_rand / V_info),
    #: "objects" (mitochondria, synapses: object precision / recall / F1), or "auto" (by the labels'
    #: foreground fraction: dcn_ray.core.scores.resolve_target).
    target: str = "auto"
    #: Accept validation or test slices without any foreground (else each is named in a warning).
    allow_empty_slices: bool = False
    #: Region of interest (y0, x0, height, width), or None for the whole slice.
    roi: tuple[int, ...] | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    synthetic: SynthConfig | None = None
