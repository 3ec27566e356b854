"""What the commands share: the one way they speak (stderr) and the options naming where models and sweeps are."""

from __future__ import annotations

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


def model_source(command):
    """``--storage`` and ``--tracking-uri``: where a MODEL argument is found."""
    return model_storage(model_tracking(command))
