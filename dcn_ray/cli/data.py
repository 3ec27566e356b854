"""``dcn-ray synth``: a synthetic EM-like stack, so anyone can run dcn-ray with no download."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--slices", default=24, show_default=True, type=click.IntRange(1))
@click.option("--size", default=256, show_default=True, type=click.IntRange(16))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--task",
    default="cells",
    show_default=True,
    type=click.Choice(["cells", "organelles"]),
    help="cells: label 255 = cell interior (~80 %, like ISBI 2012); organelles: 255 = small dark "
    "mitochondria-like blobs only (~4-5 %, a sparse foreground).",
)
def synth(out_dir: Path, slices: int, size: int, seed: int, task: str) -> None:
    """Write a synthetic EM-like stack (images.tif, labels.tif) to OUT_DIR."""
    from dcn_ray.io.synth import write_synthetic

    images, labels = write_synthetic(out_dir, slices=slices, size=size, seed=seed, task=task)
    click.echo(f"wrote {images} and {labels}")
