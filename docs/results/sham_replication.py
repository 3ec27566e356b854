"""The pre-registered analyses of isbi2012-sham-replication.md, from the sweep's results.

    python docs/results/sham_replication.py dcn-ray-runs/isbi2012-sham-replication/results.parquet
    python docs/results/sham_replication.py --tracking-uri sqlite:///mlflow.db   # a run still going or cut short

Reads one row per trial (config, seed, status, test IoU) from the sweep's ``results.parquet``, or,
with ``--tracking-uri``, from the finished child runs of the experiment ``isbi2012-sham-replication``
(an interim look while the sweep runs: the pre-registered answer needs all 14 seeds). Prints the
primary endpoint (guided 4-8-12 minus the sham 4-8-16~sham-F3, paired by seed: mean, 95 % interval,
paired t, sign-flip permutation, TOST against +-0.005), the secondary analyses, and the per-seed table.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from statistics import fmean, stdev

from dcn_ray.core.stats import detectable_effect, equivalence_test, mean_interval, sign_flip_test, t_test_p

KEY = "test_iou"
MARGIN = 0.005
GUIDED, SHAM, REFERENCE = "4-8-12", "4-8-16~sham-F3", "4-8-16"
CONTROLS = ("3-8-16", "4-6-16", "4-8-20")
ARMS = (REFERENCE, GUIDED, SHAM, *CONTROLS)
SEEDS = tuple(range(14, 28))
#: The first study's (seeds 0-13) estimates, to set the replication's results beside.
FIRST = {"guided - mean(controls)": "+0.003 [+0.001, +0.005]", "guided - 4-8-16": "+0.003 [-0.000, +0.006]"}

Scores = Mapping[str, Mapping[int, float]]


def from_parquet(path: str) -> Scores:
    import pyarrow.parquet as pq

    scores: dict[str, dict[int, float]] = {arm: {} for arm in ARMS}
    for row in pq.read_table(path).to_pylist():
        config = row.get("config") or f"{row['k1']}-{row['k2']}-{row['k3']}"
        if row.get("status") == "finished" and config in scores and _number(row.get(KEY)):
            scores[config][int(row["seed"])] = float(row[KEY])
    return scores


def from_mlflow(uri: str, experiment: str) -> Scores:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"sham_replication.py: error: no experiment {experiment!r} at {uri}")
    scores: dict[str, dict[int, float]] = {arm: {} for arm in ARMS}
    for run in client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=5000):
        config, metric = run.data.tags.get("config"), run.data.metrics.get(KEY)
        if "mlflow.parentRunId" in run.data.tags and config in scores and _number(metric):
            scores[config][int(run.data.params["seed"])] = float(metric)
    return scores


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def per_seed(scores: Scores, plus: Sequence[str], minus: Sequence[str]) -> dict[int, float]:
    """Per seed where every arm finished: mean of ``plus`` minus mean of ``minus``."""
    seeds = [s for s in SEEDS if all(s in scores[a] for a in (*plus, *minus))]
    return {s: fmean(scores[a][s] for a in plus) - fmean(scores[a][s] for a in minus) for s in seeds}


def contrast(name: str, differences: Mapping[int, float]) -> str:
    """One line: mean [95 % CI], paired t p, sign-flip p, TOST p, over n seeds, and the verdict."""
    values = list(differences.values())
    if len(values) < 2:
        return f"{name}: {len(values)} seed(s), nothing to test yet"
    estimate, p, flip = mean_interval(values), t_test_p(values), sign_flip_test(values)
    tost = equivalence_test(values, MARGIN)
    agree = (p < 0.05) == (flip < 0.05)
    if not agree:
        verdict = "inconclusive (the t and permutation tests disagree)"
    elif p < 0.05 and tost.equivalent:
        verdict = f"non-zero ({'positive' if estimate.mean > 0 else 'negative'}) and within +-{MARGIN:g}"
    elif p < 0.05:
        verdict = "positive" if estimate.mean > 0 else "negative"
    elif tost.equivalent:
        verdict = f"equivalent within +-{MARGIN:g}"
    else:
        verdict = "inconclusive"
    return (
        f"{name}: {_signed(estimate)} over {estimate.n} seeds, sd {stdev(values):.4f}, paired t p = {p:.3g}, "
        f"sign-flip p = {flip:.3g}, TOST (+-{MARGIN:g}) p = {tost.p_value:.3g} "
        f"(90 % [{tost.low:+.4f}, {tost.high:+.4f}]): {verdict}"
    )


def _signed(estimate) -> str:
    return f"{estimate.mean:+.4f} [{estimate.low:+.4f}, {estimate.high:+.4f}]"


def report(scores: Scores) -> str:
    """The primary endpoint, the secondary analyses and the per-seed table, as Markdown-ready lines."""
    counts = ", ".join(f"{arm} {len(scores[arm])}" for arm in ARMS)
    primary = per_seed(scores, [GUIDED], [SHAM])
    lines = [f"finished trials per arm (of 14): {counts}", "", "Primary endpoint:"]
    lines.append("- " + contrast("guided 4-8-12 minus sham 4-8-16~sham-F3", primary))
    if len(primary) >= 2:
        sd = stdev(primary.values())
        lines.append(f"  detectable with power 0.8 at this sd and n: {detectable_effect(len(primary), sd):.4f}")
    lines += ["", "Secondary (not confirmatory):"]
    secondary = [
        (f"guided minus mean of matched controls (first study: {FIRST['guided - mean(controls)']})",
         [GUIDED], list(CONTROLS)),
        ("guided minus another branch shrunk (3-8-16, 4-6-16)", [GUIDED], ["3-8-16", "4-6-16"]),
        ("guided minus weak branch enlarged (4-8-20)", [GUIDED], ["4-8-20"]),
        ("sham minus reference (the re-draw alone)", [SHAM], [REFERENCE]),
        (f"guided minus reference (first study: {FIRST['guided - 4-8-16']})", [GUIDED], [REFERENCE]),
        *((f"{c} minus reference", [c], [REFERENCE]) for c in CONTROLS),
        ("k3 changed (4-8-12, 4-8-20) minus k3 kept (3-8-16, 4-6-16)", [GUIDED, "4-8-20"], ["3-8-16", "4-6-16"]),
        ("F3 re-drawn (4-8-12, 4-8-20, sham) minus not (3-8-16, 4-6-16, 4-8-16)", [GUIDED, "4-8-20", SHAM],
         ["3-8-16", "4-6-16", REFERENCE]),
    ]  # fmt: skip
    lines += ["- " + contrast(name, per_seed(scores, plus, minus)) for name, plus, minus in secondary]
    lines += ["", "Per arm: " + "; ".join(f"{arm} {_mean(scores[arm])}" for arm in ARMS), ""]
    lines.append("| seed | " + " | ".join(ARMS) + " | guided - sham |")
    lines.append("|---" * (len(ARMS) + 2) + "|")
    for seed in SEEDS:
        cells = [f"{scores[arm][seed]:.4f}" if seed in scores[arm] else "" for arm in ARMS]
        difference = f"{primary[seed]:+.4f}" if seed in primary else ""
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {difference} |")
    return "\n".join(lines)


def _mean(values: Mapping[int, float]) -> str:
    estimate = mean_interval(list(values.values()))
    return "n/a" if not values else f"{estimate.mean:.4f} [{estimate.low:.4f}, {estimate.high:.4f}] (n {estimate.n})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", help="the sweep's results.parquet")
    parser.add_argument("--tracking-uri", help="read the finished child runs from this MLflow store instead")
    parser.add_argument("--experiment", default="isbi2012-sham-replication")
    args = parser.parse_args(argv)
    if bool(args.results) == bool(args.tracking_uri):
        parser.error("give either a results.parquet or --tracking-uri")
    scores = from_parquet(args.results) if args.results else from_mlflow(args.tracking_uri, args.experiment)
    print(report(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
