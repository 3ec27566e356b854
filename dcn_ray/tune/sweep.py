"""Run, resume and check sweeps: Ray Tune trials of the grid and its follow-ups, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from dcn_ray.core.scores import HEADLINE_MODE
from dcn_ray.errors import InputError, first_line
from dcn_ray.job.config import JobConfig, job_from_record, kernels_of
from dcn_ray.job.sweep_grid import Variant, parent_params, variants
from dcn_ray.results import report, search_report
from dcn_ray.runtime import alive_nodes, ray_session, trial_resources
from dcn_ray.track import atlas, uris
from dcn_ray.track import runs as tracking
from dcn_ray.track.storage import SWEEP_FILE, Storage
from dcn_ray.tune import search_algs
from dcn_ray.tune.checks import check_data
from dcn_ray.tune.early_stop import mark_stopped
from dcn_ray.tune.planner import RoundPlanner, replay_rounds
from dcn_ray.tune.results import round_record, rows_of, search_rows
from dcn_ray.tune.search_planner import SearchPlanner, trial_spec
from dcn_ray.tune.searcher import GridThenFollowups, accept_old_module_names
from dcn_ray.tune.spec import METRIC, TrialSpec
from dcn_ray.tune.trial import SweepContext, run_trial

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
    runs_view: str = ""  # the MLflow runs view URL, said last


# ----------------------------------------------------------------------------- Ray


def trial_name(trial) -> str:
    """``followup-4-8-14-s0``: how Tune names the trial."""
    return TrialSpec.from_config(trial.config).name


def trial_dirname(trial) -> str:
    """``followup-4-8-14-s0_<trial id>``: the trial's folder in the sweep's storage."""
    return f"{TrialSpec.from_config(trial.config).name}_{trial.trial_id}"


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
            scheduler=_scheduler(context.job),
            num_samples=-1,
            max_concurrent_trials=record.max_concurrent,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # one process start-up (torch, MLflow, Tune imports) per worker, not per trial
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
    job: JobConfig,
    *,
    job_text: str,
    storage: str | None,
    address: str | None,
    write: Write,
    callbacks=(),
    configurations: Sequence[Variant] | None = None,
) -> SweepOutcome:
    """Run the job's grid (and follow-ups) as a new sweep named ``job.name`` (held against a second one).

    ``configurations``: the job's grid as the command expanded it (:func:`dcn_ray.job.job_file.load_sweep`);
    expanded here, before Ray starts, when not given (every combination is a valid job)."""
    configurations = variants(job) if configurations is None else configurations
    store = Storage.for_sweeps(storage)
    store.check_writable()  # before the lock, which writes in the storage
    with store.holding(job.name):
        return _run_sweep(
            job, configurations, store, job_text=job_text, storage=storage, address=address, write=write,
            callbacks=callbacks,
        )  # fmt: skip


def _run_sweep(
    job: JobConfig,
    configurations: Sequence[Variant],
    store: Storage,
    *,
    job_text: str,
    storage: str | None,
    address: str | None,
    write: Write,
    callbacks,
) -> SweepOutcome:
    store.refuse_existing(job.name)  # again, under the lock: another sweep may have started since
    store.check_writable()
    uri = uris.resolve_uri(job.tracking.uri)
    uris.check_store(uri)  # a database of another program is refused before MLflow adds its tables
    data_summary, foreground = check_data(job)
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
        # the children's keys: the runs view then has one column per setting, not a job.* copy of each
        settled = job.trained_on(foreground or 0.0)  # as its trials train
        parent = tracking.start_parent_run(uri, experiment_id, job.name, parent_params(settled, configurations))
        record = SweepRecord(job.name, job.to_dict(), uri, experiment_id, parent, gpu, max_concurrent)
        store.write_text(job.name, "job.yaml", job_text)
        store.write_text(job.name, SWEEP_FILE, json.dumps(record.__dict__, indent=2))
        if store.is_local:
            tracking.log_parent_file(uri, parent, Path(store.folder(job.name)) / "job.yaml")
        context = SweepContext(job, uri, experiment_id, parent, storage_root=store.root, sweep=job.name)
        searcher = GridThenFollowups(_planner(job, configurations, max_concurrent, uri, write))
        tuner = _tuner(context, record, store, searcher, list(callbacks), restore=False)
        return _finish(tuner, record, context, store, write)


def _planner(job: JobConfig, configurations: Sequence[Variant], max_concurrent: int, uri: str, write: Write):
    """The grid with its follow-ups, or a search (``sweep.search``): what the sweep runs next."""
    where = f"up to {max_concurrent} at a time; MLflow {uri}, experiment '{job.experiment}'"
    if job.sweep.search.enabled:
        search, seeds = job.sweep.search, job.seeds
        make = partial(trial_spec, family=job.model.family, kernels=kernels_of(job)[0])
        in_flight = max(1, math.ceil(max_concurrent / len(seeds)))  # configurations, each on every seed
        planner = SearchPlanner(search, seeds, make, metric=METRIC, mode=HEADLINE_MODE, max_concurrent=in_flight)
        write(f"sweep '{job.name}': {planner.describe()[0]}, {where}")
        return planner
    planner = RoundPlanner(configurations, job.seeds, job.sweep.followup)
    write(
        f"sweep '{job.name}': {len(planner.queue)} trials queued ({len(configurations)} grid configuration(s) x "
        f"{len(job.seeds)} seed(s){' and round 1' if planner.decisions else ''}), {where}"
    )
    return planner


def _scheduler(job: JobConfig):
    """Tune's ASHA on the headline over training steps, or None (``sweep.scheduler``)."""
    return search_algs.scheduler(job.sweep.scheduler, metric=METRIC, mode=HEADLINE_MODE, max_steps=job.train.steps)


