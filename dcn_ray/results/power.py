"""What a sweep's seeds can detect: the power statement of ``dcn-ray report`` (pure functions).

The noise is read off the sweep itself: the standard deviation of a single paired difference
(a configuration minus the reference, same seed; pooled over configurations), and, where the
sweep has a verdict, of its primary contrast (guided minus the mean of its matched controls).
From it, the paired t-test's power (alpha 0.05, two-sided, noncentral t) gives the smallest
effect the sweep's seeds detect with power 0.8, and the seeds an effect of ``--effect`` needs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from dcn_ray.core.stats import MOST_SEEDS, detectable_effect, seeds_approximately, seeds_needed
from dcn_ray.results.summary import Row, scores_by_trial
from dcn_ray.results.verdict import Round, matched_differences

POWER = 0.8


def pooled_paired_sd(rows: Sequence[Row], key: str, reference: Sequence[int]) -> tuple[float, int]:
    """(sd of one paired difference from the reference, pooled over configurations; its degrees of freedom)."""
    scores = scores_by_trial(rows, key)
    base = {seed: value for (kernels, seed), value in scores.items() if kernels == tuple(reference)}
    by_config: dict[tuple, list[float]] = defaultdict(list)
    for (kernels, seed), value in scores.items():
        if kernels != tuple(reference) and seed in base:
            by_config[kernels].append(value - base[seed])
    squares, df = 0.0, 0
    for differences in (d for d in by_config.values() if len(d) >= 2):
        mean = sum(differences) / len(differences)
        squares += sum((d - mean) ** 2 for d in differences)
        df += len(differences) - 1
    return (math.sqrt(squares / df) if df else math.nan), df


def _statement(what: str, sd: float, df: int, seeds: int, effect: float | None) -> str:
    text = f"power ({what}): sd of one paired difference {sd:.4f} ({df} df)"
    if seeds >= 2:
        text += (
            f"; with {seeds} seeds the smallest effect detected with power {POWER:g} (paired t, alpha 0.05) is "
            f"{detectable_effect(seeds, sd, power=POWER):.4f}"
        )
    if effect:
        try:
            text += f"; an effect of {effect:g} needs {seeds_needed(effect, sd, power=POWER)} seeds"
        except ValueError:  # more than the exact count goes to: the normal approximation says how many
            many = seeds_approximately(effect, sd, power=POWER)
            count = f"about {many:.2g}" if math.isfinite(many) else "more than 1e+300"
            text += f"; an effect of {effect:g} needs {count} seeds (more than {MOST_SEEDS}: out of reach)"
    return text


def power_lines(
    rows: Sequence[Row], key: str, reference: Sequence[int], rounds: Sequence[Round], effect: float | None = None
) -> list[str]:
    """The power statements a finished sweep supports ([] without enough paired seeds)."""
    lines = []
    sd, df = pooled_paired_sd(rows, key, reference)
    seeds = len({seed for kernels, seed in scores_by_trial(rows, key) if kernels == tuple(reference)})
    if df and sd > 0:
        lines.append(_statement("configuration vs reference", sd, df, seeds, effect))
    differences = list(matched_differences(rows, key, rounds, "matched").values())
    if len(differences) >= 2:
        mean = sum(differences) / len(differences)
        sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
        if sd > 0:
            lines.append(
                _statement("guided minus matched controls", sd, len(differences) - 1, len(differences), effect)
            )
    if effect and not lines:  # asked, and nothing to answer with: say what it takes
        lines.append(
            f"power: an effect of {effect:g} cannot be sized from this sweep: it needs the spread of paired "
            f"differences, so at least 2 seeds of the reference and of another configuration (this sweep has "
            f"{seeds} seed(s) of the reference); run 3 or more (sweep.seeds: 3, or --set sweep.seeds=3)"
        )
    return lines
