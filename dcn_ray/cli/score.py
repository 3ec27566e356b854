"""``dcn-ray score``: score a segmentation or probability stack against ground truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click


@click.command()
@click.argument("prediction", metavar="PRED", type=click.Path(path_type=Path))
@click.argument("truth", metavar="TRUTH", type=click.Path(path_type=Path))
@click.option(
    "--foreground", default="255", show_default=True, help="Label value of TRUTH's cell interior, or 'color'."
)
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    callback=lambda _ctx, _param, value: _finite(value),
    help="Foreground where PRED's probability exceeds it (IoU, Dice, membrane IoU, pixel error).",
)
@click.option(
    "--thresholds",
    default=None,
    metavar="T1,T2,...",
    help="Thresholds over which V_rand and V_info are maximised (default: the challenge's 0.0, 0.1, ..., 0.9).",
)
@click.option("--invert", is_flag=True, help="PRED holds the membrane (background) probability.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def score(
    prediction: Path,
    truth: Path,
    foreground: str,
    threshold: float,
    thresholds: str | None,
    invert: bool,
    as_json: bool,
) -> None:
    """Score PRED (foreground probabilities or a mask) against TRUTH (labels), as the ISBI 2012 scorer does.

    IoU (the paper's metric), Dice, membrane IoU and pixel error at --threshold; V_rand and V_info
    under the challenge's protocol (per slice, thinned boundaries, foreground-restricted), each the
    best over --thresholds, with the threshold that gave it; the IoU of the all-foreground and
    all-background predictions on the same slices beside them. PRED and TRUTH are TIFF stacks,
    OME-Zarr images (a dcn-ray predict output too), zarr arrays or HDF5 datasets (file.h5:/path).
    """
    from dcn_ray.core.evaluation import format_scores, parse_foreground, parse_thresholds, score_stacks
    from dcn_ray.core.metrics import ISBI_THRESHOLDS

    scores = score_stacks(
        prediction,
        truth,
        foreground=parse_foreground(foreground),
        threshold=threshold,
        thresholds=parse_thresholds(thresholds) if thresholds is not None else ISBI_THRESHOLDS,
        invert=invert,
    )
    if not as_json:
        click.echo(f"{prediction}: read as {scores['prediction_read_as']}", err=True)
    click.echo(json.dumps(scores) if as_json else format_scores(scores))


def _finite(value: float) -> float:
    if math.isnan(value):
        raise click.BadParameter("must be a number in [0, 1), not NaN", param_hint="'--threshold'")
    return value
