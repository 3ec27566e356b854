"""The Ray Tune function trainable: one trial (kernels, seed), tracked in its own MLflow child run.

Resume contract (Ray's custom_func_checkpointing example): a restarted trial continues
from ``tune.get_checkpoint()``; a trial that already finished reports its final result again
and exits at once (Tune's state snapshot can lag behind a kill).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from dcn_ray import models
from dcn_ray.core import checkpoint
from dcn_ray.core.analysis import analyse
from dcn_ray.core.dataset import Dataset, load_data
from dcn_ray.core.device import select_device
from dcn_ray.core.train import TrainResult, score_test_split, train
from dcn_ray.job import sweep_grid
from dcn_ray.job.config import JobConfig
from dcn_ray.kernels import branch_name
from dcn_ray.track import runs
from dcn_ray.track.storage import Storage
from dcn_ray.tune.spec import METRIC, TrialSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares (passed with tune.with_parameters)."""

    job: JobConfig
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    #: The storage root and the sweep's name: where relaunched trials find their checkpoints.
    storage_root: str = ""
    sweep: str = ""


def already_finished(run_metrics: Mapping[str, float] | None, state: Mapping[str, Any] | None) -> dict | None:
    """The final result of a trial that finished before this launch, else None.

    ``run_metrics``: the metrics of the trial's MLflow run if that run is FINISHED;
    ``state``: the newest training state found for it (``final`` once analysed and reported).
    """
    if run_metrics is not None and METRIC in run_metrics:
        found = dict(run_metrics)
        if (
            "weak_branch" in found
        ):  # MLflow holds the branch's index: the result carries its name, as a trial reports it
            found["weak_branch"] = branch_name(found["weak_branch"])
        return found
    if state is not None and "final" in state:
        return dict(state["final"])
    return None


