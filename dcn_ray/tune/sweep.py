"""Run, resume and check sweeps: Ray Tune trials of the grid and its follow-ups, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from dcn_ray.config import JobConfig, job_from_dict, kernels_of
from dcn_ray.core.kernels import kernels_text
from dcn_ray.errors import InputError
from dcn_ray.track import report
from dcn_ray.track import runs as tracking
from dcn_ray.track.storage import SWEEP_FILE, Storage
from dcn_ray.tune.searcher import GridThenFollowups
from dcn_ray.tune.trial import SweepContext, load_job_dataset, run_trial

log = logging.getLogger(__name__)

Write = Callable[[str], None]


@dataclass(frozen=True)
class SweepRecord:
    """What a sweep needs to be resumed, saved in its storage folder."""

    name: str
    job: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    gpu: float
    max_concurrent: int


@dataclass(frozen=True)
class SweepOutcome:
    table: pa.Table
    #: The table as Markdown, with the guided-vs-random summary line.
    markdown: str
    folder: str
    interrupted: bool
    errored: int


# ----------------------------------------------------------------------------- checks


def planned_trials(job: JobConfig) -> list[str]:
    """One line per configuration the sweep will run (the dry-run listing)."""
    resources = job.sweep.resources
    lines = [
        f"grid  {kernels_text(k):>10}  k1={k[0]} k2={k[1]} k3={k[2]}  gpu={resources.gpu:g} cpu={resources.cpu:g}"
        for k in kernels_of(job)
    ]
    followup = job.sweep.followup
    if followup.enabled:
        reference = tuple(followup.reference)
        if reference not in kernels_of(job):
            lines.insert(0, f"grid  {kernels_text(reference):>10}  (reference, added for the follow-ups)")
        lines.append(
            f"then, per round ({followup.rounds}): up to {followup.steps} guided follow-ups and "
            f"{followup.controls} random controls, chosen from the F1-F3 scores of {kernels_text(reference)}"
        )
    return lines


def ensure_data(job: JobConfig) -> None:
    """Make the synthetic stack of a job that asks for one (``data.synthetic``) if it is missing."""
    data = job.data
    if data.synthetic is None or (Path(data.images).exists() and Path(data.labels).exists()):
        return
    from dcn_ray.io.synth import write_synthetic

    if (
        Path(data.images).parent != Path(data.labels).parent
        or Path(data.images).name != "images.tif"
        or Path(data.labels).name != "labels.tif"
    ):
        raise InputError(
            "data.synthetic needs data.images and data.labels to be images.tif and labels.tif in one folder"
        )
    synth = data.synthetic
    write_synthetic(Path(data.images).parent, slices=synth.slices, size=synth.size, seed=synth.seed)
    log.debug("made the synthetic stack %s", Path(data.images).parent)


def check_data(job: JobConfig) -> str:
    """Read and validate the data; the crop must fit the slices. Returns a one-line summary."""
    ensure_data(job)
    dataset = load_job_dataset(job)
    height, width = dataset.train_images.shape[1:]
    if job.train.crop > min(height, width):
        raise InputError(f"train.crop={job.train.crop} is larger than the slices ({height} x {width})")
    return (
        f"data: {len(dataset.train_slices)} training and {len(dataset.val_slices)} validation slices "
        f"of {height} x {width} from {job.data.images}"
    )


def trial_resources(job: JobConfig, nodes: list[dict[str, float]], write: Write) -> tuple[float, int]:
    """The GPUs per trial on this cluster and how many trials may run at once.

    No GPU anywhere: trials run on CPU (gpu 0), and the user is told. Resources no node
    can provide are refused instead of pending forever.
    """
    wanted = job.sweep.resources
    gpu = wanted.gpu
    if gpu > 0 and not any(node.get("GPU", 0) > 0 for node in nodes):
        write(f"No GPU in the cluster: trials run on CPU (sweep.resources.gpu {gpu:g} -> 0).")
        gpu = 0.0
    fits = [node for node in nodes if node.get("CPU", 0) >= wanted.cpu and node.get("GPU", 0) >= gpu]
    if not fits:
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise InputError(
            f"no node can provide sweep.resources (gpu {gpu:g}, cpu {wanted.cpu:g}); "
            f"the largest node has {biggest.get('GPU', 0):g} GPUs and {biggest.get('CPU', 0):g} CPUs"
        )
    slots = sum(min(int(n.get("CPU", 0) // wanted.cpu), int(n.get("GPU", 0) // gpu) if gpu else 10**6) for n in fits)
    return gpu, max(1, job.sweep.max_concurrent or slots)


def check_resources(job: JobConfig, address: str | None) -> str:
    """Whether the cluster (or this machine) can run the trials; a one-line summary."""
    notes: list[str] = []
    if address:
        with ray_session(address):
            nodes = alive_nodes()
    else:
        import torch

        nodes = [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]
    gpu, slots = trial_resources(job, nodes, notes.append)
    where = f"the cluster at {address}" if address else "this machine"
    return " ".join(
        notes
        + [f"resources: {slots} trial(s) at a time on {where} (gpu {gpu:g}, cpu {job.sweep.resources.cpu:g} each)"]
    )


# ----------------------------------------------------------------------------- Ray


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connect to ``address``, or start a local Ray (no dashboard); shut down only what we started.

    Ray 2.60 serves its gRPC ports on every interface whatever the node address; its token
    authentication, on by default, is what keeps other hosts out.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **options)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**options)
        else:
            ray.init(include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError(
            f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {str(error).splitlines()[0][:200]}"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def trial_name(trial) -> str:
    """``followup-4-8-14``: how Tune names the trial."""
    return f"{trial.config.get('phase', 'grid')}-{kernels_text(trial.config['kernels'])}"


def trial_dirname(trial) -> str:
    """``followup_4-8-14_<trial id>``: the trial's folder in the sweep's storage."""
    return f"{trial.config.get('phase', 'grid')}_{kernels_text(trial.config['kernels'])}_{trial.trial_id}"


def _tuner(context: SweepContext, record: SweepRecord, storage: Storage, searcher, callbacks, *, restore: bool):
    # dcn-ray shows its own concise progress (dcn_ray.tune.progress) instead of Tune's tables.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": context.job.sweep.resources.cpu, "gpu": record.gpu}
    )
    if restore:
        return tune.Tuner.restore(
            storage.folder(record.name), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,
            max_concurrent_trials=record.max_concurrent,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=record.name,
            storage_path=storage.root,
            failure_config=tune.FailureConfig(max_failures=context.job.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=0,
        ),
    )


# ----------------------------------------------------------------------------- run / resume


def run_sweep(
    job: JobConfig, *, job_text: str, storage: str | None, address: str | None, write: Write, callbacks=()
) -> SweepOutcome:
    """Run the job's grid (and follow-ups) as a new sweep named ``job.name``."""
    store = Storage.for_sweeps(storage)
    if store.exists(job.name, SWEEP_FILE):
        raise InputError(
            f"sweep '{job.name}' already exists in {store.root}; use `dcn-ray resume {job.name}` (or another --name)"
        )
    uri = tracking.resolve_uri(job.tracking.uri)
    tracking.check_reachable(uri)
    data_summary = check_data(job)
    with ray_session(address):
        nodes = alive_nodes()
        if len(nodes) > 1 and storage is None:
            raise InputError(
                "this Ray cluster has several nodes: give --storage on storage every node sees (a shared path, s3:// or gs://)"
            )
        notes: list[str] = []
        gpu, max_concurrent = trial_resources(job, nodes, notes.append)
        for line in [data_summary, *notes]:
            write(line)
        experiment_id = tracking.prepare_experiment(uri, job.experiment)
        parent = tracking.start_parent_run(uri, experiment_id, job.name, {"job." + k: v for k, v in job.flat().items()})
        record = SweepRecord(job.name, job.to_dict(), uri, experiment_id, parent, gpu, max_concurrent)
        store.write_text(job.name, "job.yaml", job_text)
        store.write_text(job.name, SWEEP_FILE, json.dumps(record.__dict__, indent=2))
        if store.is_local:
            tracking.log_parent_file(uri, parent, Path(store.folder(job.name)) / "job.yaml")
        context = SweepContext(job, uri, experiment_id, parent)
        searcher = GridThenFollowups(kernels_of(job), job.sweep.followup)
        write(
            f"sweep '{job.name}': {len(kernels_of(job))} grid trials, up to {max_concurrent} at a time; MLflow {uri}, experiment '{job.experiment}'"
        )
        tuner = _tuner(context, record, store, searcher, list(callbacks), restore=False)
        return _finish(tuner, record, context, store, write)


