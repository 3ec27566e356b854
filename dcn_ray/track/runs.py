"""MLflow: the store, one parent run per sweep, one child run per trial (never two).

Everything goes through ``MlflowClient`` with explicit run ids, so a trial that is
retried or resumed finds its own child run again by the tag holding its Tune trial id
instead of opening a second one (the trap of MLflowLoggerCallback / setup_mlflow).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from dcn_ray.core.scores import BEST_VAL_HEADLINE, TEST_HEADLINE, VAL_HEADLINE
from dcn_ray.job.sweep_grid import linked_keys
from dcn_ray.track.locks import creation_lock
from dcn_ray.track.uris import fail_fast_http

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIAL_TAG = "tune_trial_id"
SWEEP_TAG = "dcn_ray_sweep"
PARENT_TAG = "mlflow.parentRunId"
RETRY_SECONDS = 120.0
#: MLflow 3 opens experiments without this tag on its GenAI pages.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: MLflow's UI reads a shared view of its runs table (its "Share" button writes one) from the
#: experiment tag of this prefix and the key a link names in ``viewStateShareKey``.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."


def prepare_experiment(uri: str, name: str) -> str:
    """Create the store and the experiment (driver side, before any trial); return its id.

    The experiment is tagged as model training (EXPERIMENT_KIND), so MLflow 3's UI opens it on
    its runs view instead of its GenAI pages.
    """
    fail_fast_http()
    if uri.startswith("sqlite:///"):  # two drivers making one fresh store race in its schema migration
        with creation_lock(Path(uri[len("sqlite:///") :])):
            return _prepare_experiment(uri, name)
    return _prepare_experiment(uri, name)


def _prepare_experiment(uri: str, name: str) -> str:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        experiment_id = experiment.experiment_id
    else:
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(uri[len("sqlite:///") :]).parent / "mlruns").absolute().as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location)
    client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    return experiment_id


def share_sweep_view(uri: str, experiment_id: str, parent_run_id: str, grid_axes: Sequence[str] = ()) -> str:
    """Write the sweep's shared view of the runs table; return its key (the parent run id).

    The view lists the sweep's trials (its child runs) ordered by configuration, with the columns a
    researcher reads first: k1-k3, seed, phase, each key the grid varies, test and best validation IoU
    and the weak branch. MLflow's own default shows none of the ~60 params a trial logs."""
    params = ["k1", "k2", "k3", "seed", "phase", *(key for axis in grid_axes for key in linked_keys(axis))]
    state = {
        "selectedColumns": [f"params.`{param_key(key)}`" for key in params]
        + [f"metrics.`{key}`" for key in (TEST_HEADLINE, BEST_VAL_HEADLINE)]
        + ["tags.`weak_branch`"],
        "searchFilter": f"tags.{PARENT_TAG} = '{parent_run_id}'",
        "orderByKey": "tags.`config`",
        "orderByAsc": True,
    }
    client = MlflowClient(uri)
    _retry(lambda: client.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + parent_run_id, json.dumps(state)))
    return parent_run_id


def runs_view_url(
    uri: str, experiment_id: str, parent_run_id: str | None = None, *, view_key: str | None = None
) -> str:
    """Where to look at a sweep: the experiment's runs view (and, for a local store, how to serve it),
    in the shared view ``view_key`` if given (:func:`share_sweep_view`); with ``parent_run_id``, a
    second line: the sweep's own run, its results, charts and branch atlas.

    Every link carries ``workflowType=machine_learning``: MLflow 3.17's UI shows a page as model
    training only with it (or after the user switched its sidebar toggle), whatever the tags say."""
    served = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    query = "?workflowType=machine_learning"
    shared = f"&viewStateShareKey={view_key}" if view_key else ""
    text = f"{served}/#/experiments/{experiment_id}/runs{query}{shared}"
    if not uri.startswith(("http://", "https://")):
        text += f"  (after: mlflow ui --backend-store-uri {uri})"
    if parent_run_id:
        run = f"{served}/#/experiments/{experiment_id}/runs/{parent_run_id}/artifacts{query}"
        text += f"\nthe sweep's own run (results, charts, branch atlas): {run}"
    return text


