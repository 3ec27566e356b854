"""``dcn-ray sweep``, ``resume``, ``report`` and ``register``: run sweeps and use their results.

The job file and the command line are validated before Ray, MLflow or torch is imported.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from dcn_ray.cli.common import echo as _echo
from dcn_ray.cli.common import sweep_storage
from dcn_ray.runtime import keep_local_ray_on_loopback


@click.command()
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
    from dcn_ray.job.job_file import load_sweep  # YAML and dataclasses only: a bad job file is refused at once

    # --name and --tracking-uri are strings as given: JSON-quoted, YAML reads them back unchanged
    extra = (
        list(overrides)
        + ([f"name={json.dumps(name)}"] if name is not None else [])
        + ([f"tracking.uri={json.dumps(tracking_uri)}"] if tracking_uri is not None else [])
    )
    with _warnings_after_checks():  # a warning is said once every check passed: an error is the only line
        job, configurations = load_sweep(job_file, extra)  # the grid, expanded once and passed along
        keep_local_ray_on_loopback(address)
        _refuse_outputs_over_inputs(job, job_file, storage)  # the dry run too: it says what the sweep would refuse
        from dcn_ray.tune.checks import check_trials

        check_trials(job, configurations)  # every configuration's data, crop and batch, before any state is made
        if dry_run:
            from dcn_ray.runtime import check_resources
            from dcn_ray.tune.checks import check_data, cpu_estimate, planned_trials

            data, _ = check_data(job, make=False)
            resources, gpu, slots = check_resources(job, address)
            estimate = cpu_estimate(job, slots, configurations=configurations)
            lines = [data, resources] + ([estimate] if gpu == 0 else [])
            trials = planned_trials(job, gpu, configurations)
    if dry_run:
        _echo("\n".join(lines))
        click.echo("\n".join(trials))
        return
    from dcn_ray.track.storage import Storage

    Storage.for_sweeps(storage).refuse_existing(job.name)  # before Ray and MLflow are imported: at once
    from dcn_ray.tune import sweep as sweeps
    from dcn_ray.tune.progress import Progress

    outcome = sweeps.run_sweep(
        job, job_text=job_file.read_text(), storage=storage, address=address, write=_echo, callbacks=[Progress(_echo)],
        configurations=configurations,
    )  # fmt: skip
    _done(outcome)


@click.command()
@click.argument("name")
@sweep_storage
@click.option("--address", help="Ray cluster to resume on (default: a local Ray).")
def resume(name: str, storage: str | None, address: str | None) -> None:
    """Finish sweep NAME after a crash: unfinished and errored trials only, follow-ups included."""
    keep_local_ray_on_loopback(address)
    from dcn_ray.tune import sweep as sweeps

    _done(sweeps.resume_sweep(name, storage=storage, address=address, write=_echo))


@click.command()
@click.argument("name")
@sweep_storage
@click.option(
    "--effect",
    type=float,
    callback=lambda _ctx, _param, value: _effect(value),
    help="A difference in the headline score (e.g. 0.005): say how many seeds detect it with power 0.8.",
)
@click.option(
    "--atlas",
    "atlas_dir",
    type=click.Path(path_type=Path),
    help="Also write the branch atlas (branch_atlas.png, branch_atlas.html) into this folder.",
)
def report(name: str, storage: str | None, effect: float | None, atlas_dir: Path | None) -> None:
    """Print the results table of sweep NAME again, with what its seeds can detect.

    With --atlas: every configuration's F1-F3 maps and fused output on one validation slice.
    """
    from dcn_ray.tune.sweep import load_report

    if atlas_dir is not None:  # the folder first: a refused one is the only line shown
        from dcn_ray.track.atlas import check_folder, write_from_sweep

        check_folder(name, storage, atlas_dir)
    text = load_report(name, storage, effect)
    if atlas_dir is not None:
        _echo("branch atlas: " + ", ".join(str(file) for file in write_from_sweep(name, storage, atlas_dir)))
    click.echo(text)


@click.command()
@click.argument("name")
@click.argument("model_name")
@sweep_storage
@click.option(
    "--alias",
    default="champion",
    show_default=True,
    help="Alias the new version gets (moved from an older one): predict models:/MODEL_NAME@ALIAS. '' for none.",
)
def register(name: str, model_name: str, storage: str | None, alias: str) -> None:
    """Register the best trial of sweep NAME as a new version of MODEL_NAME in its MLflow registry.

    The version is tagged with its sweep, trial, kernels, family, seed and test scores.
    """
    from dcn_ray.track.sources import register_best

    _check_model_name(model_name)
    _check_alias(alias)
    version, best = register_best(name, model_name, storage=storage, alias=alias)
    test = f", test IoU {best.scores['test_iou']:.4f}" if "test_iou" in best.scores else ""
    _echo(
        f"best trial of sweep '{name}': {best.label}, val IoU {best.best_val_iou:.4f}"
        f"{test} (MLflow run {best.mlflow_run_id} in {best.tracking_uri})"
    )
    click.echo(f"registered {model_name} version {version}" + (f" as models:/{model_name}@{alias}" if alias else ""))


def _effect(value: float | None) -> float | None:
    """--effect: a finite positive number (inf, NaN, 0 and negatives are no effect a sweep can detect)."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value}: give a finite positive difference, e.g. 0.005", param_hint="'--effect'")
    return value


