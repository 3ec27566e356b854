"""``dcn-ray predict`` and ``dcn-ray inspect``: apply a trained model to a stack."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from dcn_ray.cli.common import device_option, labels_option, model_source, slices_option
from dcn_ray.cli.common import echo as _echo


class _ProgressBar:
    """A progress bar on stderr showing slices per second; opened at the first call."""

    def __init__(self) -> None:
        self.bar = None
        self.started = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():  # a log or a pipe gets the summary line alone
            return
        if self.bar is None:
            self.started = time.perf_counter()
            self.bar = click.progressbar(
                length=total, label="predicting", file=sys.stderr, show_pos=True, item_show_func=lambda rate: rate
            )
            self.bar.__enter__()
        if done:
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(1, f"{rate:.2f} slices/s")
        if done == total:  # its line ends before the --labels scoring's bar starts
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


class _BlockBar(_ProgressBar):
    """Blocks done, voxels per second and the time left; on a terminal only."""

    def __call__(self, done: int, total: int, voxels: int) -> None:  # type: ignore[override]
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            self.started = time.perf_counter()
            self.bar = click.progressbar(
                length=total, label="blocks", file=sys.stderr, show_pos=True, show_eta=True, item_show_func=str
            )
            self.bar.__enter__()
            self.bar.update(done)  # written by an earlier run (--resume)
        elif done:
            self.bar.update(1, _voxel_rate(voxels / max(time.perf_counter() - self.started, 1e-9)))


def _voxel_rate(rate: float) -> str:
    """``12.34 Mvoxel/s``, ``56.7 kvoxel/s`` or ``89 voxel/s``."""
    for unit, scale in (("Mvoxel/s", 1e6), ("kvoxel/s", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.{2 if scale == 1e6 else 1}f} {unit}"
    return f"{rate:.0f} voxel/s"


def _chunk(text: str | None) -> tuple[int, int, int] | None:
    from dcn_ray.errors import InputError

    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"--chunk {text}: give three positive integers Z,Y,X, e.g. 1,512,512")
    return values  # type: ignore[return-value]


@click.command()
@click.argument("model")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@model_source
@click.option(
    "--tile",
    default=2048,
    show_default=True,
    type=int,
    help="Tile side in pixels (a multiple of 8): the most the model sees at once; lower it to save memory.",
)
@click.option(
    "--overlap",
    default=128,
    show_default=True,
    type=int,
    help="Pixels neighbouring tiles share (a multiple of 8); twice the model's receptive radius (54 px for 4-8-16; OME-Zarr blocks read a halo of it rounded up to 8: 56) gives the whole-slice result.",
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
@labels_option(
    "Ground truth: also print the scores `dcn-ray score` gives (IoU, Dice, ...; V_rand or object F1 by --target)."
)
@slices_option(
    "INPUT's slices to segment, as data.split writes them (20:28, 3,5,9; one range for OME-Zarr): OUTPUT holds "
    "those alone, and --labels (as deep as INPUT, or cut by --label-slices) are cut alike."
)
@click.option(
    "--label-slices",
    metavar="A:B",
    help="The --labels slices INPUT holds, as data.split writes them (20:28, 3,5,9), for an INPUT cut from a larger stack.",
)
@click.option(
    "--target",
    default="auto",
    show_default=True,
    help="What --labels' foreground is: cells, objects, or auto (the model's data.target, else by the labels).",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Ray actors to spread slices (TIFF output) or blocks (OME-Zarr output) over; one GPU each where there are GPUs.",
)
@click.option("--address", help="Ray cluster to predict on (default: this process, or a local Ray with --workers).")
@device_option
@click.option(
    "--level", default=0, show_default=True, type=click.IntRange(0), help="Pyramid level of an OME-Zarr input."
)
@click.option("--chunk", metavar="Z,Y,X", help="Chunks of an OME-Zarr output (default 1,512,512).")
@click.option(
    "--block",
    type=click.IntRange(1),
    help="Block side (Y and X, a multiple of the chunk side) of an OME-Zarr output (default: whole slices "
    "when they fit in a tile, else the largest block whose halo fits).",
)
@click.option(
    "--ngff", type=click.Choice(["0.4", "0.5"]), default="0.4", show_default=True, help="OME-Zarr output version."
)
@click.option("--label-image", is_flag=True, help="Also write the mask as the label image labels/mask (OME-Zarr).")
@click.option("--resume", is_flag=True, help="Finish an interrupted OME-Zarr output, skipping the blocks it wrote.")
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
    slices: str | None,
    label_slices: str | None,
    target: str,
    workers: int | None,
    address: str | None,
    device: str | None,
    level: int,
    chunk: str | None,
    block: int | None,
    ngff: str,
    label_image: bool,
    resume: bool,
) -> None:
    """Segment INPUT with MODEL into OUTPUT (a TIFF stack, or an OME-Zarr image ending in .zarr).

    INPUT is a TIFF stack or image, an OME-Zarr image (NGFF 0.4 or 0.5), a zarr array, or an HDF5
    dataset given as file.h5:/path/to/dataset. MODEL is a checkpoint file or folder,
    runs:/<run_id>, models:/<name>/<version> or sweep:<name>.
    """
    from dcn_ray.runtime import keep_local_ray_on_loopback

    keep_local_ray_on_loopback(address)
    from dcn_ray.core.evaluation import format_scores, parse_target
    from dcn_ray.models import describe
    from dcn_ray.predict.stack import PredictOptions, check_paths, predict_stack

    parse_target(target)
    given = {"label_slices": label_slices, "target": target, "score_progress": _score_bar(labels_path)}
    from dcn_ray.track.sources import load_source

    options = PredictOptions(
        tile=tile, overlap=overlap, tta=tta, output=output_kind, threshold=threshold, device=device
    )
    from dcn_ray.io.volumes import is_zarr_path, open_volume

    if is_zarr_path(output_path):
        _predict_volume(
            model, input_path, output_path, options, storage=storage, tracking_uri=tracking_uri,
            labels=labels_path, workers=workers, address=address, level=level, chunks=_chunk(chunk), block=block,
            ngff=ngff, label_image=label_image, resume=resume, slices=slices, **given,
        )  # fmt: skip
        return
    _tiff_only(chunk=chunk, block=block, ngff=ngff != "0.4", label_image=label_image, resume=resume)
    # The files first, then the model (nothing is printed before either could fail)
    paths = {"labels": labels_path, "level": level, "label_slices": label_slices, "slices": slices}
    check_paths(input_path, output_path, model=model if Path(model).exists() else None, **paths)
    loaded = load_source(model, storage=storage, tracking_uri=tracking_uri)
    check_paths(input_path, output_path, model=loaded.location, **paths)
    open_volume(input_path, level)  # its values too (NaN is refused) before anything is printed
    bar = _ProgressBar()
    try:
        result = predict_stack(
            loaded, input_path, output_path, options, labels=labels_path, workers=workers, address=address,
            progress=bar, level=level, slices=slices, **given,
        )  # fmt: skip
    finally:
        bar.close()
    # Said once done: an error found on the way (a damaged page, a failed worker) is then the only line
    _echo(f"model {model}: {describe(loaded.model)} ({loaded.location})")
    rate = result.slices / max(result.seconds, 1e-9)
    _echo(f"wrote {result.output}: {result.slices} slice(s) in {result.seconds:.1f} s ({rate:.2f} slices/s)")
    if result.scores is not None:
        _echo(result.scores["target_line"])
        click.echo(format_scores(result.scores))


def _score_bar(labels: Path | None):
    """The --labels scoring's progress (the cells watershed, slice by slice) where stderr is a terminal."""
    if labels is None or not sys.stderr.isatty():
        return None
    from dcn_ray.cli.score import SliceBar

    return SliceBar()


