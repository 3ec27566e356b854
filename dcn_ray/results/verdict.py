"""The verdict on the paper's method from a sweep's rows: guided follow-ups against matched controls,
and the mechanism (pure functions over the per-trial rows and the rounds of the results table).

Per seed, each guided follow-up minus the mean of the controls matched to it (the same change of
k / stride elsewhere), averaged over the guided follow-ups; a paired t-test with the sign-flip
permutation test beside it, and an equivalence test (TOST) against the job's margin, so that a null
result reads "equivalent within +-margin" or "inconclusive". "Another branch shrunk" and "the weak
branch enlarged" are reported as separate contrasts, and so is guided minus sham (the reference's
kernels with the weak branch's start re-drawn as the guided change re-draws it): the kernel's effect
with the re-draw held equal. Pairing by seed: :mod:`dcn_ray.results.summary`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from dcn_ray.core.stats import (
    Equivalence,
    Estimate,
    equivalence_test,
    mean_interval,
    paired_difference,
    sign_flip_test,
)
from dcn_ray.kernels import BRANCHES, kernels_text, relative_change
from dcn_ray.results.summary import Row, config_of, p_text, row_kernels, scores_by_trial

Round = Mapping[str, Any]
"""A follow-up round as the results table keeps it: ``round``, ``reference`` [k1, k2, k3],
``weak`` ("F3" or None), ``agreement``, ``guided`` and ``controls`` (lists of [k1, k2, k3]), ``sham``
(the sham control's configuration, ``4-8-16~sham-F3``, or None)."""

#: Equivalence margin of the verdict when the sweep's rounds name none (sweep.followup.margin).
DEFAULT_MARGIN = 0.005
#: The contrasts of the verdict: which matched controls each compares the guided follow-ups with.
CONTRASTS = {
    "matched": "all matched controls",
    "shrunk": "another branch shrunk",
    "enlarged": "weak branch enlarged",
    "sham": "sham (kernels kept, start re-drawn)",
}


@dataclass(frozen=True)
class Contrast:
    """Guided follow-ups minus the mean of their matched controls (of one kind), per seed."""

    kind: str
    seeds: int
    difference: Estimate
    #: Two-sided paired t-test p-value of the per-seed differences.
    p_value: float
    #: Two-sided sign-flip permutation p-value of the same differences.
    p_permutation: float
    equivalence: Equivalence

    @property
    def verdict(self) -> str:
        """``guided better``, ``guided worse``, ``equivalent within +-0.005`` or ``inconclusive``."""
        if not math.isnan(self.p_value) and self.p_value < 0.05:
            return "guided better" if self.difference.mean > 0 else "guided worse"
        if self.equivalence.equivalent:
            return f"equivalent within +-{self.equivalence.margin:g}"
        return "inconclusive"

    def sentence(self) -> str:
        tost = "n/a" if math.isnan(self.equivalence.p_value) else f"{self.equivalence.p_value:.3g}"
        return (
            f"guided minus {CONTRASTS[self.kind]}: {self.difference.text(signed=True)} over {self.seeds} seed(s), "
            f"paired t p = {p_text(self.p_value) or 'n/a'}, permutation p = {p_text(self.p_permutation) or 'n/a'}, "
            f"TOST (+-{self.equivalence.margin:g}) p = {tost}: {self.verdict}"
        )


@dataclass(frozen=True)
class Comparison:
    """Guided follow-ups against their matched controls: gains over the reference, and the verdict."""

    seeds: int
    guided_configs: int
    control_configs: int
    #: Mean gain over the reference (same seed) of the guided and of the control configurations.
    guided: Estimate
    controls: Estimate
    #: The primary contrast (all matched controls), then "shrunk" and "enlarged" where they ran.
    contrasts: tuple[Contrast, ...]
    label: str

    @property
    def primary(self) -> Contrast:
        return self.contrasts[0]

    def sentence(self) -> str:
        """The gains of both arms and the verdict of each contrast, one line each."""
        lines = [
            f"guided {self.guided.text(signed=True)} vs matched controls {self.controls.text(signed=True)} "
            f"({self.label} gain over the reference, {self.guided_configs} guided and {self.control_configs} "
            f"control configurations, {self.seeds} seed{'s' if self.seeds != 1 else ''})"
        ]
        return "\n".join(lines + [c.sentence() for c in self.contrasts])


@dataclass(frozen=True)
class Mechanism:
    """Did the weak branch's calibrated separation rise when its kernel shrank, as the paper predicts?"""

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
            f"mechanism: predicted {self.branch} calibrated separation rises when its kernel shrinks; observed "
            f"{self.change.text(signed=True)} over {self.change.n} seed(s): {self.observed}"
        )


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


