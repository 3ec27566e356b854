"""What a sweep runs next: the grid x seeds, then follow-up rounds chosen from F1-F3 (no Ray).

Round 1 starts when every seed of the reference configuration (default 4-8-16) has finished:
the weak branch is the one whose calibrated separation is the lowest over its seeds by more than
their spread allows (:func:`dcn_ray.core.branches.weak_across_seeds`); guided follow-ups shrink
that branch's kernel and every matched control runs beside them (:mod:`dcn_ray.core.proposals`).
Each further round takes as its reference the guided follow-up with the best mean validation
score of the last round. Every planned configuration runs once per seed. By default each round also
runs a sham control (phase ``sham``, ``4-8-16~sham-F3``): the reference's kernels with the weak
branch's deconvolution re-drawn, as the guided change re-draws it, so that guided minus sham is the
kernel's effect with the re-draw held equal. ``sweep.followup.weak`` fixes the weak branch in advance.
:class:`dcn_ray.tune.searcher.GridThenFollowups` adapts this planner to Ray Tune.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from dcn_ray.core.branches import weak_across_seeds
from dcn_ray.core.proposals import plan_followups, propose_controls
from dcn_ray.job.config import FollowupConfig
from dcn_ray.job.sweep_grid import REDRAW_KEY, Variant, config_name
from dcn_ray.kernels import BRANCHES, STRIDES, Kernels, branch_name, kernels_text
from dcn_ray.tune.spec import METRIC, TrialSpec

log = logging.getLogger(__name__)

#: Result keys kept of a finished trial: what the planner and the summary need.
SCORE_PREFIXES = ("contrast_", "alone_iou_", "drop_", "separation_", "calibrated_")


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
    #: The weak branch each reference seed named alone, in seed order (e.g. ("F3", "F3", "none")).
    votes: tuple[str, ...]
    #: The branch weakest over the seeds beyond their spread, or None (weak_across_seeds).
    weak: int | None
    guided: tuple[Kernels, ...]
    controls: tuple[Kernels, ...]
    extras: tuple[Kernels, ...] = ()
    #: The branch a sham control re-draws (the weak one), "" when the round runs none.
    sham: str = ""
    #: Whether the weak branch was fixed in advance (``sweep.followup.weak``), not named by the rule.
    fixed: bool = False

    @property
    def agreement(self) -> str:
        """``F3 (lowest in 3 of 3 seeds)`` or ``none clearly weakest (seeds: F2, F3, none)``."""
        if self.weak is None:
            return f"none clearly weakest (seeds: {', '.join(self.votes)})"
        lowest = f"lowest in {self.votes.count(BRANCHES[self.weak])} of {len(self.votes)} seeds"
        if self.fixed:
            return f"{BRANCHES[self.weak]} (fixed in advance{'; ' + lowest if self.votes else ''})"
        return f"{BRANCHES[self.weak]} ({lowest})"

    @property
    def sham_params(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The grid values that make the sham control (``(("model.redraw", ("F3",)),)``), () without one."""
        return ((REDRAW_KEY, (self.sham,)),) if self.sham else ()

    @property
    def sham_config(self) -> str:
        """The sham control's configuration name, ``4-8-16~sham-F3``; "" without one."""
        return config_name("dcn", self.reference, self.sham_params) if self.sham else ""