def resume_sweep(name: str, *, storage: str | None, address: str | None, write: Write) -> SweepOutcome:
    """Finish the unfinished and errored trials of a sweep; finished trials are not rerun."""
    store = Storage.for_sweeps(storage)
    with store.holding(name):
        return _resume_sweep(name, store, address=address, write=write)


def _resume_sweep(name: str, store: Storage, *, address: str | None, write: Write) -> SweepOutcome:
    from ray import tune

    if not store.exists(name, SWEEP_FILE):
        raise InputError(f"no sweep '{name}' in {store.root} (nothing to resume)")
    record, job = _read_record(store, name)
    uris.check_store(record.tracking_uri, must_exist=True)
    _check_tune_state(store, name)  # all of it readable, before Ray starts
    before = store.finished_trials(name)
    with ray_session(address):
        if not tune.Tuner.can_restore(store.folder(name)):
            raise InputError(f"sweep '{name}' in {store.root} has no Tune state to restore from")
        context = SweepContext(
            job, record.tracking_uri, record.experiment_id, record.parent_run_id, storage_root=store.root, sweep=name
        )
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


def _read_record(store: Storage, name: str) -> tuple[SweepRecord, JobConfig]:
    """The sweep's record and its job; InputError naming the file when either is damaged."""
    where = f"{store.folder(name)}/{SWEEP_FILE}"
    try:
        record = SweepRecord(**store.read_record(name))
    except TypeError as error:
        raise InputError(f"{where}: damaged sweep record ({first_line(error)})") from None
    try:
        return record, job_from_record(record.job)
    except InputError as error:
        raise InputError(f"{where}: damaged sweep record ({error})") from None


def _check_tune_state(store: Storage, name: str) -> None:
    """Refuse damaged Tune state files, naming them: Tune would restart the whole sweep silently."""
    import pickle

    accept_old_module_names()  # an older sweep's state names the job's modules by their old names
    for file in ("tuner.pkl", store.newest_file(name, "searcher-state", ".pkl")):
        if file is None or not store.exists(name, file):
            continue
        try:
            pickle.loads(store.read_bytes(name, file))
        except Exception as error:  # unpickling raises many types for damaged data
            raise InputError(f"{store.folder(name)}/{file}: damaged Tune state ({first_line(error)})") from None


