"""What a sweep's trials say, with seeds: per-configuration intervals, the guided-vs-control verdict,
and the paper's mechanism (pure functions over the per-trial rows of the results table).

Every comparison is paired by seed: a configuration's score in seed s is compared with the
reference's score in the same seed, because trials of one seed share their initialisation and
crop sequence. Differences from the reference carry a 95 % t interval and a paired t-test p-value,
Holm-adjusted across the rows. Guided follow-ups and their matched controls are compared by mean
gain over the reference (not best-of), with a permutation test that shuffles guided / control
labels within each seed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from dcn_ray.core.kernels import BRANCHES, Kernels, kernels_text
from dcn_ray.core.stats import Estimate, holm, mean_interval, paired_difference, stratified_permutation_test

Row = Mapping[str, Any]


@dataclass(frozen=True)
class ConfigResult:
    """One configuration over its seeds."""

    kernels: Kernels
    phase: str
    score: Estimate
    #: Paired difference from the reference (None for the reference itself).
    difference: Estimate | None
    p_value: float
    p_holm: float


@dataclass(frozen=True)
class Comparison:
    """Guided follow-ups against matched controls: mean gain over the reference, by seed."""

    seeds: int
    guided_configs: int
    control_configs: int
    guided: Estimate
    controls: Estimate
    difference: Estimate
    p_value: float
    label: str

    def sentence(self) -> str:
        """``guided +0.012 [+0.004, +0.020] vs matched controls -0.003 [...], p = 0.02, 3 seeds``."""
        p = "n/a" if math.isnan(self.p_value) else f"{self.p_value:.3g}"
        return (
            f"guided {self.guided.text(signed=True)} vs matched controls {self.controls.text(signed=True)} "
            f"({self.label} gain over the reference, {self.guided_configs} guided and {self.control_configs} "
            f"control configurations), difference {self.difference.text(signed=True)}, p = {p} "
            f"(permutation test within seeds), {self.seeds} seed{'s' if self.seeds != 1 else ''}"
        )


@dataclass(frozen=True)
class Mechanism:
    """Did the weak branch's separation rise when its kernel shrank, as the paper predicts?"""

    branch: str
    change: Estimate
    #: Per follow-up MLflow run: its separation change of the weak branch against the reference.
    per_run: Mapping[str, float]

    @property
    def observed(self) -> str:
        if math.isnan(self.change.low):
            return "rose" if self.change.mean > 0 else "did not rise"
        if self.change.low > 0:
            return "rose"
        return "fell" if self.change.high < 0 else "no clear change"

    def sentence(self) -> str:
        return (
            f"mechanism: predicted {self.branch} separation rises when its kernel shrinks; observed "
            f"{self.change.text(signed=True)} over {self.change.n} seed(s): {self.observed}"
        )


def _kernels(row: Row) -> Kernels:
    return (int(row["k1"]), int(row["k2"]), int(row["k3"]))


def _finished(rows: Sequence[Row], key: str) -> list[Row]:
    return [r for r in rows if r.get("status") == "finished" and _number(r.get(key))]


def scores_by_trial(rows: Sequence[Row], key: str) -> dict[tuple[Kernels, int], float]:
    """``(kernels, seed) -> score`` of every finished trial ((kernels, seed) is unique in a sweep)."""
    return {(_kernels(r), int(r.get("seed") or 0)): float(r[key]) for r in _finished(rows, key)}


def configuration_results(rows: Sequence[Row], key: str, reference: Sequence[int]) -> list[ConfigResult]:
    """Per configuration (in first-seen order): n, mean and interval, paired difference from the reference."""
    reference = tuple(reference)
    by_config: dict[tuple[Kernels, str], dict[int, float]] = defaultdict(dict)
    for row in _finished(rows, key):
        by_config[(_kernels(row), row["phase"])][int(row.get("seed") or 0)] = float(row[key])
    reference_scores = next((seeds for (k, _), seeds in by_config.items() if k == reference), {})
    results, p_values = [], []
    for (kernels, phase), seeds in by_config.items():
        score = mean_interval(list(seeds.values()))
        if kernels == reference or not reference_scores:
            results.append((kernels, phase, score, None, math.nan))
            continue
        paired = paired_difference(seeds, reference_scores)
        results.append((kernels, phase, score, paired.estimate, paired.p_value))
        p_values.append(paired.p_value)
    adjusted = iter(holm(p_values))
    return [
        ConfigResult(k, phase, score, diff, p, next(adjusted) if diff is not None else math.nan)
        for k, phase, score, diff, p in results
    ]


