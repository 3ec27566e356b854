"""Charts of a sweep's per-configuration results: means with 95 % intervals, and score against k1-k3."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dcn_ray.kernels import kernels_text
from dcn_ray.results.summary import ConfigResult

PHASE_COLOURS = {
    "grid": "#4c72b0",
    "search": "#4c72b0",
    "followup": "#dd8452",
    "control": "#8c8c8c",
    "sham": "#8172b3",
    "random": "#55a868",
}
PHASE_LABELS = {
    "grid": "grid",
    "search": "search",
    "followup": "guided follow-up",
    "control": "matched control",
    "sham": "sham (start re-drawn)",
    "random": "random extra",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bounds(result: ConfigResult) -> tuple[float, float]:
    """Error-bar lengths below and above the mean (0 where there is no interval)."""
    if math.isnan(result.score.low):
        return 0.0, 0.0
    return result.score.mean - result.score.low, result.score.high - result.score.mean


def interval_chart(
    results: Sequence[ConfigResult], path: Path, reference: Sequence[int], label: str, *, floor: float | None = None
) -> Path:
    """Mean and 95 % interval per configuration, coloured by phase, the reference (and the
    all-foreground baseline ``floor``, where given) marked."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    shown = [r for r in results if not math.isnan(r.score.mean)]
    figure, axes = plt.subplots(figsize=(max(7.5, 0.45 * len(shown) + 2.5), 4.2))
    for index, result in enumerate(shown):
        below, above = _bounds(result)
        is_reference = result.reference
        axes.errorbar(
            index, result.score.mean, yerr=[[below], [above]], fmt="*" if is_reference else "o",
            markersize=12 if is_reference else 6, color=PHASE_COLOURS.get(result.phase, "#555555"), capsize=3,
        )  # fmt: skip
    reference_result = next((r for r in shown if r.reference), None)
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="", label=PHASE_LABELS[p]) for p, c in PHASE_COLOURS.items()
    ]
    if reference_result is not None:
        axes.axhline(reference_result.score.mean, color="black", linestyle="--", linewidth=1)
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                linestyle="--",
                marker="*",
                label=f"reference {reference_result.config or kernels_text(reference)}",
            )
        )
    if floor is not None:
        axes.axhline(floor, color="#c44e52", linestyle=":", linewidth=1.5)
        handles.append(Line2D([], [], color="#c44e52", linestyle=":", label="all-foreground baseline"))
    axes.set_xticks(range(len(shown)), [r.config or kernels_text(r.kernels) for r in shown], rotation=60, ha="right")
    seeds = max((r.score.n for r in shown), default=0)
    axes.set_ylabel(f"{label} (mean, 95 % CI)")
    kernels_only = all(r.kernels is not None and r.config in ("", kernels_text(r.kernels)) for r in shown)
    what = "kernel configuration (k1-k2-k3)" if kernels_only else "configuration"
    axes.set_title(f"{label} per {what}, up to {seeds} seed(s)", fontsize=10)
    axes.legend(handles=handles, loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def kernel_chart(results: Sequence[ConfigResult], path: Path, label: str) -> Path:
    """Score against each kernel size k1, k2, k3 (one panel each), with intervals (DCN configurations)."""
    plt = _pyplot()
    shown = [r for r in results if not math.isnan(r.score.mean) and r.kernels is not None]
    figure, panels = plt.subplots(1, 3, figsize=(11.0, 3.6), sharey=True)
    for branch, axes in enumerate(panels):
        for result in shown:
            below, above = _bounds(result)
            axes.errorbar(
                result.kernels[branch], result.score.mean, yerr=[[below], [above]], fmt="o",
                color=PHASE_COLOURS.get(result.phase, "#555555"), capsize=2, alpha=0.8,
            )  # fmt: skip
        axes.set_xlabel(f"k{branch + 1} (branch F{branch + 1}, stride {2 ** (branch + 1)})")
    panels[0].set_ylabel(f"{label} (mean, 95 % CI)")
    figure.suptitle(f"{label} against the deconvolution kernel sizes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