def trial_job(job: JobConfig, spec: TrialSpec) -> JobConfig:
    """The job as this trial trains it: the sweep's job with the trial's settings (flat job keys) applied."""
    return sweep_grid.applied(job, spec.settings)


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Train the trial of ``config``; report each evaluation to Tune and MLflow."""
    spec = TrialSpec.from_config(config)
    job = trial_job(context.job, spec)
    run = runs.TrialRun(
        context.tracking_uri, context.experiment_id, context.parent_run_id,
        tune.get_context().get_trial_id(), spec.tags()["trial_key"],
    )  # fmt: skip
    # The newest state of this trial: Tune's checkpoint lags behind a killed driver (its state
    # snapshot), and a trial it forgot comes back under a new id that adopted the old one's run.
    ids = [tune.get_context().get_trial_id(), *([run.adopted_from] if run.adopted_from else [])]
    state = newest_state([_state_of(tune.get_checkpoint()), *(persisted_state(context, i) for i in ids)])
    done = already_finished(run.finished_metrics(), state)
    if done is not None:
        log.info("trial %s already finished: reporting its result again", spec.name)
        tune.report({**done, "mlflow_run_id": run.run_id, "finished": 1})
        if run.run_id and not run.is_finished():
            run.end("FINISHED")
        return
    dataset = load_data(job.data, context=job.model.context)  # each slice with its neighbours as the model reads them
    job = job.trained_on(dataset.train_foreground)  # train.preset decided by the training foreground: logged as trained
    params = {**spec.params(), **job.flat()}
    run.open(
        name=spec.name, tags={**spec.tags(), **runs.trial_tags()}, params=params, experiment_id=context.experiment_id
    )
    if state is not None:
        run.set_tags({"resumed_from_step": state["step"]})
        run.backfill(state["history"])
    try:
        result = _train_and_analyse(job, dataset, spec, run, state)
    except checkpoint.Diverged as error:  # said in its run; Tune's verdict ends it FAILED, never FINISHED
        _quietly(run.set_tags, {"diverged": str(error)})
        _quietly(run.flush, wait=5.0)
        raise
    except Exception:
        # The run stays RUNNING: the driver ends it from Tune's verdict (FAILED once out of retries,
        # KILLED when the sweep was interrupted). A trial dying because its sweep was stopped raises
        # too, often after the driver's last word, and must not mark itself FAILED.
        _quietly(run.flush, wait=5.0)
        raise
    run.end("FINISHED")
    log.info("trial %s finished: best val IoU %.4f", spec.name, result.best_iou)


def _train_and_analyse(
    job: JobConfig, dataset: Dataset, spec: TrialSpec, run: runs.TrialRun, state: dict | None
) -> TrainResult:
    device = select_device()

    def report(metrics: dict[str, float], folder: Path) -> None:
        tune.report(  # steps_total: for the sweep's progress lines only (not an MLflow metric)
            {**metrics, "mlflow_run_id": run.run_id, "steps_total": job.train.steps},
            checkpoint=tune.Checkpoint.from_directory(str(folder)),
        )
        run.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    result = train(job.model, job.train, dataset, provenance=job.to_dict(), report=report, state=state, device=device)
    model = checkpoint.model_from_payload(result.model)
    test = score_test_split(model, dataset, device)  # once, with the chosen checkpoint; {} without a test split
    if test:
        run.log_metrics(test, step=result.steps)
    with tempfile.TemporaryDirectory(prefix="dcn-trial-") as folder:
        folder = Path(folder)
        branch_metrics: dict[str, float] = {}
        if models.family_of(model).branches:
            analysis = analyse(
                model, dataset.inputs("val"), dataset.val_masks, folder / "feature_maps", device=device,
                labelled=dataset.val_labelled,
            )  # fmt: skip
            for image in analysis.images:
                run.log_artifact(image, "feature_maps")
            branch_metrics = analysis.metrics()
            run.log_metrics(branch_metrics, step=result.steps)
            weak_tag = analysis.weak_name
        else:  # the F1-F3 analysis is the DCN's: other families have no branches to score
            weak_tag = f"not applicable ({models.family_of(model).name})"
            log.info("trial %s: no branch analysis for a %s", spec.name, models.family_of(model).title)
        checkpoint.save(result.model, folder / "checkpoint" / checkpoint.MODEL_FILE)
        run.log_artifact(folder / "checkpoint" / checkpoint.MODEL_FILE, "checkpoint")
        run.set_tags({"weak_branch": weak_tag})
        run.flush()
        final = {
            **result.best_metrics,
            "best_step": result.best_step,
            "step": result.steps,
            METRIC: result.best_iou,
            **test,
            **branch_metrics,
            "mlflow_run_id": run.run_id,
            "finished": 1,
        }
        if models.family_of(model).branches:  # the weak branch by name (MLflow's metric holds its index)
            final["weak_branch"] = weak_tag
        finished = {
            **checkpoint.finished_state_payload(result.model, step=result.steps, history=list(result.history)),
            "final": final,
        }
        checkpoint.save(result.model, folder / "final" / checkpoint.MODEL_FILE)
        checkpoint.save(finished, folder / "final" / checkpoint.STATE_FILE)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(folder / "final")))
    return result


def _state_of(saved: tune.Checkpoint | None) -> dict[str, Any] | None:
    if saved is None:
        return None
    with saved.as_directory() as folder:
        return checkpoint.load(Path(folder) / checkpoint.STATE_FILE)


def newest_state(states: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The most advanced of the training states found (the highest step; a finished one wins)."""
    found = [state for state in states if state is not None]
    return max(found, key=lambda state: ("final" in state, state["step"]), default=None)


def persisted_state(context: SweepContext, trial_id: str) -> dict[str, Any] | None:
    """The newest checkpoint that trial ``trial_id`` persisted in the sweep's storage.

    Through :class:`Storage`: a local folder, a shared path or a pyarrow URI (s3://, gs://). In
    Ray 2.60 ``tune.get_context().get_trial_dir()`` is a local session folder, not this.
    """
    if not context.storage_root:
        return None
    store = Storage(context.storage_root)
    states = []
    for folder in store.checkpoints_of(context.sweep, trial_id):
        try:
            with store.local_copy(folder) as local:
                states.append(checkpoint.load(local / checkpoint.STATE_FILE))
        except Exception as error:  # a checkpoint cut short by the kill: skip it
            log.warning("skipping checkpoint %s: %s", folder, error)
    return newest_state(states)


def _quietly(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except Exception as error:  # the original error matters more
        log.warning("MLflow update failed while handling a trial error: %s", error)
