"""``dcn-ray export``: a trained model as a BioImage.IO model package."""

from __future__ import annotations

from pathlib import Path

import click

from dcn_ray.cli.common import model_source


@click.command()
@click.argument("model")
@click.argument("output_path", metavar="OUT.zip", type=click.Path(dir_okay=False, path_type=Path))
@model_source
@click.option("--author", "authors", multiple=True, help="NAME or NAME;AFFILIATION;ORCID (repeatable).")
@click.option("--license", "license_id", default="CC-BY-4.0", show_default=True, help="SPDX licence of the package.")
@click.option("--cite", multiple=True, help="TEXT;DOI or TEXT;URL to cite beside the DCN paper (repeatable).")
@click.option("--name", help="The package's name (default: family and kernels).")
@click.option("--description", help="One sentence on what the model does (default: family, kernels, sweep).")
def export(
    model: str,
    output_path: Path,
    storage: str | None,
    tracking_uri: str | None,
    authors: tuple[str, ...],
    license_id: str,
    cite: tuple[str, ...],
    name: str | None,
    description: str | None,
) -> None:
    """Write MODEL as a BioImage.IO model package OUT.zip (bioimageio.spec 0.5), for ilastik, deepImageJ, napari.

    MODEL is any source predict takes: a checkpoint file or folder, runs:/<run_id>,
    models:/<name>/<version>, models:/<name>@<alias> or sweep:<name>. Its job's test split gives the
    package's test input and expected output, and the test scores in its provenance.
    """
    from dcn_ray.errors import InputError

    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise InputError("export needs bioimageio.core: pip install 'dcn-ray[export]'") from None
    from dcn_ray.export.package import ExportOptions, export_package

    options = ExportOptions(authors=authors, license=license_id, cite=cite, name=name, description=description)
    result = export_package(model, output_path, options, storage=storage, tracking_uri=tracking_uri)
    scores = ", ".join(
        f"{key} {value:.4f}"
        for key, value in result.test_scores.items()
        if key in ("test_iou", "test_vrand", "test_object_f1")
    )
    click.echo(f"wrote {result.output}: halo {result.halo} px; {scores}")