def matched_differences(rows: Sequence[Row], key: str, rounds: Sequence[Round], kind: str) -> dict[int, float]:
    """Per seed: the mean over guided follow-ups of (guided - mean of its matched controls of ``kind``).

    A control is matched to a guided follow-up when it changes k / stride by as much
    (:func:`dcn_ray.kernels.relative_change`); ``kind`` is ``matched`` (all), ``shrunk`` or ``enlarged``.
    """
    scores = scores_by_trial(rows, key)
    seeds = sorted({seed for _, seed in scores})
    per_seed: dict[int, list[float]] = defaultdict(list)
    for round_ in (r for r in rounds if r.get("weak") in BRANCHES):
        reference, weak = tuple(round_["reference"]), BRANCHES.index(round_["weak"])
        for guided in (tuple(k) for k in round_["guided"]):
            size = abs(relative_change(reference, guided)[1])
            controls = [
                tuple(c) for c in round_["controls"]
                if abs(relative_change(reference, c)[1]) == size
                and kind in ("matched", "enlarged" if tuple(c)[weak] != reference[weak] else "shrunk")
            ]  # fmt: skip
            for seed in seeds:
                matched = [scores[(c, seed)] for c in controls if (c, seed) in scores]
                if (guided, seed) in scores and matched:
                    per_seed[seed].append(scores[(guided, seed)] - fmean(matched))
    return {seed: fmean(values) for seed, values in per_seed.items()}


def sham_differences(rows: Sequence[Row], key: str, rounds: Sequence[Round]) -> dict[int, float]:
    """Per seed: the mean over guided follow-ups of (guided - the round's sham control), same seed.

    The sham has the reference's kernels and the weak branch's deconvolution re-drawn as the guided
    change re-draws it, so this difference is the kernel's effect with the re-drawn start held equal.
    """
    scores = scores_by_trial(rows, key)
    sham_scores = {
        (config_of(r), int(r.get("seed") or 0)): float(r[key])
        for r in rows
        if r.get("status") == "finished" and isinstance(r.get(key), (int, float)) and not math.isnan(r[key])
    }
    per_seed: dict[int, list[float]] = defaultdict(list)
    for round_ in (r for r in rounds if r.get("sham")):
        for guided in (tuple(k) for k in round_["guided"]):
            for (configuration, seed), score in scores.items():
                if configuration == guided and (round_["sham"], seed) in sham_scores:
                    per_seed[seed].append(score - sham_scores[(round_["sham"], seed)])
    return {seed: fmean(values) for seed, values in sorted(per_seed.items())}


def _contrast(kind: str, differences: Sequence[float], margin: float) -> Contrast:
    """Paired t (the differences against 0), sign-flip permutation and TOST of per-seed differences."""
    return Contrast(
        kind,
        len(differences),
        mean_interval(differences),
        paired_difference(dict(enumerate(differences)), dict.fromkeys(range(len(differences)), 0.0)).p_value,
        sign_flip_test(differences),
        equivalence_test(differences, margin),
    )


def guided_vs_controls(rows: Sequence[Row], key: str, label: str, rounds: Sequence[Round]) -> Comparison | None:
    """The fair comparison of the paper's method, or None without both guided and matched control trials.

    The arms are what each round's rule named (guided: the weak branch shrunk; controls: matched
    to them), wherever those configurations ran: in the grid or as follow-ups.
    """
    guided, controls = _arm_gains(rows, key, rounds, "guided"), _arm_gains(rows, key, rounds, "controls")
    margin = next((float(r["margin"]) for r in rounds if "margin" in r), DEFAULT_MARGIN)
    contrasts = []
    for kind in CONTRASTS:
        found = sham_differences(rows, key, rounds) if kind == "sham" else matched_differences(rows, key, rounds, kind)
        if found:
            contrasts.append(_contrast(kind, list(found.values()), margin))
    seeds = sorted(set(guided) & set(controls)) if controls else sorted(guided)  # a round with a sham alone counts
    if not contrasts or not seeds:
        return None
    ran = set(scores_by_trial(rows, key))
    count = lambda arm: len({tuple(k) for r in rounds for k in r[arm] if any(tuple(k) == c for c, _ in ran)})  # noqa: E731
    return Comparison(
        seeds=len(seeds),
        guided_configs=count("guided"),
        control_configs=count("controls"),
        guided=mean_interval([fmean(guided[s]) for s in seeds]),
        controls=mean_interval([fmean(controls[s]) for s in seeds if s in controls]),
        contrasts=tuple(contrasts),
        label=label,
    )


def mechanism(rows: Sequence[Row], rounds: Sequence[Round]) -> Mechanism | None:
    """The weak branch's calibrated separation in the guided configurations minus in their reference, by seed."""
    first = next((r for r in rounds if r.get("weak") in BRANCHES and r["guided"]), None)
    if first is None:
        return None
    weak, key = first["weak"], f"calibrated_{first['weak']}"
    scores = scores_by_trial(rows, key)
    run_ids = {(row_kernels(r), int(r.get("seed") or 0)): r.get("mlflow_run_id") for r in rows}
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
            f"round {r['round']}: weak branch of {kernels_text(r['reference'])} (lowest calibrated separation): "
            f"{r['agreement']}; guided {guided}; matched controls {controls}"
            + (f"; sham {r['sham']}" if r.get("sham") else "")
        )
    return lines
