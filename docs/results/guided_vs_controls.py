"""The pre-registered analyses of isbi2012-guided-vs-controls.md, from a finished sweep.

    python docs/results/guided_vs_controls.py dcn-ray-runs/isbi2012-guided [--tracking-uri sqlite:///mlflow.db]

Prints the primary result (dcn-ray's own verdict: guided minus the mean of its matched controls,
paired t, sign-flip test, TOST), the secondary analyses (the two contrasts, dose-response along the
study's series, the mechanism, the weak branch per seed, learning curves) and the per-trial table.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from dcn_ray.core.stats import mean_interval, t_test_p
from dcn_ray.kernels import BRANCHES, kernels_text, relative_change
from dcn_ray.results import report, summary, verdict


def dose_response(rows: list[dict], rounds: list[dict], key: str) -> list[str]:
    """Per branch: the per-seed slope of ``key`` against the change of k / stride, mean [95 % CI]."""
    lines = []
    for round_ in rounds:
        if round_.get("weak") not in BRANCHES:
            continue
        reference = tuple(round_["reference"])
        scores = summary.scores_by_trial(rows, key)
        seeds = sorted({seed for _, seed in scores})
        series: dict[int, dict[float, tuple]] = defaultdict(dict)
        for kernels in {tuple(k) for k in (*round_["guided"], *round_["controls"])}:
            branch, change = relative_change(reference, kernels)
            series[branch][change] = kernels
        for branch, points in sorted(series.items()):
            points = {0.0: reference, **points}
            xs = sorted(points)
            slopes = []
            for seed in seeds:
                ys = [scores.get((points[x], seed)) for x in xs]
                if any(y is None for y in ys):
                    continue
                mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
                slopes.append(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs))
            estimate = mean_interval(slopes)
            p = t_test_p(slopes)
            lines.append(
                f"{key} vs k{branch + 1}/s over {', '.join(kernels_text(points[x]) for x in xs)}: slope "
                f"{estimate.text(signed=True)} per unit of k/stride, p = {p:.3g}, {estimate.n} seeds"
            )
    return lines


def curves(tracking_uri: str, rows: list[dict]) -> list[str]:
    """How often the best validation IoU came at the last evaluation (training still rising)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    last, total, gains = 0, 0, []
    for row in rows:
        if not row.get("mlflow_run_id"):
            continue
        history = sorted(client.get_metric_history(row["mlflow_run_id"], "val_iou"), key=lambda m: m.step)
        if len(history) < 3:
            continue
        values = [m.value for m in history]
        total += 1
        last += values.index(max(values)) == len(values) - 1
        gains.append(values[-1] - values[-3])
    change = mean_interval(gains)
    return [
        f"learning curves: best validation IoU at the last evaluation in {last} of {total} trials; "
        f"val IoU change over the last 100 steps {change.text(signed=True)}"
    ]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    table = pq.read_table(args.folder / report.TABLE_FILE)
    rows, rounds = table.to_pylist(), report.rounds_of(table)
    key, label = report.headline(table)
    print("## Primary and contrasts\n")
    comparison = verdict.guided_vs_controls(rows, key, label, rounds)
    print(comparison.sentence() if comparison else "no guided arm (the rule named no weak branch)")
    print("\n## Rounds\n")
    print("\n".join(verdict.round_lines(rounds)))
    for r in rounds:
        print(f"weak branch per reference seed (one-seed rule): {', '.join(r.get('votes', []))}")
    print("\n## Dose-response\n")
    weak = next((r["weak"] for r in rounds if r.get("weak") in BRANCHES), None)
    for score in (key, *([f"calibrated_{weak}"] if weak else [])):
        print("\n".join(dose_response(rows, rounds, score)))
    mechanism = verdict.mechanism(rows, rounds)
    print("\n" + (mechanism.sentence() if mechanism else "mechanism: no guided trials"))
    if args.tracking_uri:
        print("\n" + "\n".join(curves(args.tracking_uri, rows)))
    print("\n## Per configuration\n")
    print(report.markdown(table, tuple(rounds[0]["reference"]) if rounds else (4, 8, 16), effect=0.005))
    finite = [r for r in rows if isinstance(r.get(key), float) and not math.isnan(r[key])]
    print(f"\n{len(finite)} finished trials")


if __name__ == "__main__":
    main(sys.argv[1:])
