"""What the commands share: the one way they speak (stderr) and the options several of them take,
each defined once (where models and sweeps are, the device, the labels, a slice range)."""

from __future__ import annotations

from pathlib import Path

import click


def echo(message: str) -> None:
    """A line for the user on stderr (stdout holds a command's results)."""
    click.echo(message, err=True)


#: ``--storage`` and ``--tracking-uri`` of a command taking a MODEL (a file, ``sweep:NAME``, ``runs:/``, ``models:/``).
model_storage = click.option("--storage", help="Where sweep:NAME was run (default ./dcn-ray-runs).")
model_tracking = click.option(
    "--tracking-uri",
    help="MLflow of runs:/ and models:/ (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).",
)
#: ``--storage`` of a command taking the NAME of a sweep already run.
sweep_storage = click.option("--storage", help="The storage the sweep was run with (default ./dcn-ray-runs).")
#: ``--device`` of a command running a model (predict, suggest).
device_option = click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when a GPU is visible."
)


def model_source(command):
    """``--storage`` and ``--tracking-uri``: where a MODEL argument is found."""
    return model_storage(model_tracking(command))


def labels_option(help: str, **path: bool):
    """``--labels`` (the parameter ``labels_path``): a label stack, what it is for said by ``help``."""
    return click.option("--labels", "labels_path", type=click.Path(path_type=Path, **path), help=help)


def slices_option(help: str):
    """``--slices A:B``: slices as ``data.split`` writes them (20:28, 3,5,9), what they pick said by ``help``."""
    return click.option("--slices", default=None, metavar="A:B", help=help)