def log_child_values(
    uri: str, values: Mapping[str, Mapping[str, float]], tags: Mapping[str, Mapping[str, str]]
) -> None:
    """Metrics and tags computed after the sweep (e.g. the mechanism check) onto child runs, by run id."""
    client = MlflowClient(uri)
    for run_id, metrics in values.items():
        for key, value in metrics.items():
            _retry(lambda: client.log_metric(run_id, key, float(value)))
    for run_id, run_tags in tags.items():
        _retry(lambda: client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in run_tags.items()]))


def start_parent_run(uri: str, experiment_id: str, sweep: str, params: Mapping[str, Any]) -> str:
    client = MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: sweep, "role": "sweep"})
    client.log_batch(run.info.run_id, params=[Param(param_key(k), _param(v)) for k, v in params.items()])
    return run.info.run_id


def param_key(key: str) -> str:
    """A job key as an MLflow param name: a grid's linked axis ``a,b`` becomes ``a/b`` (MLflow refuses
    commas and allows only letters, digits, ``_ - . : /`` and spaces)."""
    return re.sub(r"[^\w\-.: /]", "/", key)


class TrialRun:
    """The child run of one Tune trial: found again after a retry or resume, else created."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_key: str = ""):
        fail_fast_http()
        self.client = MlflowClient(uri)
        self.parent_run_id = parent_run_id
        self.trial_id = trial_id
        self._pending: list[Metric] = []
        #: The Tune trial id of an earlier launch of the same (kernels, seed) whose run this one adopted.
        self.adopted_from: str | None = None
        self.run_id = _retry(lambda: self._find(experiment_id, trial_key))

    def open(self, *, name: str, tags: Mapping[str, str], params: Mapping[str, Any], experiment_id: str) -> str:
        """Create the run the first time; on later attempts mark it RUNNING again."""
        if self.run_id is None:
            run_tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: self.trial_id, **tags}
            run = _retry(lambda: self.client.create_run(experiment_id, run_name=name, tags=run_tags))
            self.run_id = run.info.run_id
            batch = [Param(k, _param(v)) for k, v in params.items()]
            for start in range(0, len(batch), 90):
                _retry(lambda: self.client.log_batch(self.run_id, params=batch[start : start + 90]))
        else:
            _retry(lambda: self.client.update_run(self.run_id, status="RUNNING"))
            self.set_tags(tags)
        return self.run_id

    def finished_metrics(self) -> dict[str, float] | None:
        """The metrics of this trial's run if it already FINISHED (a finished trial launched again), else None."""
        if self.run_id is None:
            return None
        run = _retry(lambda: self.client.get_run(self.run_id))
        return dict(run.data.metrics) if run.info.status == "FINISHED" else None

    def is_finished(self) -> bool:
        return self.run_id is not None and _retry(lambda: self.client.get_run(self.run_id)).info.status == "FINISHED"

    def backfill(self, history: list[dict[str, float]], key: str = VAL_HEADLINE) -> None:
        """Log the evaluations of a checkpoint's history that MLflow has not got (killed in between)."""
        logged = {m.step for m in _retry(lambda: self.client.get_metric_history(self.run_id, key))}
        for metrics in history:
            if int(metrics["step"]) not in logged:
                self.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        _retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer and send; if the server is down, keep the buffer and try again next time."""
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items() if _is_number(v)]
        try:
            self.flush(wait=0.0)
        except Exception as error:  # server down: training goes on, metrics wait in the buffer
            log.warning("MLflow unreachable, %d metric values buffered: %s", len(self._pending), error)

    def flush(self, *, wait: float = RETRY_SECONDS) -> None:
        while self._pending:
            batch = self._pending[:900]
            _retry(lambda: self.client.log_batch(self.run_id, metrics=batch), seconds=wait)
            del self._pending[: len(batch)]

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str) -> None:
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))

    def _find(self, experiment_id: str, trial_key: str) -> str | None:
        """This trial's run; else the sweep's run of the same (kernels, seed), adopted.

        A trial launched after Tune's last state snapshot is forgotten by a restore, and
        its configuration is suggested again under a new trial id. (kernels, seed) is
        unique within a sweep (the ``trial_key`` tag), so the new trial takes over the old run.
        """
        parent = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{self.trial_id}' and {parent}", max_results=2
        )
        if len(runs) > 1:
            log.warning("trial %s has %d child runs; using the first", self.trial_id, len(runs))
        if runs or not trial_key:
            return runs[0].info.run_id if runs else None
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.trial_key = '{trial_key}' and {parent}", max_results=1
        )
        if not runs:
            return None
        self.adopted_from = runs[0].data.tags.get(TRIAL_TAG)
        log.info("trial %s adopts the run of trial %s (same trial %s)", self.trial_id, self.adopted_from, trial_key)
        self.client.set_tag(runs[0].info.run_id, TRIAL_TAG, self.trial_id)
        return runs[0].info.run_id


def log_parent_file(uri: str, parent_run_id: str, path: Path) -> None:
    """Attach a file (the job file) to the sweep's parent run."""
    _retry(lambda: MlflowClient(uri).log_artifact(parent_run_id, str(path)))


