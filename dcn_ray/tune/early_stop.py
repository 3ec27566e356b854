"""Trials the scheduler (ASHA) stopped early: their rows, their MLflow runs, their checkpoints.

A trial ASHA stops ends without its final report: Tune ends it between two evaluations. Once the
sweep has run to its end, such a trial (no final report, no error) is marked ``stopped`` in the
results table with the step it reached; its MLflow run gets the tags ``stopped_early`` (the
scheduler) and ``stopped_at_step``, the newest checkpoint Tune kept for it (the best model it had
reached) as its ``checkpoint`` artifact, and ends FINISHED. Per-configuration statistics count
finished trials only (:mod:`dcn_ray.track.summary`), so a stopped trial is listed, never averaged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dcn_ray.core import checkpoint

log = logging.getLogger(__name__)

STOPPED = "stopped"


def mark_stopped(grid, rows: list[dict[str, Any]], uri: str, scheduler: str) -> list[dict[str, Any]]:
    """``rows`` with the trials ``scheduler`` stopped marked (and their runs tagged and ended)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    by_trial = {row.get("trial_id"): row for row in rows}
    for result in grid:
        metrics = result.metrics or {}
        if result.error is not None or metrics.get("finished") or "step" not in metrics:
            continue
        row = by_trial.get(metrics.get("trial_id") or Path(result.path).name)
        if row is None:
            continue
        step = int(metrics["step"])
        row["status"], row["stopped_at_step"] = STOPPED, step
        run_id = metrics.get("mlflow_run_id")
        if not run_id:
            continue
        client.set_tag(run_id, "stopped_early", scheduler)
        client.set_tag(run_id, "stopped_at_step", str(step))
        kept = result.checkpoint
        if kept is not None:
            with kept.as_directory() as folder:
                model = Path(folder) / checkpoint.MODEL_FILE
                if model.exists():
                    client.log_artifact(run_id, str(model), "checkpoint")
        client.set_terminated(run_id, status="FINISHED")
        log.info("trial %s: stopped by %s at step %d", row.get("trial_id"), scheduler, step)
    return rows
