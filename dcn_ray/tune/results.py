"""Tune's results as the rows of the results table: one per trial, and one record per follow-up round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcn_ray.core.scores import TEST_HEADLINE
from dcn_ray.kernels import BRANCHES, branch_name, kernels_text
from dcn_ray.results import report
from dcn_ray.tune.planner import RoundDecision
from dcn_ray.tune.spec import METRIC, TrialSpec


def round_record(decision: RoundDecision, margin: float) -> dict[str, Any]:
    """A follow-up round as the results table keeps it (plain JSON values), with the verdict's margin."""
    return {
        "round": decision.round,
        "reference": list(decision.reference),
        "weak": BRANCHES[decision.weak] if decision.weak is not None else None,
        "votes": list(decision.votes),
        "agreement": decision.agreement,
        "guided": [list(k) for k in decision.guided],
        "controls": [list(k) for k in decision.controls],
        "sham": decision.sham_config or None,
        "fixed": decision.fixed,
        "margin": margin,
    }


def rows_of(grid) -> list[dict[str, Any]]:
    """One row per trial of Tune's results: its identity, status and final metrics."""
    rows = []
    for result in grid:
        config, metrics = result.config or {}, result.metrics or {}
        spec = TrialSpec.from_config(config) if TrialSpec.holds(config) else None
        status = "finished" if metrics.get("finished") else ("errored" if result.error else "unfinished")
        weak = metrics.get("weak_branch")
        identity: dict[str, Any] = {
            "k1": None,
            "k2": None,
            "k3": None,
            "seed": None,
            "phase": config.get("phase", "grid"),
        }
        if spec is not None:
            identity = {
                **dict(zip(("k1", "k2", "k3"), spec.kernels or (None, None, None))),
                "config": spec.config_name,
                "model_family": spec.family,
                "seed": spec.seed,
                "round": spec.round,
                "phase": spec.phase,
                "reference": kernels_text(spec.reference) if spec.reference else None,
                "reference_weak": spec.reference_weak or None,
            }
        rows.append(
            {
                **identity,
                "status": status,
                **{key: metrics.get(key) for key in report.METRIC_COLUMNS},
                "weak_branch": branch_name(weak),
                "mlflow_run_id": metrics.get("mlflow_run_id"),
                "trial_id": metrics.get("trial_id") or Path(result.path).name,
            }
        )
    return rows


def search_rows(grid, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial of a search, for :mod:`dcn_ray.results.search_report`: its configuration, seed,
    status (as ``rows`` say: ``stopped`` once ASHA's stops are marked), best validation and test IoU,
    training seconds (Tune's ``time_total_s``) and when it ended (Tune's ``timestamp``)."""
    by_trial = {row["trial_id"]: row for row in rows}
    found = []
    for result in grid:
        metrics = result.metrics or {}
        row = by_trial.get(metrics.get("trial_id") or Path(result.path).name)
        if row is None or row.get("config") is None:
            continue
        found.append(
            {
                "config": row["config"],
                "seed": row["seed"],
                "status": row["status"],
                "best_val": metrics.get(METRIC),
                "test": metrics.get(TEST_HEADLINE),
                "seconds": metrics.get("time_total_s"),
                "ended": metrics.get("timestamp"),
            }
        )
    return found
