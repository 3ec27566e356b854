"""``dcn-ray score``: score a segmentation or probability stack against ground truth."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from dcn_ray.cli.common import echo, slices_option


@click.command()
@click.argument("prediction", metavar="PRED", type=click.Path(path_type=Path))
@click.argument("truth", metavar="TRUTH", type=click.Path(path_type=Path))
@click.option("--foreground", default="255", show_default=True, help="Label value of TRUTH's foreground, or 'color'.")
@click.option(
    "--background",
    type=int,
    help="Partly labelled TRUTH (napari's labels layer: --foreground 1 --background 2, 0 unpainted): the "
    "background value; every other value is unlabelled and counts in no score (as data.background).",
)
@click.option(
    "--unlabelled",
    type=int,
    help="Or the one value of TRUTH's unlabelled pixels (every other value but --foreground is background; "
    "as data.unlabelled).",
)
@click.option(
    "--target",
    default="auto",
    show_default=True,
    help="What the foreground is: cells (cell interior: V_rand / V_info), objects (mitochondria, synapses: "
    "object precision / recall / F1), or auto (by TRUTH's foreground fraction, said first).",
)
@slices_option(
    "TRUTH's slices that PRED holds, as data.split writes them (20:28, 3,5,9); a PRED as deep as TRUTH is cut alike."
)
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    callback=lambda _ctx, _param, value: _finite(value),
    help="Foreground where PRED's probability exceeds it (every score named 'at' it).",
)
@click.option(
    "--thresholds",
    default=None,
    metavar="T1,T2,...",
    help="Cells: thresholds over which V_rand best and V_info best are maximised (default: the challenge's "
    "0.0, 0.1, ..., 0.9).",
)
@click.option("--invert", is_flag=True, help="PRED holds the membrane (background) probability.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def score(
    prediction: Path,
    truth: Path,
    foreground: str,
    background: int | None,
    unlabelled: int | None,
    target: str,
    slices: str | None,
    threshold: float,
    thresholds: str | None,
    invert: bool,
    as_json: bool,
) -> None:
    """Score PRED (foreground probabilities or a mask) against TRUTH (labels), with the scores of the target.

    IoU (the paper's metric), Dice, pixel error and the background's IoU at --threshold. Cells (cell
    interior, ISBI 2012): V_rand and V_info under the challenge's protocol (per slice, thinned
    boundaries, foreground-restricted) at --threshold, and each at its best over --thresholds
    ("V_rand best", with the threshold that gave it; the challenge reports the best). Objects
    (mitochondria, synapses): object precision, recall and F1 of connected components matched at
    IoU >= 0.5, and the object counts; no watershed, seconds for large stacks. The IoU of the
    all-foreground and all-background predictions on the same slices beside them. PRED and TRUTH are
    TIFF stacks, OME-Zarr images (a dcn-ray predict output too), zarr arrays or HDF5 datasets (file.h5:/path).
    With --background or --unlabelled, TRUTH is partly labelled (scribbles, a few painted slices): every
    score counts its labelled pixels alone, slices without one are left out, and a line says how many.
    """
    from dcn_ray.core.evaluation import (
        format_scores,
        parse_foreground,
        parse_target,
        parse_thresholds,
        score_stacks,
    )
    from dcn_ray.core.metrics import ISBI_THRESHOLDS

    bar = SliceBar() if sys.stderr.isatty() and not as_json else None
    try:
        scores = score_stacks(
            prediction,
            truth,
            foreground=parse_foreground(foreground),
            target=parse_target(target),
            threshold=threshold,
            thresholds=parse_thresholds(thresholds) if thresholds is not None else ISBI_THRESHOLDS,
            invert=invert,
            slices=slices,
            progress=bar,
            background=background,
            unlabelled=unlabelled,
        )
    finally:
        if bar is not None:
            bar.close()
    if not as_json:
        echo(f"{prediction}: read as {scores['prediction_read_as']}")
        echo(scores["target_line"])
    click.echo(json.dumps(scores) if as_json else format_scores(scores))


class SliceBar:
    """The cells target's watershed, slice by slice, on a terminal's stderr (opened at the first slice)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:  # closed when the last slice is in
            self.bar = click.progressbar(length=total, label="scoring slices", file=sys.stderr, show_eta=True)
            self.bar.__enter__()
        self.bar.update(1)
        if done == total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _finite(value: float) -> float:
    if math.isnan(value):
        raise click.BadParameter("must be a number in [0, 1), not NaN", param_hint="'--threshold'")
    return value
