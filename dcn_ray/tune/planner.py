"""What a sweep runs next: the grid x seeds, then follow-up rounds chosen from F1-F3 (no Ray).

Round 1 starts when every seed of the reference configuration (default 4-8-16) has finished:
the weak branch is the one most of its seeds name (see :func:`dcn_ray.core.branches.weak_branch`);
guided follow-ups shrink that branch's kernel and controls are drawn beside them
(:mod:`dcn_ray.tune.proposals`). Each further round takes as its reference the guided follow-up
with the best mean validation score of the last round. Every planned configuration runs once
per seed. :class:`dcn_ray.tune.searcher.GridThenFollowups` adapts this planner to Ray Tune.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from dcn_ray.config import FollowupConfig
from dcn_ray.core.kernels import BRANCHES, Kernels, kernels_text
from dcn_ray.tune.proposals import plan_followups, propose_controls
from dcn_ray.tune.spec import METRIC, TrialSpec

log = logging.getLogger(__name__)

#: Result keys kept of a finished trial: what the planner and the summary need.
SCORE_PREFIXES = ("contrast_", "alone_iou_", "drop_", "separation_")


@dataclass(frozen=True)
class Finished:
    """A trial that ended: its spec, the summary of its final result, whether it failed."""

    spec: TrialSpec
    result: Mapping[str, Any]
    error: bool


@dataclass(frozen=True)
class RoundDecision:
    """How one follow-up round was chosen (logged, and shown in the sweep's summary)."""

    round: int
    reference: Kernels
    #: The weak branch each reference seed named, in seed order (e.g. ("F3", "F3", "F2")).
    votes: tuple[str, ...]
    #: The majority weak branch, or None when no branch is weak in most seeds.
    weak: int | None
    guided: tuple[Kernels, ...]
    controls: tuple[Kernels, ...]
    extras: tuple[Kernels, ...] = ()

    @property
    def agreement(self) -> str:
        """``F3 in 3 of 3 seeds`` or ``no majority (F2, F3, F1)``."""
        if self.weak is None:
            return f"no majority ({', '.join(self.votes)})"
        return f"{BRANCHES[self.weak]} in {self.votes.count(BRANCHES[self.weak])} of {len(self.votes)} seeds"


def majority(votes: Sequence[int]) -> int | None:
    """The value more than half of ``votes`` name, else None (no silent tie-break)."""
    if not votes:
        return None
    value, count = Counter(votes).most_common(1)[0]
    return value if count * 2 > len(votes) else None


def summary_of(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a final Tune result the planner keeps (its checkpoint state stays small)."""
    if not result:
        return {}
    keep = (METRIC, "weak_branch", "mlflow_run_id")
    return {k: v for k, v in result.items() if k in keep or k.startswith(SCORE_PREFIXES)}


class RoundPlanner:
    """The queue of trials to run, and the follow-up rounds planned as trials finish."""

    def __init__(self, grid: Sequence[Kernels], seeds: Sequence[int], followup: FollowupConfig) -> None:
        self.followup = followup
        self.seeds = tuple(seeds)
        configs = [tuple(k) for k in grid]
        reference = tuple(followup.reference)
        if followup.enabled:  # the reference first, so the follow-ups can start early
            configs = [reference, *(k for k in configs if k != reference)]
        self.queue: list[TrialSpec] = [TrialSpec(k, seed=s) for k in configs for s in self.seeds]
        self.live: dict[str, TrialSpec] = {}
        self.done: dict[str, Finished] = {}
        self.decisions: list[RoundDecision] = []

    # -- the queue ---------------------------------------------------------------------------
    def next_trial(self, trial_id: str) -> TrialSpec | None:
        """The next trial to start as ``trial_id``, or None when nothing is queued now."""
        if not self.queue:
            return None
        spec = self.queue.pop(0)
        self.live[trial_id] = spec
        return spec

    @property
    def finished(self) -> bool:
        """Nothing queued, nothing running: no more trials will come."""
        return not self.queue and not self.live

    def complete(self, trial_id: str, result: Mapping[str, Any] | None, error: bool) -> None:
        """Record the end of ``trial_id``; plan the next round when its inputs are complete."""
        spec = self.live.pop(trial_id, None)
        if spec is None:
            return
        self.done[trial_id] = Finished(spec, summary_of(result), error or not result)
        if self.followup.enabled:
            self._plan_next_round()

    def seen(self) -> set[Kernels]:
        """Every configuration queued, running or done: never proposed again."""
        specs = [*self.queue, *self.live.values(), *(f.spec for f in self.done.values())]
        return {spec.kernels for spec in specs}

    # -- rounds ------------------------------------------------------------------------------
    def _plan_next_round(self) -> None:
        if len(self.decisions) >= self.followup.rounds:
            return
        reference = self._next_reference()
        if reference is None:
            return
        round_number = len(self.decisions) + 1
        kernels = reference[0].spec.kernels
        votes = [int(f.result["weak_branch"]) for f in reference if "weak_branch" in f.result]
        weak = majority(votes)  # -1 (no clear weak branch in that seed) is a vote too
        weak = None if weak is None or weak < 0 else weak
        settings = self.followup
        seed = settings.seed + len(self.decisions)
        if weak is None:  # no branch to guide by: random one-branch changes only
            count = settings.steps if settings.controls is None else settings.controls
            count += settings.random_controls
            guided, controls = (), ()
            extras = tuple(propose_controls(kernels, count, seed=seed, exclude=self.seen()))
        else:
            plan = plan_followups(
                kernels, weak, steps=settings.steps, step_size=settings.step_size, controls=settings.controls,
                random_controls=settings.random_controls, seed=seed, exclude=self.seen(),
            )  # fmt: skip
            guided, controls, extras = plan.guided, plan.controls, plan.extras
        names = tuple(BRANCHES[v] if v >= 0 else "none" for v in votes)
        decision = RoundDecision(round_number, kernels, names, weak, tuple(guided), tuple(controls), tuple(extras))
        self.decisions.append(decision)
        scores = reference[0].result
        provenance = {
            "round": round_number,
            "derived_from": ",".join(str(f.result.get("mlflow_run_id", "")) for f in reference),
            "reference": kernels,
            "reference_weak": BRANCHES[weak] if weak is not None else "",
            "reference_scores": ",".join(
                f"{k}={scores[k]:.4f}" for k in sorted(scores) if k.startswith(SCORE_PREFIXES)
            ),
        }
        for phase, configs in (("followup", guided), ("control", controls), ("random", extras)):
            self.queue += [TrialSpec(k, seed=s, phase=phase, **provenance) for k in configs for s in self.seeds]
        log.info(
            "round %d from %s: weak branch %s -> follow-ups %s, matched controls %s, random %s",
            round_number, kernels_text(kernels), decision.agreement, [kernels_text(k) for k in guided],
            [kernels_text(k) for k in controls], [kernels_text(k) for k in extras],
        )  # fmt: skip

    def _next_reference(self) -> list[Finished] | None:
        """The finished seeds of this round's reference configuration, once none is pending.

        Round 1: the job's reference. Later rounds: the guided follow-up of the last round with
        the best mean validation score over its seeds.
        """
        if not self.decisions:
            candidates = [tuple(self.followup.reference)]
            this_round = 0
        else:
            this_round = self.decisions[-1].round
            candidates = list(self.decisions[-1].guided)
        pending = [s for s in [*self.queue, *self.live.values()] if s.kernels in candidates and s.round == this_round]
        if pending:
            return None
        finished = [f for f in self.done.values() if not f.error and METRIC in f.result and f.spec.round == this_round]
        by_config = {k: [f for f in finished if f.spec.kernels == k] for k in candidates}
        by_config = {k: runs for k, runs in by_config.items() if runs}
        if not by_config:
            return None
        best = max(by_config, key=lambda k: fmean(f.result[METRIC] for f in by_config[k]))
        return sorted(by_config[best], key=lambda f: f.spec.seed)
