"""What a sweep's trials say per configuration, with seeds (pure functions over the per-trial rows
of the results table); the verdict on the follow-ups is :mod:`dcn_ray.results.verdict`.

Every comparison is paired by seed: a configuration's score in seed s is compared with the
reference's score in the same seed, because trials of one seed share their initialisation (every
layer whose shape two configurations share starts from the same weights: dcn_ray.models.init) and
their crop sequence. Differences from the reference carry a 95 % t interval and a paired t-test
p-value, Holm-adjusted across the rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dcn_ray.core.stats import Estimate, holm, mean_interval, paired_difference
from dcn_ray.kernels import Kernels, kernels_text

Row = Mapping[str, Any]


#: The fewest seeds (pairs) a p-value is given for.
MIN_PAIRS = 3


@dataclass(frozen=True)
class ConfigResult:
    """One configuration over its seeds."""

    #: The DCN's kernels; None for a configuration of another family.
    kernels: Kernels | None
    phase: str
    score: Estimate
    #: Paired difference from the reference (None for the reference itself).
    difference: Estimate | None
    p_value: float
    p_holm: float
    #: The full configuration (``4-8-16``, ``unet_train.lr=0.001``: :attr:`dcn_ray.tune.spec.TrialSpec.config_name`).
    config: str = ""
    #: Whether this is the configuration the others are compared with (:func:`reference_config`).
    reference: bool = False

    @property
    def label(self) -> str:
        """``4, 8, 16`` for a configuration of kernels alone, else its full name."""
        if self.kernels is not None and self.config in ("", kernels_text(self.kernels)):
            return ", ".join(map(str, self.kernels))
        return self.config


def row_kernels(row: Row) -> Kernels | None:
    """A row's DCN kernels; None for a configuration of another family."""
    return None if row.get("k1") is None else (int(row["k1"]), int(row["k2"]), int(row["k3"]))


def config_of(row: Row) -> str:
    """A row's full configuration: its ``config`` column, else (older tables) its kernels, ``4-8-16``."""
    kernels = row_kernels(row)
    return row.get("config") or (kernels_text(kernels) if kernels is not None else "")


def _finished(rows: Sequence[Row], key: str) -> list[Row]:
    return [r for r in rows if r.get("status") == "finished" and _number(r.get(key))]


def scores_by_trial(rows: Sequence[Row], key: str) -> dict[tuple[Kernels, int], float]:
    """``(kernels, seed) -> score`` of every finished trial of kernels alone (DCN configurations without
    grid values: (kernels, seed) is unique among them); the follow-up comparisons read these."""
    return {
        (kernels, int(r.get("seed") or 0)): float(r[key])
        for r in _finished(rows, key)
        if (kernels := row_kernels(r)) is not None and config_of(r) == kernels_text(kernels)
    }


def reference_config(rows: Sequence[Row], reference: Sequence[int]) -> str | None:
    """The configuration the others are compared with: the reference kernels alone (``4-8-16``); in a grid
    sweep, where no configuration is that, the first in the rows' order with the reference kernels (the
    DCN of a families grid, ``4-8-16_train.lr=0.001`` of a learning-rate grid); None when none has them."""
    configs = [config_of(row) for row in rows if row_kernels(row) == tuple(reference)]
    name = kernels_text(tuple(reference))
    return name if name in configs else next(iter(configs), None)


def configuration_results(rows: Sequence[Row], key: str, reference: Sequence[int]) -> list[ConfigResult]:
    """Per configuration (in first-seen order): n, mean and interval, paired difference from the reference
    configuration (:func:`reference_config`)."""
    reference_name = reference_config(rows, reference)
    by_config: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    kernels_of: dict[str, Kernels | None] = {}
    for row in _finished(rows, key):
        by_config[(config_of(row), row["phase"])][int(row.get("seed") or 0)] = float(row[key])
        kernels_of[config_of(row)] = row_kernels(row)
    reference_scores = next((seeds for (c, _), seeds in by_config.items() if c == reference_name), {})
    results, p_values = [], []
    for (config, phase), seeds in by_config.items():
        score = mean_interval(list(seeds.values())).clipped(0.0, 1.0)  # every score it is read on lies in [0, 1]
        if config == reference_name or not reference_scores:
            results.append((config, phase, score, None, math.nan))
            continue
        paired = paired_difference(seeds, reference_scores)
        # Fewer than MIN_PAIRS pairs: a t-test's p means nothing (two near-equal differences read as "significant")
        p = paired.p_value if paired.estimate.n >= MIN_PAIRS else math.nan
        results.append((config, phase, score, paired.estimate.clipped(-1.0, 1.0), p))
        p_values.append(p)
    adjusted = iter(holm(p_values))
    return [
        ConfigResult(
            kernels_of[c],
            phase,
            score,
            diff,
            p,
            next(adjusted) if diff is not None else math.nan,
            c,
            c == reference_name,
        )
        for c, phase, score, diff, p in results
    ]


def p_text(value: float, pairs: int | None = None) -> str:
    """A p-value in three digits; empty for none (NaN), or why there is none with fewer than
    :data:`MIN_PAIRS` ``pairs``."""
    if pairs is not None and 0 < pairs < MIN_PAIRS:
        return f"n = {pairs}: not meaningful"
    return "" if math.isnan(value) else f"{value:.3g}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
