"""Statistics for comparing configurations over seeds (pure numpy / scipy).

- :func:`mean_interval`: mean and 95 % Student-t interval of replicate scores.
- :func:`paired_difference`: a configuration against the reference, paired by seed: mean
  difference, its 95 % interval and the two-sided paired t-test p-value.
- :func:`holm`: Holm's step-down adjustment of p-values across the rows of a table.
- :func:`stratified_permutation_test`: do two groups of gains differ, with labels shuffled
  only within each seed (the reference's noise of that seed is shared by both groups).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % interval over ``n`` replicates (NaN bounds when ``n`` < 2)."""

    n: int
    mean: float
    low: float
    high: float

    def text(self, signed: bool = False) -> str:
        """``+0.012 [+0.004, +0.020]``; just the mean where there is no interval."""
        form = "{:+.3f}" if signed else "{:.3f}"
        if math.isnan(self.mean):
            return "n/a"
        if math.isnan(self.low):
            return form.format(self.mean)
        return f"{form.format(self.mean)} [{form.format(self.low)}, {form.format(self.high)}]"


@dataclass(frozen=True)
class PairedDifference:
    """A configuration minus the reference, paired by seed."""

    estimate: Estimate
    #: Two-sided paired t-test p-value (NaN with fewer than 2 pairs or no spread).
    p_value: float


def mean_interval(values: Sequence[float]) -> Estimate:
    """Mean and 95 % Student-t interval of ``values`` (NaNs dropped)."""
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = int(data.size)
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if n < 2:
        return Estimate(n, mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return Estimate(n, mean, mean - half, mean + half)


def paired_difference(scores: Mapping[int, float], reference: Mapping[int, float]) -> PairedDifference:
    """``scores`` minus ``reference`` over the seeds both have (dicts seed -> score)."""
    seeds = sorted(set(scores) & set(reference))
    differences = [scores[s] - reference[s] for s in seeds]
    estimate = mean_interval(differences)
    p_value = math.nan
    if len(differences) >= 2 and np.std(differences) > 0:
        p_value = float(stats.ttest_1samp(differences, 0.0).pvalue)
    elif len(differences) >= 2 and abs(float(np.mean(differences))) > 0:
        p_value = 0.0  # every seed moved by the same nonzero amount
    return PairedDifference(estimate, p_value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (NaNs stay NaN, not counted)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def stratified_permutation_test(
    groups: Mapping[int, tuple[Sequence[float], Sequence[float]]], *, draws: int = 20000, seed: int = 0
) -> float:
    """Two-sided p-value that group A's mean differs from group B's, shuffling within strata.

    ``groups`` maps a stratum (a seed) to (A values, B values) of that stratum. The statistic
    is mean(A) - mean(B) over all values; under the null the A/B labels are exchangeable within
    each stratum. Exact when the number of relabellings is at most ``draws``, else Monte Carlo
    (with the observed labelling counted, so p is never 0).
    """
    strata = [(np.asarray(a, float), np.asarray(b, float)) for a, b in groups.values() if len(a) and len(b)]
    if not strata:
        return math.nan
    pooled = [np.concatenate([a, b]) for a, b in strata]
    sizes = [len(a) for a, _ in strata]

    def statistic(masks: Sequence[np.ndarray]) -> float:
        a = np.concatenate([values[mask] for values, mask in zip(pooled, masks)])
        b = np.concatenate([values[~mask] for values, mask in zip(pooled, masks)])
        return float(a.mean() - b.mean())

    observed = statistic([np.arange(len(v)) < k for v, k in zip(pooled, sizes)])
    per_stratum = [math.comb(len(v), k) for v, k in zip(pooled, sizes)]
    total = math.prod(per_stratum)
    tolerance = 1e-12
    if total <= draws:
        choices = [
            [np.isin(np.arange(len(v)), combo) for combo in itertools.combinations(range(len(v)), k)]
            for v, k in zip(pooled, sizes)
        ]
        values = [statistic(masks) for masks in itertools.product(*choices)]
        return float(np.mean([abs(v) >= abs(observed) - tolerance for v in values]))
    rng = np.random.default_rng(seed)
    hits = 1
    for _ in range(draws):
        masks = [rng.permutation(len(v)) < k for v, k in zip(pooled, sizes)]
        hits += abs(statistic(masks)) >= abs(observed) - tolerance
    return hits / (draws + 1)