def _finish(tuner, record: SweepRecord, context: SweepContext, store: Storage, write: Write) -> SweepOutcome:
    interrupted = False
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        interrupted, grid = True, None
    rows = rows_of(grid) if grid is not None else []
    uri, experiment_id, parent = record.tracking_uri, record.experiment_id, record.parent_run_id
    scheduler = context.job.sweep.scheduler
    if scheduler.enabled and grid is not None:  # ran to its end: a trial without its final report was stopped
        rows = mark_stopped(grid, rows, uri, str(scheduler.algorithm))
    interrupted = interrupted or any(row["status"] == "unfinished" for row in rows)
    tracking.reconcile(uri, experiment_id, parent, rows, interrupted=interrupted)
    reference = tuple(context.job.sweep.followup.reference)
    evaluation = _reported_split(context.job)
    followup = context.job.sweep.followup
    rounds = [round_record(d, followup.margin) for d in replay_rounds(rows, followup)]
    table = report.results_table(rows, reference, evaluation, rounds)
    folder = Path(store.folder(record.name)) if store.is_local else Path(tempfile.mkdtemp(prefix="dcn-results-"))
    files = report.write(table, folder, reference) + atlas.for_sweep(table, uri, folder, reference)
    search = context.job.sweep.search
    if search.enabled and grid is not None:  # the configurations tried, ranked; the best so far
        files += search_report.write(search_rows(grid, rows), folder, search.algorithm)
    if not store.is_local:
        store.upload(record.name, files)
    if evaluation is not None:
        tracking.log_parent_evaluation(uri, parent, evaluation)
    _log_mechanism(uri, table)
    tracking.log_results(uri, parent, files, finished=not interrupted)
    sweep = context.job.sweep  # the runs view's columns: the grid's keys, or the search space's
    shown = [*sweep.grid, *sweep.search.space, *(["model.redraw"] if followup.enabled and followup.sham else [])]
    view = tracking.share_sweep_view(uri, experiment_id, parent, shown)  # a sham's re-drawn branch beside phase
    if interrupted:
        write(f"sweep '{record.name}' interrupted: `dcn-ray resume {record.name}` finishes it")
    return SweepOutcome(
        table=table,
        markdown=report.markdown(table, reference),
        folder=store.folder(record.name),
        interrupted=interrupted,
        errored=sum(1 for row in rows if row["status"] == "errored"),
        runs_view=tracking.runs_view_url(uri, experiment_id, parent, view_key=view),
    )


def _log_mechanism(uri: str, table) -> None:
    """On each guided trial's run: how its weak branch's calibrated separation moved against its reference."""
    from dcn_ray.results.verdict import mechanism

    found = mechanism(table.to_pylist(), report.rounds_of(table))
    if found is None:
        return
    tags = {"mechanism_prediction": f"{found.branch} calibrated separation rises when its kernel shrinks"}
    changes = {run: {"weak_separation_change": change} for run, change in found.per_run.items()}
    tracking.log_child_values(uri, changes, {run: {**tags, "mechanism_observed": found.observed} for run in changes})


def _reported_split(job: JobConfig) -> dict[str, Any] | None:
    """The split the table reports (test, else validation) and its baselines; None if the data is unreadable now."""
    from dcn_ray.core.dataset import load_data
    from dcn_ray.core.evaluation import reported_split

    try:
        return reported_split(load_data(job.data))
    except InputError as error:
        log.warning("results table without baselines: %s", error)
        return None


def load_report(name: str, storage: str | None, effect: float | None = None) -> str:
    """The results of sweep ``name`` again, with the seeds an ``effect`` would need."""
    store = Storage.for_sweeps(storage)
    if not store.exists(name, report.TABLE_FILE):
        raise InputError(f"no results for sweep '{name}' in {store.root}")
    _, job = _read_record(store, name)
    reference = tuple(job.sweep.followup.reference)
    text = report.markdown(store.read_table(name, report.TABLE_FILE), reference, effect)
    if store.exists(name, search_report.MARKDOWN_FILE):
        text += "\n" + store.read_text(name, search_report.MARKDOWN_FILE)
    return text
