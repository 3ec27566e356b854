"""The Ray Tune function trainable: one kernel configuration, tracked in its own MLflow child run.

Resume contract (Ray's custom_func_checkpointing example): a restarted trial continues
from ``tune.get_checkpoint()``; a trial whose checkpoint is already final reports its
final result again and exits at once (Tune's state snapshot can lag behind a kill).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from dcn_ray.config import JobConfig
from dcn_ray.core import checkpoint
from dcn_ray.core.analysis import analyse
from dcn_ray.core.dataset import Dataset, load_dataset
from dcn_ray.core.kernels import kernels_text
from dcn_ray.core.train import TrainResult, select_device, state_payload_of, train
from dcn_ray.track import runs as tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares (passed with tune.with_parameters)."""

    job: JobConfig
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def load_job_dataset(job: JobConfig) -> Dataset:
    data = job.data
    return load_dataset(
        data.images,
        data.labels,
        foreground=data.foreground,
        train=data.split.train,
        val=data.split.val,
        test=data.split.test,
        roi=data.roi,
    )


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Train ``config["kernels"]``; report each evaluation to Tune and MLflow."""
    job = context.job
    kernels = tuple(config["kernels"])
    run = tracking.TrialRun(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        tune.get_context().get_trial_id(),
        kernels_text(kernels),
    )
    tags = {
        "phase": config.get("phase", "grid"),
        "kernels": kernels_text(kernels),
        "derived_from": config.get("derived_from", ""),
        "weak_branch_of_reference": config.get("reference_weak", ""),
        "reference_scores": config.get("reference_scores", ""),
        **tracking.trial_tags(),
    }
    params = {"k1": kernels[0], "k2": kernels[1], "k3": kernels[2], "phase": tags["phase"], **job.flat()}

    done = run.finished_result()  # finished before a kill that Tune's lagging snapshot missed
    if done is not None:
        log.info("trial %s already finished in MLflow: reporting its result again", kernels_text(kernels))
        tune.report(done)
        return
    state = _state_of(tune.get_checkpoint())
    if state is None and run.adopted_from:
        state = _newest_state_of_trial(run.adopted_from)
    if state is not None and "final" in state:  # not just trained: analysed and reported too
        log.info("trial %s already finished: reporting its result again", kernels_text(kernels))
        tune.report(dict(state["final"]))
        if not run.is_finished():
            run.end("FINISHED")
        return
    run.open(name=kernels_text(kernels), tags=tags, params=params, experiment_id=context.experiment_id)
    if state is not None:
        run.set_tags({"resumed_from_step": state["step"]})
        run.backfill(state["history"])
    try:
        result = _train_and_analyse(job, kernels, run, state)
    except Exception:  # not SystemExit: Tune stops a trial (Ctrl-C) with sys.exit in tune.report
        _quietly(run.flush, wait=5.0)
        _quietly(run.end, "FAILED")
        raise
    run.end("FINISHED")
    log.info("trial %s finished: best val IoU %.4f", kernels_text(kernels), result.best_iou)


def _train_and_analyse(job: JobConfig, kernels: tuple, run: tracking.TrialRun, state: dict | None) -> TrainResult:
    dataset = load_job_dataset(job)
    device = select_device()

    def report(metrics: dict[str, float], folder: Path) -> None:
        tune.report({**metrics, "mlflow_run_id": run.run_id}, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        run.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    result = train(job, kernels, dataset, report=report, state=state, device=device)
    model = checkpoint.model_from_payload(result.model)
    with tempfile.TemporaryDirectory(prefix="dcn-trial-") as folder:
        folder = Path(folder)
        analysis = analyse(model, dataset.val_images, dataset.val_masks, folder / "feature_maps", device=device)
        for image in analysis.images:
            run.log_artifact(image, "feature_maps")
        checkpoint.save(result.model, folder / "checkpoint" / checkpoint.MODEL_FILE)
        run.log_artifact(folder / "checkpoint" / checkpoint.MODEL_FILE, "checkpoint")
        run.log_metrics(analysis.metrics(), step=result.steps)
        run.set_tags({"weak_branch": analysis.weak_name})
        run.flush()
        final = {
            **result.best_metrics,
            "best_step": result.best_step,
            "step": result.steps,
            "best_val_iou": result.best_iou,
            **analysis.metrics(),
            "mlflow_run_id": run.run_id,
            "finished": 1,
        }
        finished = {**state_payload_of(result), "final": final}
        checkpoint.save(result.model, folder / "final" / checkpoint.MODEL_FILE)
        checkpoint.save(finished, folder / "final" / checkpoint.STATE_FILE)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(folder / "final")))
    return result


def _state_of(saved: tune.Checkpoint | None) -> dict[str, Any] | None:
    if saved is None:
        return None
    with saved.as_directory() as folder:
        return checkpoint.load(Path(folder) / checkpoint.STATE_FILE)


def _newest_state_of_trial(trial_id: str) -> dict[str, Any] | None:
    """The most advanced checkpoint that trial ``trial_id`` left in this sweep's folder (local storage)."""
    sweep_folder = Path(tune.get_context().get_trial_dir()).parent
    states = []
    for folder in sweep_folder.glob(f"*_{trial_id}/checkpoint_*"):
        try:
            states.append(checkpoint.load(folder / checkpoint.STATE_FILE))
        except Exception as error:  # a checkpoint cut short by the kill: skip it
            log.warning("skipping checkpoint %s: %s", folder, error)
    return max(states, key=lambda state: state["step"], default=None)


def _quietly(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except Exception as error:  # the original error matters more
        log.warning("MLflow update failed while handling a trial error: %s", error)
