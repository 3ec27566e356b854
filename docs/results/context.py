"""The comparison of docs/results/context.md, from a finished sweep of jobs/isbi2012-context.yaml.

    python docs/results/context.py dcn-ray-runs/isbi2012-context [--tracking-uri sqlite:///mlflow.db]

Prints, per context (0, 1, 2), the mean and 95 % interval over seeds of the test scores; then
context 1 and context 2 minus context 0, paired by seed (paired t; Holm over the two comparisons
for the primary endpoint, test IoU), with the TOST equivalence test at the pre-registered margin;
and, with the MLflow store, the cost per trial (training wall time, images per second, run time).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

from tables import SCORES, finished_runs, print_means, read_sweep, run_seconds, scores_by_arm

from dcn_ray.core.stats import equivalence_test, holm, mean_interval, paired_difference

CONTEXTS = (0, 1, 2)
PRIMARY = "test_iou"
MARGIN = 0.01  # the pre-registered equivalence margin of test IoU


def context_of(config: str) -> int:
    """``4-8-16_model.context=2`` -> 2."""
    found = re.search(r"model\.context=(\d+)", config or "")
    if found is None:
        raise ValueError(f"configuration {config!r} names no model.context")
    return int(found.group(1))


def costs(tracking_uri: str, rows: list[dict]) -> dict[int, dict[str, list[float]]]:
    """Per context: training seconds (``elapsed_s``), images per second and MLflow run seconds of each trial."""
    found: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row, run in finished_runs(tracking_uri, rows):
        context = context_of(row["config"])
        metrics = run.data.metrics
        if "elapsed_s" in metrics:
            found[context]["training s"].append(metrics["elapsed_s"])
        if "images_per_s" in metrics:
            found[context]["images/s (last evaluation interval)"].append(metrics["images_per_s"])
        if run.info.end_time:
            found[context]["run s"].append(run_seconds(run))
    return found


def main(argv: list[str]) -> None:
    args, rows = read_sweep(__doc__.splitlines()[0], argv)
    by_context = scores_by_arm(rows, lambda row: context_of(row["config"]))
    print_means(by_context, list(CONTEXTS), ["context"], lambda context: [str(context)])
    print("\n| paired by seed | score | mean [95 % CI] | p (paired t) | p (Holm, primary) | per seed |")
    print("|---|---|---|---|---|---|")
    primary = [paired_difference(by_context[c][PRIMARY], by_context[0][PRIMARY]).p_value for c in CONTEXTS[1:]]
    adjusted = dict(zip(CONTEXTS[1:], holm(primary)))
    for context in CONTEXTS[1:]:
        for label, key in SCORES:
            arm, reference = by_context[context][key], by_context[0][key]
            difference = paired_difference(arm, reference)
            per_seed = ", ".join(f"{arm[s] - reference[s]:+.3f}" for s in sorted(set(arm) & set(reference)))
            holm_text = f"{adjusted[context]:.3g}" if key == PRIMARY else ""
            print(
                f"| context {context} - 0 | {label} | {difference.estimate.text(signed=True)} | "
                f"{difference.p_value:.3g} | {holm_text} | {per_seed} |"
            )
    print(f"\nEquivalence of test IoU within +-{MARGIN} (TOST, 90 % interval):")
    for context in CONTEXTS[1:]:
        arm, reference = by_context[context][PRIMARY], by_context[0][PRIMARY]
        test = equivalence_test([arm[s] - reference[s] for s in sorted(set(arm) & set(reference))], MARGIN)
        verdict = "equivalent" if test.equivalent else "not shown equivalent"
        print(f"- context {context} - 0: [{test.low:+.4f}, {test.high:+.4f}], p = {test.p_value:.3g}: {verdict}")
    if args.tracking_uri:
        print("\n| context | " + " | ".join(("training s", "images/s (last evaluation interval)", "run s")) + " |")
        print("|---|---|---|---|")
        found = costs(args.tracking_uri, rows)
        for context in CONTEXTS:
            cells = [
                mean_interval(found[context][name]).text()
                for name in ("training s", "images/s (last evaluation interval)", "run s")
            ]
            print(f"| {context} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
