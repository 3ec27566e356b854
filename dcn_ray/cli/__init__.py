"""The ``dcn-ray`` command: parse, call one function, turn known errors into one line.

Exit codes: 0 done, 2 bad input (one line on stderr naming the problem), 1 a failure while running.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from dcn_ray import __version__
from dcn_ray.cli.predict import predict, register
from dcn_ray.errors import InputError
from dcn_ray.runtime import keep_local_ray_on_loopback

log = logging.getLogger("dcn_ray")


def _echo(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dcn-ray")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
def cli(verbose: bool) -> None:
    """Tune the Deep Contextual Network for EM segmentation on Ray, tracked in MLflow."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    for noisy in ("ray", "mlflow", "alembic", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    quiet = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "DEBUG" if verbose else "WARNING",
    }
    for name, value in quiet.items():
        os.environ.setdefault(name, value)


@cli.command()
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Sweep name (default: the job's name).")
@click.option("--storage", help="Where the sweep's Tune state and results go (default ./dcn-ray-runs).")
@click.option("--address", help="Ray cluster: ray://host:10001 or host:6379 (default: a local Ray).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a job key (repeatable).")
@click.option("--dry-run", is_flag=True, help="Check the job and list its trials; train nothing.")
def sweep(
    job_file: Path,
    name: str | None,
    storage: str | None,
    address: str | None,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Run the kernel sweep of JOB_FILE (the grid, then feature-map-guided follow-ups)."""
    keep_local_ray_on_loopback(address)
    from dcn_ray.job_file import load_job
    from dcn_ray.tune import sweep as sweeps
    from dcn_ray.tune.progress import Progress

    extra = (
        list(overrides)
        + ([f"name={name}"] if name else [])
        + ([f"tracking.uri={tracking_uri}"] if tracking_uri else [])
    )
    job = load_job(job_file, extra)
    if dry_run:  # both checks before any output: a problem is then the only line shown
        summaries = [sweeps.check_data(job), sweeps.check_resources(job, address)]
        _echo("\n".join(summaries))
        click.echo("\n".join(sweeps.planned_trials(job)))
        return
    outcome = sweeps.run_sweep(
        job, job_text=job_file.read_text(), storage=storage, address=address, write=_echo, callbacks=[Progress(_echo)]
    )
    _done(outcome)


@cli.command()
@click.argument("name")
@click.option("--storage", help="The storage the sweep was run with (default ./dcn-ray-runs).")
@click.option("--address", help="Ray cluster to resume on (default: a local Ray).")
def resume(name: str, storage: str | None, address: str | None) -> None:
    """Finish sweep NAME after a crash: unfinished and errored trials only, follow-ups included."""
    keep_local_ray_on_loopback(address)
    from dcn_ray.tune import sweep as sweeps

    _done(sweeps.resume_sweep(name, storage=storage, address=address, write=_echo))


@cli.command()
@click.argument("name")
@click.option("--storage", help="The storage the sweep was run with (default ./dcn-ray-runs).")
def report(name: str, storage: str | None) -> None:
    """Print the results table of sweep NAME again."""
    from dcn_ray.tune.sweep import load_report

    click.echo(load_report(name, storage))


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--slices", default=24, show_default=True, type=click.IntRange(1))
@click.option("--size", default=256, show_default=True, type=click.IntRange(16))
@click.option("--seed", default=0, show_default=True, type=int)
def synth(out_dir: Path, slices: int, size: int, seed: int) -> None:
    """Write a synthetic EM-like stack (images.tif, labels.tif) to OUT_DIR."""
    from dcn_ray.io.synth import write_synthetic

    images, labels = write_synthetic(out_dir, slices=slices, size=size, seed=seed)
    click.echo(f"wrote {images} and {labels}")


@cli.command()
@click.argument("model")
@click.argument("stack", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Labels (default: those of the model's job).",
)
@click.option("--slices", default=None, help="Slices to score, e.g. 27:30 (default: the job's validation split).")
@click.option("--storage", help="For MODEL sweep:NAME: the sweep's storage (default ./dcn-ray-runs).")
@click.option("--tracking-uri", help="For MODEL runs:/ or models:/ (default: sqlite:///mlflow.db here).")
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


@cli.command()
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


@cli.command()
@click.argument("submission_id")
@click.option("--address", required=True, help="The cluster's Jobs API, e.g. http://head:8265.")
def status(submission_id: str, address: str) -> None:
    """Print the status of a submitted sweep (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from dcn_ray.tune import submit as jobs

    click.echo(jobs.job_status(address, submission_id))


@cli.command()
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


cli.add_command(predict)
cli.add_command(register)


def _done(outcome) -> None:
    click.echo(outcome.markdown)
    _echo(f"results: {outcome.folder}")
    if outcome.interrupted:
        sys.exit(130)
    if outcome.errored:
        _echo(f"{outcome.errored} trial(s) failed after all retries")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 2 with one line for bad input, 1 with one line for a failure."""
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="dcn-ray", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except (click.UsageError, click.BadParameter) as error:
        _echo(f"dcn-ray: error: {error.format_message()}")
        sys.exit(2)
    except InputError as error:
        _echo(f"dcn-ray: error: {error}")
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _echo("dcn-ray: interrupted")
        sys.exit(130)
    except Exception as error:
        if verbose:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _echo(f"dcn-ray: failed: {type(error).__name__}: {first} (run with -v for details)")
        sys.exit(1)