def _check_model_name(name: str) -> None:
    """A name that MLflow registers and that models:/NAME/VERSION and models:/NAME@ALIAS give back:
    printable, none of / : @ ? # % \\, no space at either end, not . or .., at most 255 characters."""
    from dcn_ray.errors import InputError

    if (
        not name
        or name != name.strip()
        or not name.isprintable()
        or any(mark in name for mark in "/:@?#%\\")
        or name in (".", "..")
        or len(name) > 255
    ):
        raise InputError(
            f"MODEL_NAME {name!r}: models:/ URIs cannot carry it; use letters, digits, '_', '-', '.' and "
            "inner spaces (none of / : @ ? # % \\), at most 255 characters"
        )


def _check_alias(alias: str) -> None:
    """MLflow's rule for aliases, checked before any store is opened (``latest``, ``v<digits>`` are reserved)."""
    import re

    from dcn_ray.errors import InputError

    if alias and (not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", alias) or re.fullmatch(r"[vV]\d+|latest", alias)):
        raise InputError(f"--alias {alias!r}: letters, digits, '_' and '-' only, and not 'latest' or v<number>")


@contextmanager
def _warnings_after_checks() -> Iterator[None]:
    """Hold dcn-ray's log lines during the block; said after it only if it raised nothing."""
    logger, held = logging.getLogger("dcn_ray"), []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    hold, propagate = Hold(), logger.propagate
    logger.addHandler(hold)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(hold)
        logger.propagate = propagate
    for record in held:
        logger.handle(record)


def _refuse_outputs_over_inputs(job, job_file: Path, storage: str | None) -> None:
    """The sweep's folder (Tune state, results) and its MLflow file store touch none of its inputs."""
    from dcn_ray.io.guard import refuse_overlaps
    from dcn_ray.track.storage import Storage
    from dcn_ray.track.uris import resolve_uri

    inputs = {"the job file": job_file, "data.images": job.data.images, "data.labels": job.data.labels}
    Storage.for_sweeps(storage).refuse_inputs_in(job.name, inputs)
    uri = resolve_uri(job.tracking.uri)
    if uri.startswith("sqlite:///"):
        refuse_overlaps(uri[len("sqlite:///") :], inputs)


def _done(outcome) -> None:
    click.echo(outcome.markdown)
    _echo(f"results: {outcome.folder}")
    if outcome.runs_view:  # last, where a reader's eyes are when the sweep ends
        _echo(f"MLflow runs view: {outcome.runs_view}")
    if outcome.interrupted:
        sys.exit(130)
    if outcome.errored:
        _echo(f"{outcome.errored} trial(s) failed after all retries")
        sys.exit(1)