def reopen_parent(uri: str, parent_run_id: str) -> None:
    _retry(lambda: MlflowClient(uri).update_run(parent_run_id, status="RUNNING"))


def log_parent_evaluation(uri: str, parent_run_id: str, evaluation: Mapping[str, Any]) -> None:
    """The reported split (tag ``reported_split``) and its baselines (``baseline_all_foreground_iou``...) on the parent run."""
    metrics = [
        Metric(f"baseline_{prediction}_{name}", float(value), int(time.time() * 1000), 0)
        for prediction, scores in evaluation.get("baselines", {}).items()
        for name, value in scores.items()
    ]
    tags = [
        RunTag("reported_split", str(evaluation["split"])),
        RunTag("reported_slices", str(evaluation.get("slices"))),
    ]
    _retry(lambda: MlflowClient(uri).log_batch(parent_run_id, metrics=metrics, tags=tags))


def log_results(uri: str, parent_run_id: str, files: Sequence[Path], *, finished: bool) -> None:
    """The results ``files`` (tables, charts; not Tune's state beside them) under ``results/`` on the
    parent run, which ends FINISHED (or KILLED if interrupted)."""
    client = MlflowClient(uri)
    for file in files:
        _retry(lambda: client.log_artifact(parent_run_id, str(file), "results"))
    _retry(lambda: client.set_terminated(parent_run_id, status="FINISHED" if finished else "KILLED"))


def reconcile(uri: str, experiment_id: str, parent_run_id: str, rows: list[dict], *, interrupted: bool) -> None:
    """Make child-run statuses match Tune's outcome.

    Finished trials: FINISHED; trials out of retries: FAILED; trials still running when
    the sweep was interrupted (Ctrl-C) or killed: KILLED.
    """
    client = MlflowClient(uri)
    by_run = {row["mlflow_run_id"]: row["status"] for row in rows if row.get("mlflow_run_id")}
    by_trial = {row["trial_id"]: row["status"] for row in rows if row.get("trial_id")}  # errored before reporting
    for run in child_runs(uri, experiment_id, parent_run_id):
        trial = by_run.get(run.info.run_id) or by_trial.get(run.data.tags.get(TRIAL_TAG, ""))
        if trial == "finished":
            status = "FINISHED"
        elif trial == "errored":
            status = "FAILED"
        elif interrupted and (trial == "unfinished" or run.info.status == "RUNNING"):
            status = "KILLED"
        else:
            continue
        if status != run.info.status:
            _retry(lambda: client.set_terminated(run.info.run_id, status=status))


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """All child runs of a sweep's parent run."""
    client = MlflowClient(uri)
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10000
    )


def trial_tags() -> dict[str, str]:
    """Where a trial runs: the Ray node id, the host name, the GPUs it was given."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return {
        "ray_node_id": node,
        "host": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "pid": str(os.getpid()),
    }


def _retry(call: Callable[[], T], *, seconds: float = RETRY_SECONDS) -> T:
    """Call, retrying with backoff for up to ``seconds`` (the server may be restarting)."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as error:
            if time.monotonic() + delay > deadline or "RESOURCE_DOES_NOT_EXIST" in str(error):
                raise
            log.debug("MLflow call failed (%s); retrying in %.1fs", error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _param(value: Any) -> str:
    return str(value)[:6000]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