def resume_sweep(name: str, *, storage: str | None, address: str | None, write: Write) -> SweepOutcome:
    """Finish the unfinished and errored trials of a sweep; finished trials are not rerun."""
    from ray import tune

    store = Storage.for_sweeps(storage)
    if not store.exists(name, SWEEP_FILE):
        raise InputError(f"no sweep '{name}' in {store.root} (nothing to resume)")
    record = SweepRecord(**store.read_record(name))
    job = job_from_dict(record.job)
    tracking.check_reachable(record.tracking_uri)
    with ray_session(address):
        if not tune.Tuner.can_restore(store.folder(name)):
            raise InputError(f"sweep '{name}' in {store.root} has no Tune state to restore from")
        before = store.finished_trials(name)
        context = SweepContext(job, record.tracking_uri, record.experiment_id, record.parent_run_id)
        tracking.reopen_parent(record.tracking_uri, record.parent_run_id)
        write(f"resuming sweep '{name}' ({len(before)} trials already finished)")
        tuner = _tuner(context, record, store, None, [], restore=True)
        outcome = _finish(tuner, record, context, store, write)
        after = {row["trial_id"] for row in outcome.table.to_pylist()}
        if not before <= after:
            raise RuntimeError(
                f"restoring sweep '{name}' lost finished trials {sorted(before - after)}; refusing to report a restarted sweep"
            )
        return outcome


