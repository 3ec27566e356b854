"""A search's own results: the configurations it tried, ranked, and the best so far against trials and trial-hours.

Rows are one per trial (:func:`dcn_ray.tune.results.search_rows`): configuration, seed, status
(``finished``, ``stopped`` by ASHA, ``errored``), best validation IoU, test IoU, training time and
when it ended. A configuration's scores are over its *finished* seeds only (a stopped trial trained
fewer steps: it is counted, not averaged). The ranking is by mean best validation IoU, the score
the searcher was told; test IoU is reported beside it, with a 95 % t interval where there are
several seeds, and never chose anything. The best so far follows the configurations in the order
they completed (their last seed ended), against configurations completed and against trial-hours
spent by then (every trial's training time, stopped ones included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from dcn_ray.core.stats import mean_interval

MARKDOWN_FILE, CHART_FILE = "search.md", "best_so_far.png"


def configurations(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per configuration tried: seeds finished / stopped / errored, scores, when it completed."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["config"], []).append(row)
    found = []
    for name, trials in grouped.items():
        finished = [t for t in trials if t["status"] == "finished" and _number(t.get("best_val"))]
        found.append(
            {
                "config": name,
                "finished": len(finished),
                "stopped": sum(t["status"] == "stopped" for t in trials),
                "errored": sum(t["status"] == "errored" for t in trials),
                "val": fmean(t["best_val"] for t in finished) if finished else math.nan,
                "test": mean_interval([t["test"] for t in finished if _number(t.get("test"))]),
                "ended": max((t.get("ended") or 0.0) for t in trials),
            }
        )
    return sorted(found, key=lambda c: (-c["val"] if _number(c["val"]) else math.inf, c["config"]))


def best_so_far(rows: Sequence[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """(configurations completed, trial-hours spent, best mean validation IoU so far), in completion order."""
    done = sorted(configurations(rows), key=lambda c: c["ended"])
    points, best = [], -math.inf
    for index, configuration in enumerate(done, start=1):
        hours = sum((r.get("seconds") or 0.0) for r in rows if (r.get("ended") or 0.0) <= configuration["ended"]) / 3600
        if _number(configuration["val"]):
            best = max(best, configuration["val"])
        points.append((index, hours, best))
    return points


def markdown(rows: Sequence[dict[str, Any]], algorithm: str = "search") -> str:
    """The ranking and the best-so-far table as Markdown."""
    tried = configurations(rows)
    lines = [
        f"## The {algorithm} search: {len(tried)} configuration(s) tried, ranked by mean best validation IoU",
        "",
        "| rank | configuration | seeds finished | stopped (ASHA) | errored | mean best val IoU | test IoU mean [95 % CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, c in enumerate(tried, start=1):
        val = f"{c['val']:.4f}" if _number(c["val"]) else "n/a"
        lines.append(
            f"| {rank} | {c['config']} | {c['finished']} | {c['stopped']} | {c['errored']} | {val} | {c['test'].text()} |"
        )
    lines += [
        "",
        "Statistics count finished trials only; a trial ASHA stopped is listed as stopped, not averaged.",
        "",
        "| configurations completed | trial-hours | best mean val IoU so far |",
        "|---|---|---|",
        *(f"| {n} | {h:.3f} | {b:.4f} |" for n, h, b in best_so_far(rows) if math.isfinite(b)),
    ]
    return "\n".join(lines) + "\n"


def chart(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Best mean validation IoU so far against configurations completed and against trial-hours."""
    points = [p for p in best_so_far(rows) if math.isfinite(p[2])]
    if not points:
        return None
    from dcn_ray.results.charts import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for axis, x, label in ((axes[0], [p[0] for p in points], "configurations completed"),
                           (axes[1], [p[1] for p in points], "trial-hours spent")):  # fmt: skip
        axis.step(x, [p[2] for p in points], where="post", marker="o", color="#4c72b0")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("best mean validation IoU so far")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write(rows: Sequence[dict[str, Any]], folder: Path, algorithm: str) -> list[Path]:
    """``search.md`` and ``best_so_far.png`` in ``folder`` (the chart only where a configuration finished)."""
    text = folder / MARKDOWN_FILE
    text.write_text(markdown(rows, algorithm))
    drawn = chart(rows, folder / CHART_FILE)
    return [text] if drawn is None else [text, drawn]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
