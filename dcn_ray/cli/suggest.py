"""``dcn-ray suggest``: rank where to label next on a stack, by the model's uncertainty."""

from __future__ import annotations

from pathlib import Path

import click

from dcn_ray.cli.common import device_option, echo, labels_option, model_source


@click.command()
@click.argument("model")
@click.argument("stack", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--top", default=20, show_default=True, type=int, help="Tiles to list and paint in the suggested labels.")
@click.option("--region", default=256, show_default=True, type=int, help="Side of the square tiles ranked (pixels).")
@click.option(
    "--score",
    type=click.Choice(["disagreement", "entropy"]),
    default="disagreement",
    show_default=True,
    help="disagreement: mutual information of the 8 TTA views (BALD); entropy: of their mean probability.",
)
@labels_option("The labels painted so far (napari's layer): labelled pixels are not suggested again.")
@click.option(
    "--unlabelled", default=0, show_default=True, type=int, help="The --labels value of a pixel not labelled yet."
)
@click.option(
    "--format",
    "map_format",
    type=click.Choice(["tiff", "ome-zarr"]),
    default="tiff",
    show_default=True,
    help="The map and the tiles as two TIFF stacks, or as one OME-Zarr image (the map) with its label image.",
)
@model_source
@device_option
def suggest(
    model: str,
    stack: Path,
    out: Path,
    top: int,
    region: int,
    score: str,
    labels_path: Path | None,
    unlabelled: int,
    map_format: str,
    storage: str | None,
    tracking_uri: str | None,
    device: str | None,
) -> None:
    """Rank where to label next on STACK with MODEL; write the ranking and an uncertainty map into the folder OUT.

    OUT gets ranking.csv and ranking.json (every slice and the --top tiles, by the mean --score over
    their unlabelled pixels) and the map napari opens over the stack: uncertainty.tif (the score per
    pixel) and suggested.tif (the --top tiles painted with their rank, a labels layer), or with
    --format ome-zarr uncertainty.ome.zarr (the score as the image, the tiles as its label image
    labels/suggested). MODEL is a checkpoint, runs:/<run_id>, models:/<name>/<version> or sweep:<name>.
    """
    from dcn_ray.predict.suggest import FILES, SuggestOptions, check_paths
    from dcn_ray.predict.suggest import suggest as run

    options = SuggestOptions(top=top, region=region, score=score, unlabelled=unlabelled, format=map_format)
    paths = {"labels": labels_path, "format": map_format}
    check_paths(stack, out, model=model if Path(model).exists() else None, **paths)
    from dcn_ray.models import describe
    from dcn_ray.track.sources import load_source

    loaded = load_source(model, storage=storage, tracking_uri=tracking_uri)
    check_paths(stack, out, model=loaded.location, **paths)  # a sweep's or run's model file too
    echo(f"model {model}: {describe(loaded.model)} ({loaded.location})")
    result = run(loaded, stack, out, options, labels=labels_path, device=device)
    click.echo(f"rank  kind   z     y0     x0  {score}")
    for row in result.slices[:top] + result.tiles:
        click.echo(f"{row['rank']:>4}  {row['kind']:<5} {row['z']:>3} {row['y0']:>6} {row['x0']:>6}  {row[score]:.4f}")
    echo(f"wrote {out}: {', '.join(FILES[map_format])}")
