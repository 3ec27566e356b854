"""Statistics for comparing configurations over seeds (pure numpy / scipy).

- :func:`mean_interval`: mean and 95 % Student-t interval of replicate scores.
- :func:`paired_difference`: a configuration against the reference, paired by seed: mean
  difference, its 95 % interval and the two-sided paired t-test p-value.
- :func:`holm`: Holm's step-down adjustment of p-values across the rows of a table.
- :func:`stratified_permutation_test`: do two groups of gains differ, with labels shuffled
  only within each seed (the reference's noise of that seed is shared by both groups).
- :func:`sign_flip_test`: the permutation test of paired differences (signs flipped).
- :func:`equivalence_test`: TOST, are paired differences within +-margin of 0.
- :func:`paired_power`, :func:`detectable_effect`, :func:`seeds_needed`: the power of a paired
  t-test (noncentral t), the smallest effect n seeds detect, the seeds an effect needs.
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

    def clipped(self, low: float, high: float) -> Estimate:
        """The interval cut to [low, high] (the range of a bounded score); the mean is left as it is."""
        if math.isnan(self.low):
            return self
        return Estimate(self.n, self.mean, min(max(self.low, low), high), max(min(self.high, high), low))

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
    #: Two-sided paired t-test p-value (NaN with fewer than 2 pairs or no spread: a t-test of
    #: differences that are all equal is undefined, and Holm keeps NaN out of its count).
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
    return PairedDifference(mean_interval(differences), t_test_p(differences))


def t_test_p(differences: Sequence[float]) -> float:
    """Two-sided one-sample t-test p-value that ``differences`` centre on 0.

    NaN with fewer than 2 values or no spread: the test is undefined there (never 0).
    """
    data = np.asarray([d for d in differences if not math.isnan(d)], dtype=np.float64)
    if data.size < 2 or not data.std() > 0:
        return math.nan
    return float(stats.ttest_1samp(data, 0.0).pvalue)


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


def sign_flip_test(differences: Sequence[float], *, draws: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value that paired ``differences`` centre on 0 (signs flipped at random).

    Exact (all 2^n sign patterns) for n <= 14, else Monte Carlo with the observed pattern counted,
    so p is never 0. NaN without differences or when all are 0.
    """
    data = np.asarray([d for d in differences if not math.isnan(d)], dtype=np.float64)
    if data.size == 0 or not np.any(data):
        return math.nan
    observed, tolerance = abs(float(data.mean())), 1e-12
    if data.size <= 14:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=data.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(draws, data.size))
    hits = np.count_nonzero(np.abs(signs @ data / data.size) >= observed - tolerance)
    if data.size <= 14:
        return float(hits / len(signs))
    return float((hits + 1) / (draws + 1))


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests (TOST) of paired differences against +-``margin``."""

    margin: float
    #: The larger of the two one-sided p-values; equivalent when below 1 - CONFIDENCE.
    p_value: float
    #: The 90 % interval whose inclusion in [-margin, margin] is the same test.
    low: float
    high: float

    @property
    def equivalent(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < 1 - CONFIDENCE


def equivalence_test(differences: Sequence[float], margin: float) -> Equivalence:
    """TOST at level 0.05: are the mean paired ``differences`` within +-``margin`` of 0?"""
    data = np.asarray([d for d in differences if not math.isnan(d)], dtype=np.float64)
    if data.size < 2 or not data.std() > 0 or not margin > 0:
        return Equivalence(margin, math.nan, math.nan, math.nan)
    error = float(data.std(ddof=1) / math.sqrt(data.size))
    mean, df = float(data.mean()), data.size - 1
    p_lower = float(stats.t.sf((mean + margin) / error, df))  # H0: mean <= -margin
    p_upper = float(stats.t.cdf((mean - margin) / error, df))  # H0: mean >= +margin
    half = float(stats.t.ppf(CONFIDENCE, df)) * error
    return Equivalence(margin, max(p_lower, p_upper), mean - half, mean + half)


#: The most seeds seeds_needed counts exactly.
MOST_SEEDS = 100_000


def paired_power(n: int, effect: float, sd: float, *, alpha: float = 1 - CONFIDENCE) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs for a true mean difference ``effect``
    when single differences have standard deviation ``sd`` (noncentral t, exact)."""
    if n < 2 or not sd > 0:
        return math.nan
    df, shift = n - 1, abs(effect) / sd * math.sqrt(n)
    if shift > 1e4:  # scipy's noncentral t gives NaN out there; the power is 1 to machine precision
        return 1.0
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    upper, lower = (float(v) for v in (stats.nct.sf(critical, df, shift), stats.nct.cdf(-critical, df, shift)))
    return (0.0 if math.isnan(upper) else upper) + (0.0 if math.isnan(lower) else lower)  # tails underflow


def seeds_needed(effect: float, sd: float, *, power: float = 0.8, alpha: float = 1 - CONFIDENCE) -> int:
    """The fewest pairs (seeds) whose paired t-test has ``power`` for ``effect`` (at most 100000):
    doubling to a count that suffices, then bisection (power grows with the count)."""
    if not sd > 0 or not abs(effect) > 0 or not math.isfinite(effect) or not math.isfinite(sd):
        raise ValueError(f"need a finite positive effect and standard deviation, got effect {effect}, sd {sd}")
    low, high = 1, 2  # power(low) < power <= power(high) once found
    while paired_power(high, effect, sd, alpha=alpha) < power:
        low, high = high, high * 2
        if low > MOST_SEEDS:
            raise ValueError(f"an effect of {effect} with sd {sd} needs more than {MOST_SEEDS} seeds")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if paired_power(middle, effect, sd, alpha=alpha) < power else (low, middle)
    if high > MOST_SEEDS:
        raise ValueError(f"an effect of {effect} with sd {sd} needs more than {MOST_SEEDS} seeds")
    return high


def seeds_approximately(effect: float, sd: float, *, power: float = 0.8, alpha: float = 1 - CONFIDENCE) -> float:
    """The pairs a paired test needs by the normal approximation, ((z_alpha/2 + z_power) sd / effect)^2:
    what to say of an effect too small for :func:`seeds_needed` to count exactly."""
    z = float(stats.norm.ppf(1 - alpha / 2)) + float(stats.norm.ppf(power))
    ratio = z * sd / abs(effect)
    return ratio * ratio if ratio < 1e150 else math.inf


def detectable_effect(n: int, sd: float, *, power: float = 0.8, alpha: float = 1 - CONFIDENCE) -> float:
    """The smallest true mean difference that ``n`` pairs detect with ``power`` (NaN for n < 2)."""
    if n < 2 or not sd > 0:
        return math.nan
    from scipy.optimize import brentq

    highest = 20.0 * sd / math.sqrt(n)  # a noncentrality of 20: power > 0.8 for any n >= 2
    return float(brentq(lambda d: paired_power(n, d, sd, alpha=alpha) - power, 1e-12 * sd, highest, xtol=1e-12 * sd))
