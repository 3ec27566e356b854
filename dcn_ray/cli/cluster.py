"""``dcn-ray submit``, ``status`` and ``logs``: sweeps on a Ray cluster through its Jobs API."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dcn_ray.cli.common import echo as _echo


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--address", required=True, help="The cluster's Jobs API, e.g. http://head:8265.")
@click.option("--name", help="Sweep name (default: the job's name).")
@click.option("--storage", help="Storage every node sees (a shared path, s3:// or gs://).")
@click.option("--tracking-uri", help="MLflow tracking URI the cluster can reach.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a job key (repeatable).")
@click.option("--follow", is_flag=True, help="Stream the sweep's logs until it ends.")
def submit(
    job_file: Path,
    address: str,
    name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
    follow: bool,
) -> None:
    """Submit the sweep of JOB_FILE to a Ray cluster through the Jobs API; print the submission id."""
    from dcn_ray.tune import submit as jobs

    submission = jobs.submit_sweep(
        job_file, address=address, overrides=overrides, name=name, storage=storage, tracking_uri=tracking_uri
    )
    click.echo(submission)
    if follow:
        status = jobs.follow_logs(address, submission, click.echo)
        _echo(f"submission {submission}: {status}")
        if status != "SUCCEEDED":
            sys.exit(1)


@click.command()
@click.argument("submission_id")
@click.option("--address", required=True, help="The cluster's Jobs API, e.g. http://head:8265.")
def status(submission_id: str, address: str) -> None:
    """Print the status of a submitted sweep (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from dcn_ray.tune import submit as jobs

    click.echo(jobs.job_status(address, submission_id))


@click.command()
@click.argument("submission_id")
@click.option("--address", required=True, help="The cluster's Jobs API, e.g. http://head:8265.")
@click.option("--follow", is_flag=True, help="Keep streaming until the submission ends.")
def logs(submission_id: str, address: str, follow: bool) -> None:
    """Print the logs of a submitted sweep."""
    from dcn_ray.tune import submit as jobs

    if follow:
        jobs.follow_logs(address, submission_id, click.echo)
    else:
        click.echo(jobs.job_logs(address, submission_id), nl=False)
