"""The Tune search algorithm of a sweep: the grid, then follow-ups chosen from F1-F3.

Round 1 starts when the reference trial (default 4-8-16) finishes: its weak branch
(dcn_ray.core.branches.weak_branch over its own F1-F3 scores) decides which kernel the
guided follow-ups shrink, and random one-branch changes are queued beside them as
controls. Each further round takes the best guided follow-up of the last round as its
reference. Proposal rules live in dcn_ray.tune.planner (pure functions).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from ray.tune.search import Searcher

from dcn_ray.config import FollowupConfig
from dcn_ray.core.kernels import BRANCHES, Kernels
from dcn_ray.tune.planner import plan_followups

log = logging.getLogger(__name__)

METRIC = "best_val_iou"


def trial_config(kernels: Kernels, phase: str, **extra: Any) -> dict[str, Any]:
    """The Tune config of one trial (k1-k3 spelled out so Tune's tables show them)."""
    return {"kernels": list(kernels), "k1": kernels[0], "k2": kernels[1], "k3": kernels[2], "phase": phase, **extra}


class GridThenFollowups(Searcher):
    """Suggest every grid triple once, then the follow-ups of each round as they are planned."""

    def __init__(self, grid: list[Kernels], followup: FollowupConfig):
        super().__init__(metric=METRIC, mode="max")
        self.followup = followup
        reference = tuple(followup.reference)
        if followup.enabled and reference not in grid:
            grid = [reference, *grid]
        if followup.enabled:  # the reference first, so the follow-ups can start early
            grid = sorted(grid, key=lambda kernels: kernels != reference)
        self.queue: list[dict[str, Any]] = [trial_config(k, "grid", round=0) for k in grid]
        self.live: dict[str, dict[str, Any]] = {}
        self.done: dict[str, dict[str, Any]] = {}
        self.rounds_planned = 0

    # -- Tune's interface ------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.queue:
            config = self.queue.pop(0)
            self.live[trial_id] = config
            return config
        # Nothing queued: more may come once the live trials complete.
        return None if self.live else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config = self.live.pop(trial_id, None)
        if config is None:
            return
        self.done[trial_id] = {"config": config, "result": _summary(result), "error": error or not result}
        if self.followup.enabled:
            self._plan_next_round()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.get_state(), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.set_state(pickle.load(handle))

    def get_state(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "live": self.live,
            "done": self.done,
            "rounds_planned": self.rounds_planned,
            "followup": self.followup,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.queue, self.live, self.done = state["queue"], state["live"], state["done"]
        self.rounds_planned, self.followup = state["rounds_planned"], state["followup"]

    # -- planning --------------------------------------------------------------------------
    def seen(self) -> set[Kernels]:
        """Every triple queued, running or done: never proposed again."""
        configs = [*self.queue, *self.live.values(), *(entry["config"] for entry in self.done.values())]
        return {tuple(config["kernels"]) for config in configs}

    def _plan_next_round(self) -> None:
        if self.rounds_planned >= self.followup.rounds:
            return
        reference = self._next_reference()
        if reference is None:
            return
        summary = reference["result"]
        kernels = tuple(reference["config"]["kernels"])
        weak = int(summary["weak_branch"])
        plan = plan_followups(
            kernels,
            weak,
            steps=self.followup.steps,
            step_size=self.followup.step_size,
            controls=self.followup.controls,
            seed=self.followup.seed + self.rounds_planned,
            exclude=self.seen(),
        )
        self.rounds_planned += 1
        scores = ",".join(
            f"{k}={summary[k]:.4f}" for k in sorted(summary) if k.startswith(("contrast_", "alone_iou_", "drop_"))
        )
        extra = {
            "round": self.rounds_planned,
            "derived_from": summary.get("mlflow_run_id", ""),
            "reference_kernels": list(kernels),
            "reference_weak": BRANCHES[weak],
            "reference_scores": scores,
        }
        planned = [trial_config(k, "followup", **extra) for k in plan.guided] + [
            trial_config(k, "control", **extra) for k in plan.controls
        ]
        self.queue.extend(planned)
        log.info(
            "round %d from %s: weak branch %s -> follow-ups %s, controls %s",
            self.rounds_planned,
            kernels,
            BRANCHES[weak],
            plan.guided,
            plan.controls,
        )

    def _next_reference(self) -> dict[str, Any] | None:
        """Round 1: the finished reference trial. Later: the best guided follow-up of the last round."""
        finished = [entry for entry in self.done.values() if not entry["error"] and "weak_branch" in entry["result"]]
        if self.rounds_planned == 0:
            reference = tuple(self.followup.reference)
            return next((e for e in finished if tuple(e["config"]["kernels"]) == reference), None)
        last_round = self.rounds_planned
        still_running = [
            c for c in [*self.queue, *self.live.values()] if c.get("round") == last_round and c["phase"] == "followup"
        ]
        guided = [e for e in finished if e["config"].get("round") == last_round and e["config"]["phase"] == "followup"]
        if still_running or not guided:
            return None
        return max(guided, key=lambda entry: entry["result"].get(METRIC, float("-inf")))


def _summary(result: dict | None) -> dict[str, Any]:
    if not result:
        return {}
    keep = (METRIC, "weak_branch", "mlflow_run_id", "val_vrand")
    return {k: v for k, v in result.items() if k in keep or k.startswith(("contrast_", "alone_iou_", "drop_"))}