def _finish(tuner, record: SweepRecord, context: SweepContext, store: Storage, write: Write) -> SweepOutcome:
    interrupted = False
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        interrupted, grid = True, None
    rows = _rows(grid) if grid is not None else []
    interrupted = interrupted or any(row["status"] == "unfinished" for row in rows)
    tracking.reconcile(record.tracking_uri, record.experiment_id, record.parent_run_id, rows, interrupted=interrupted)
    reference = tuple(context.job.sweep.followup.reference)
    table = report.results_table(rows, reference)
    folder = store.write_results(record.name, table, reference)
    tracking.log_results(record.tracking_uri, record.parent_run_id, folder, finished=not interrupted)
    errored = sum(1 for row in rows if row["status"] == "errored")
    if interrupted:
        write(f"sweep '{record.name}' interrupted: `dcn-ray resume {record.name}` finishes it")
    return SweepOutcome(
        table=table,
        markdown=report.markdown(table, reference),
        folder=store.folder(record.name),
        interrupted=interrupted,
        errored=errored,
    )


def _rows(grid) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        config, metrics = result.config or {}, result.metrics or {}
        kernels = config.get("kernels", [None] * 3)
        finished = bool(metrics.get("finished"))
        status = "finished" if finished else ("errored" if result.error else "unfinished")
        weak = metrics.get("weak_branch")
        rows.append(
            {
                "k1": kernels[0],
                "k2": kernels[1],
                "k3": kernels[2],
                "phase": config.get("phase", "grid"),
                "status": status,
                "best_val_iou": metrics.get("best_val_iou"),
                "val_vrand": metrics.get("val_vrand"),
                "val_vinfo": metrics.get("val_vinfo"),
                "weak_branch": f"F{int(weak) + 1}" if isinstance(weak, (int, float)) else None,
                "mlflow_run_id": metrics.get("mlflow_run_id"),
                "trial_id": metrics.get("trial_id") or Path(result.path).name,
            }
        )
    return rows


def load_report(name: str, storage: str | None) -> str:
    store = Storage.for_sweeps(storage)
    if not store.exists(name, report.TABLE_FILE):
        raise InputError(f"no results for sweep '{name}' in {store.root}")
    record = SweepRecord(**store.read_record(name))
    reference = tuple(job_from_dict(record.job).sweep.followup.reference)
    return report.markdown(store.read_results(name), reference)
