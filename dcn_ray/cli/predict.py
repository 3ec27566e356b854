"""The ``dcn-ray predict`` and ``dcn-ray register`` commands (attached to the group in cli.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


def _echo(message: str) -> None:
    click.echo(message, err=True)


class _ProgressBar:
    """A progress bar on stderr showing slices per second; opened at the first call."""

    def __init__(self) -> None:
        self.bar = None
        self.started = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.started = time.perf_counter()
            self.bar = click.progressbar(
                length=total, label="predicting", file=sys.stderr, show_pos=True, item_show_func=lambda rate: rate
            )
            self.bar.__enter__()
        if done:
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(1, f"{rate:.2f} slices/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command()
@click.argument("model")
@click.argument("input_path", metavar="INPUT.tif", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT.tif", type=click.Path(path_type=Path))
@click.option("--storage", help="Where sweep:NAME was run (default ./dcn-ray-runs).")
@click.option(
    "--tracking-uri",
    help="MLflow of runs:/ and models:/ (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).",
)
@click.option("--tile", default=512, show_default=True, type=int, help="Tile side in pixels (a multiple of 8).")
@click.option(
    "--overlap",
    default=128,
    show_default=True,
    type=int,
    help="Pixels neighbouring tiles share (a multiple of 8); twice the model's receptive radius (54 for 4-8-16) gives the whole-slice result.",
)
@click.option("--tta/--no-tta", default=True, show_default=True, help="Average over the 8 flips and rotations.")
@click.option(
    "--output",
    "output_kind",
    type=click.Choice(["probabilities", "mask", "float"]),
    default="probabilities",
    show_default=True,
    help="uint8 0-255 probabilities, a uint8 0/255 mask, or float32 probabilities.",
)
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=float,
    help="Foreground above this probability (mask, --labels).",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(path_type=Path),
    help="Ground truth: also print IoU, Dice, pixel error, V_rand, V_info.",
)
@click.option(
    "--workers", type=click.IntRange(1), help="Ray actors to spread slices over (one GPU each where there are GPUs)."
)
@click.option("--address", help="Ray cluster to predict on (default: this process, or a local Ray with --workers).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when a GPU is visible.")
def predict(
    model: str,
    input_path: Path,
    output_path: Path,
    storage: str | None,
    tracking_uri: str | None,
    tile: int,
    overlap: int,
    tta: bool,
    output_kind: str,
    threshold: float,
    labels_path: Path | None,
    workers: int | None,
    address: str | None,
    device: str | None,
) -> None:
    """Segment INPUT.tif (a stack or one image) with MODEL into OUTPUT.tif.

    MODEL is a checkpoint file or folder, runs:/<run_id>, models:/<name>/<version> or sweep:<name>.
    """
    from dcn_ray.runtime import keep_local_ray_on_loopback

    keep_local_ray_on_loopback(address)
    from dcn_ray.core.kernels import kernels_text
    from dcn_ray.predict.stack import PredictOptions, format_scores, predict_stack
    from dcn_ray.track.sources import load_source

    options = PredictOptions(
        tile=tile, overlap=overlap, tta=tta, output=output_kind, threshold=threshold, device=device
    )
    loaded = load_source(model, storage=storage, tracking_uri=tracking_uri)
    _echo(f"model {model}: kernels {kernels_text(loaded.model.kernels)} ({loaded.location})")
    bar = _ProgressBar()
    try:
        result = predict_stack(
            loaded, input_path, output_path, options, labels=labels_path, workers=workers, address=address, progress=bar
        )
    finally:
        bar.close()
    rate = result.slices / max(result.seconds, 1e-9)
    _echo(f"wrote {result.output}: {result.slices} slice(s) in {result.seconds:.1f} s ({rate:.2f} slices/s)")
    if result.scores is not None:
        click.echo(format_scores(result.scores))


@click.command()
@click.argument("name")
@click.argument("model_name")
@click.option("--storage", help="The storage the sweep was run with (default ./dcn-ray-runs).")
def register(name: str, model_name: str, storage: str | None) -> None:
    """Register the best trial of sweep NAME as a new version of MODEL_NAME in its MLflow registry."""
    from dcn_ray.core.kernels import kernels_text
    from dcn_ray.track.sources import register_best

    version, best = register_best(name, model_name, storage=storage)
    _echo(
        f"best trial of sweep '{name}': kernels {kernels_text(best.kernels)}, val IoU {best.best_val_iou:.4f} "
        f"(MLflow run {best.mlflow_run_id} in {best.tracking_uri})"
    )
    click.echo(f"registered {model_name} version {version}")