def summary_of(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a final Tune result the planner keeps (its checkpoint state stays small)."""
    if not result:
        return {}
    keep = (METRIC, "weak_branch", "mlflow_run_id")
    return {k: v for k, v in result.items() if k in keep or k.startswith(SCORE_PREFIXES)}


class RoundPlanner:
    """The queue of trials to run, and the follow-up rounds planned as trials finish."""

    def __init__(self, grid: Sequence[Kernels | Variant], seeds: Sequence[int], followup: FollowupConfig) -> None:
        """``grid``: the configurations, as DCN kernel triples or :class:`~dcn_ray.job.sweep_grid.Variant` objects."""
        self.followup = followup
        self.seeds = tuple(seeds)
        configs = [c if isinstance(c, Variant) else Variant("dcn", tuple(c)) for c in grid]
        reference = Variant("dcn", tuple(followup.reference))
        if followup.enabled:  # the reference first, so the follow-ups can start early (a DCN without a grid)
            configs = [reference, *(c for c in configs if c != reference)]
        self.queue: list[TrialSpec] = [
            TrialSpec(tuple(c.settings.items()), seed=s) for c in configs for s in self.seeds
        ]
        self.live: dict[str, TrialSpec] = {}
        self.done: dict[str, Finished] = {}
        self.decisions: list[RoundDecision] = []
        if followup.enabled and followup.weak is not None:  # nothing to wait for: round 1 is queued now,
            self._queue_round(decide_round(1, [], followup, kernels=reference.kernels), [])
            # the comparison's arms first (guided beside sham, then the controls), seed by seed, the reference
            # last: a sweep cut short still holds whole pairs of its first contrasts
            order = {"followup": 0, "sham": 0, "control": 1}
            self.queue.sort(key=lambda spec: (order.get(spec.phase, 2), self.seeds.index(spec.seed)))

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
        return {spec.kernels for spec in specs if spec.kernels is not None}

    # -- rounds ------------------------------------------------------------------------------
    def _plan_next_round(self) -> None:
        if len(self.decisions) >= self.followup.rounds:
            return
        pending = {spec.kernels for spec in [*self.queue, *self.live.values()] if not spec.grid_values}
        # kernels alone (no grid values): a sham shares its reference's kernels, never a reference itself
        outcomes = [
            Outcome(f.spec.kernels, f.spec.seed, branch_name(f.result.get("weak_branch")) or "none", f.result[METRIC],
                    str(f.result.get("mlflow_run_id", "")), calibrated_of(f.result))
            for f in self.done.values() if not f.error and METRIC in f.result and not f.spec.grid_values
        ]  # fmt: skip
        reference = next_reference(self.decisions, outcomes, pending, self.followup)
        if reference is None:
            return
        self._queue_round(decide_round(len(self.decisions) + 1, reference, self.followup, seen=self.seen()), reference)

    def _queue_round(self, decision: RoundDecision, reference: Sequence[Outcome]) -> None:
        self.decisions.append(decision)
        provenance = {
            "round": decision.round,
            "derived_from": ",".join(o.run_id for o in reference),
            "reference": decision.reference,
            "reference_weak": BRANCHES[decision.weak] if decision.weak is not None else "",
            "reference_scores": _scores_text(self.done.values(), decision.reference),
        }
        seen = self.seen()  # guided and control configurations that already ran count, and are not rerun
        for phase, configs in (
            ("followup", decision.guided),
            ("control", decision.controls),
            ("random", decision.extras),
        ):
            new = [k for k in configs if k not in seen]
            self.queue += [TrialSpec.of(k, seed=s, phase=phase, **provenance) for k in new for s in self.seeds]
        configs = {
            spec.config_name for spec in [*self.queue, *self.live.values(), *(f.spec for f in self.done.values())]
        }
        if decision.sham and decision.sham_config not in configs:  # every seed the guided configurations run
            self.queue += [
                TrialSpec.of(decision.reference, seed=s, phase="sham", grid_values=decision.sham_params, **provenance)
                for s in self.seeds
            ]
        log.info(
            "round %d from %s: weak branch %s -> follow-ups %s, matched controls %s, sham %s, random %s",
            decision.round, kernels_text(decision.reference), decision.agreement,
            [kernels_text(k) for k in decision.guided], [kernels_text(k) for k in decision.controls],
            decision.sham_config or "none", [kernels_text(k) for k in decision.extras],
        )  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What a finished trial tells the round planning."""

    kernels: Kernels
    seed: int
    #: The weak branch this seed names: ``F1``-``F3``, or ``none`` (no clear weak branch).
    weak: str
    score: float
    run_id: str = ""
    #: The calibrated separations of F1, F2, F3 (NaN where unknown).
    calibrated: tuple[float, float, float] = (math.nan, math.nan, math.nan)


def calibrated_of(result: Mapping[str, Any]) -> tuple[float, float, float]:
    """``calibrated_F1..F3`` of a trial's result or results row, NaN where missing."""
    values = [result.get(f"calibrated_{name}") for name in BRANCHES]
    return tuple(float(v) if isinstance(v, (int, float)) else math.nan for v in values)  # type: ignore[return-value]


def next_reference(
    decisions: Sequence[RoundDecision], outcomes: Sequence[Outcome], pending: set[Kernels], settings: FollowupConfig
) -> list[Outcome] | None:
    """The finished seeds of the next round's reference, once none of its candidates is pending.

    Round 1: the job's reference configuration. Later rounds: of the last round's guided
    configurations (run in that round or already in the grid), the one with the best mean
    validation score over its seeds.
    """
    candidates = list(decisions[-1].guided) if decisions else [tuple(settings.reference)]
    if pending & set(candidates):
        return None
    by_config = {k: sorted((o for o in outcomes if o.kernels == k), key=lambda o: o.seed) for k in candidates}
    by_config = {k: runs for k, runs in by_config.items() if runs}
    if not by_config:
        return None
    return by_config[max(by_config, key=lambda k: fmean(o.score for o in by_config[k]))]


def decide_round(
    number: int, reference: Sequence[Outcome], settings: FollowupConfig, *, seen=frozenset(), kernels=None
) -> RoundDecision:
    """Round ``number`` from the seeds of its reference: the weak branch over seeds, the guided
    configurations and all their matched controls (whether or not they already ran: they are the
    two arms of the comparison), the sham control's branch, and random extras not in ``seen``. The
    weak branch is ``settings.weak`` where the job fixed it (then ``reference`` may be empty and
    ``kernels`` names it). Deterministic for its inputs."""
    kernels = tuple(kernels) if kernels is not None else reference[0].kernels
    names = tuple(o.weak for o in reference)
    fixed = settings.weak is not None and number == 1  # later rounds' references are new: the rule decides
    weak = BRANCHES.index(settings.weak) if fixed else weak_across_seeds([o.calibrated for o in reference])
    seed = settings.seed + number - 1
    if weak is None:  # no branch to guide by: random one-branch changes only
        count = (settings.steps if settings.controls is None else settings.controls) + settings.random_controls
        guided, controls = (), ()
        extras = tuple(propose_controls(kernels, count, seed=seed, exclude=seen))
    else:
        plan = plan_followups(
            kernels, weak, steps=settings.steps, step_size=step_of(settings, weak), controls=settings.controls,
            random_controls=settings.random_controls, seed=seed, exclude=seen,
        )  # fmt: skip
        guided, controls, extras = plan.guided, plan.controls, plan.extras
    sham = BRANCHES[weak] if settings.sham and weak is not None and guided else ""
    return RoundDecision(number, kernels, names, weak, tuple(guided), tuple(controls), tuple(extras), sham, fixed)


def step_of(settings: FollowupConfig, weak: int) -> int:
    """The kernel step of the weak branch: ``relative_step`` x its stride (at least 1), else ``step_size``."""
    if settings.relative_step is None:
        return settings.step_size
    return max(1, round(settings.relative_step * STRIDES[weak]))


def replay_rounds(rows: Sequence[Mapping[str, Any]], settings: FollowupConfig) -> list[RoundDecision]:
    """The rounds a sweep decided, rebuilt from its results rows (``weak_branch`` names, METRIC).

    Uses the same rules as the planner, so the report knows which configurations were guided and
    which were their matched controls, also those that had already run in the grid.
    """
    if not settings.enabled:
        return []
    # rows of kernels alone: a sham (4-8-16~sham-F3) shares its reference's kernels, never a reference itself
    outcomes = [
        Outcome((int(r["k1"]), int(r["k2"]), int(r["k3"])), int(r.get("seed") or 0),
                branch_name(r.get("weak_branch")) or "none", float(r[METRIC]), str(r.get("mlflow_run_id") or ""),
                calibrated_of(r))
        for r in rows if r.get("status") == "finished" and isinstance(r.get(METRIC), (int, float))
        and r.get("config") in (None, "", kernels_text((int(r["k1"]), int(r["k2"]), int(r["k3"]))))
    ]  # fmt: skip
    decisions: list[RoundDecision] = []
    while len(decisions) < settings.rounds:
        reference = next_reference(decisions, outcomes, set(), settings)
        if reference is None and not decisions and settings.weak is not None:  # fixed: planned without them
            reference = []
        if reference is None:
            break
        first = None if decisions else tuple(settings.reference)  # round 1's kernels are the job's
        decisions.append(decide_round(len(decisions) + 1, reference, settings, kernels=first))
    return decisions


def _scores_text(done, kernels: Kernels) -> str:
    """The branch scores of the reference's first seed: ``contrast_F1=0.9100,...``."""
    first = next((f.result for f in done if f.spec.kernels == kernels and not f.error), {})
    return ",".join(f"{k}={first[k]:.4f}" for k in sorted(first) if k.startswith(SCORE_PREFIXES))