def _tiff_only(**given: object) -> None:
    from dcn_ray.errors import InputError

    for name, value in given.items():
        if value:
            option = "--" + name.replace("_", "-")
            raise InputError(f"{option}: only for OME-Zarr outputs (an OUTPUT ending in .zarr)")


def _predict_volume(model: str, input_path: Path, output_path: Path, options, **settings) -> None:
    """The OME-Zarr output of ``predict``: blocks, resumable, on Ray with --workers or --address."""
    from dcn_ray.core.evaluation import format_scores
    from dcn_ray.models import describe
    from dcn_ray.predict.volume import check_volume_paths, predict_volume
    from dcn_ray.track.sources import load_source

    storage, tracking_uri = settings.pop("storage"), settings.pop("tracking_uri")
    paths = {key: settings[key] for key in ("labels", "level", "label_slices", "slices")}
    check_volume_paths(input_path, output_path, model=model if Path(model).exists() else None, **paths)
    loaded = load_source(model, storage=storage, tracking_uri=tracking_uri)
    check_volume_paths(input_path, output_path, model=loaded.location, **paths)
    bar = _BlockBar()
    try:
        result = predict_volume(loaded, input_path, output_path, options, progress=bar, **settings)
    finally:
        bar.close()
    # Said once done: an error found on the way (a damaged chunk, a failed worker) is then the only line
    _echo(f"model {model}: {describe(loaded.model)} ({loaded.location})")
    rate = _voxel_rate(result.voxels / max(result.seconds, 1e-9))
    skipped = f", {result.skipped} written before" if result.skipped else ""
    _echo(
        f"wrote {result.output}: {result.blocks} block(s){skipped}, {result.voxels} voxels predicted in "
        f"{result.seconds:.1f} s ({rate})"
    )
    if result.scores is not None:
        _echo(result.scores["target_line"])
        click.echo(format_scores(result.scores))


@click.command()
@click.argument("model")
@click.argument("stack", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@labels_option("Labels (default: those of the model's job).", dir_okay=False)
@slices_option("Slices to score, e.g. 27:30 (default: the job's validation split).")
@model_source
def inspect(
    model: str,
    stack: Path,
    out_dir: Path,
    labels_path: Path | None,
    slices: str | None,
    storage: str | None,
    tracking_uri: str | None,
) -> None:
    """Write the F1-F3 montage and branch scores of MODEL on STACK; print the weak branch and follow-ups.

    MODEL: a checkpoint file or folder, runs:/<run_id>, models:/<name>/<version> or sweep:NAME.
    """
    from dcn_ray.predict.inspection import inspect_model

    click.echo(
        inspect_model(
            model, stack, out_dir, labels=labels_path, slices=slices, storage=storage, tracking_uri=tracking_uri
        )
    )