Round = Mapping[str, Any]
"""A follow-up round as the results table keeps it: ``round``, ``reference`` [k1, k2, k3],
``weak`` ("F3" or None), ``agreement``, ``guided`` and ``controls`` (lists of [k1, k2, k3])."""


def _arm_gains(rows: Sequence[Row], key: str, rounds: Sequence[Round], arm: str) -> dict[int, list[float]]:
    """Per seed: the gains of the configurations of ``arm`` over their round's reference, same seed."""
    scores = scores_by_trial(rows, key)
    gains: dict[int, list[float]] = defaultdict(list)
    for round_ in rounds:
        reference = tuple(round_["reference"])
        for kernels in {tuple(k) for k in round_[arm]}:
            for (configuration, seed), score in scores.items():
                base = scores.get((reference, seed))
                if configuration == kernels and base is not None:
                    gains[seed].append(score - base)
    return gains


def guided_vs_controls(rows: Sequence[Row], key: str, label: str, rounds: Sequence[Round]) -> Comparison | None:
    """The fair comparison of the paper's method, or None without both guided and control trials.

    The arms are what each round's rule named (guided: the weak branch shrunk; controls: matched
    to them), wherever those configurations ran: in the grid or as follow-ups.
    """
    guided, controls = _arm_gains(rows, key, rounds, "guided"), _arm_gains(rows, key, rounds, "controls")
    seeds = sorted(set(guided) & set(controls))
    if not seeds:
        return None
    per_seed_guided = [fmean(guided[s]) for s in seeds]
    per_seed_controls = [fmean(controls[s]) for s in seeds]
    ran = set(scores_by_trial(rows, key))
    count = lambda arm: len({tuple(k) for r in rounds for k in r[arm] if any(tuple(k) == c for c, _ in ran)})  # noqa: E731
    return Comparison(
        seeds=len(seeds),
        guided_configs=count("guided"),
        control_configs=count("controls"),
        guided=mean_interval(per_seed_guided),
        controls=mean_interval(per_seed_controls),
        difference=mean_interval([g - c for g, c in zip(per_seed_guided, per_seed_controls)]),
        p_value=stratified_permutation_test({s: (guided[s], controls[s]) for s in seeds}),
        label=label,
    )


def mechanism(rows: Sequence[Row], rounds: Sequence[Round]) -> Mechanism | None:
    """The weak branch's separation in the guided configurations minus in their reference, by seed."""
    first = next((r for r in rounds if r.get("weak") in BRANCHES and r["guided"]), None)
    if first is None:
        return None
    weak, key = first["weak"], f"separation_{first['weak']}"
    scores = scores_by_trial(rows, key)
    run_ids = {(_kernels(r), int(r.get("seed") or 0)): r.get("mlflow_run_id") for r in rows}
    per_seed: dict[int, list[float]] = defaultdict(list)
    per_run: dict[str, float] = {}
    for round_ in (r for r in rounds if r.get("weak") == weak):
        reference = tuple(round_["reference"])
        for kernels in {tuple(k) for k in round_["guided"]}:
            for (configuration, seed), value in scores.items():
                base = scores.get((reference, seed))
                if configuration != kernels or base is None:
                    continue
                per_seed[seed].append(value - base)
                if run_ids.get((configuration, seed)):
                    per_run[run_ids[(configuration, seed)]] = value - base
    if not per_seed:
        return None
    return Mechanism(weak, mean_interval([fmean(v) for v in per_seed.values()]), per_run)


def round_lines(rounds: Sequence[Round]) -> list[str]:
    """One line per follow-up round: its reference, the weak branch's agreement, the two arms."""
    lines = []
    for r in rounds:
        guided = ", ".join(kernels_text(k) for k in r["guided"]) or "none"
        controls = ", ".join(kernels_text(k) for k in r["controls"]) or "none"
        lines.append(
            f"round {r['round']}: weak branch of {kernels_text(r['reference'])} (lowest separation): "
            f"{r['agreement']}; guided {guided}; matched controls {controls}"
        )
    return lines


def configuration_markdown(results: Sequence[ConfigResult], label: str, reference: Sequence[int]) -> str:
    """The per-configuration table: n, mean [95 % CI], difference from the reference, p, Holm p."""
    head = [
        "k1, k2, k3",
        "phase",
        "n",
        f"{label} mean [95 % CI]",
        f"vs {kernels_text(reference)} (paired by seed)",
        "p",
        "p (Holm)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        diff = r.difference.text(signed=True) if r.difference else "reference"
        lines.append(
            f"| {', '.join(map(str, r.kernels))} | {r.phase} | {r.score.n} | {r.score.text()} | {diff} | "
            f"{_p(r.p_value)} | {_p(r.p_holm)} |"
        )
    return "\n".join(lines)


def _p(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3g}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
