"""The comparison of docs/results/dcn-vs-unet-cpu.md, from a finished sweep of jobs/isbi2012-families.yaml.

    python docs/results/dcn_vs_unet.py dcn-ray-runs/isbi2012-families [--tracking-uri sqlite:///mlflow.db]

Prints, per family, the mean and 95 % interval over seeds of the test scores, then U-Net minus DCN
paired by seed (paired t), the parameter counts and, with the MLflow store, the wall time per trial.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from tables import SCORES, finished_runs, print_means, read_sweep, run_seconds, scores_by_arm

from dcn_ray import models
from dcn_ray.core.stats import mean_interval, paired_difference
from dcn_ray.job.job_file import load_job
from dcn_ray.job.sweep_grid import trial_job, variants

REPO = Path(__file__).resolve().parents[2]


def parameter_counts() -> dict[str, int]:
    """Parameters of each family's network as the job trains it."""
    job = load_job(REPO / "jobs" / "isbi2012-families.yaml")
    counts = {}
    for variant in variants(job):
        trained = trial_job(job, variant.family, variant.params, 0)
        family = models.get(variant.family)
        kwargs = family.job_kwargs(trained.to_dict()["model"])
        if family.uses_kernels:
            kwargs["kernels"] = list(variant.kernels)
        network = models.build(variant.family, **kwargs)
        counts[variant.family] = sum(p.numel() for p in network.parameters())
    return counts


def wall_times(tracking_uri: str, rows: list[dict]) -> dict[str, list[float]]:
    """Seconds from start to end of each finished trial's MLflow run, per family."""
    times: dict[str, list[float]] = defaultdict(list)
    for row, run in finished_runs(tracking_uri, rows):
        if row.get("status") == "finished":
            times[row["model_family"]].append(run_seconds(run))
    return times


def main(argv: list[str]) -> None:
    args, rows = read_sweep(__doc__.splitlines()[0], argv)
    by_family = scores_by_arm(rows, lambda row: row["model_family"])
    counts = parameter_counts()
    print_means(by_family, ["dcn", "unet"], ["family", "parameters"], lambda f: [models.get(f).title, f"{counts[f]:,}"])
    print("\n| U-Net minus DCN, paired by seed | mean [95 % CI] | p (paired t) | per seed |")
    print("|---|---|---|---|")
    for label, key in SCORES:
        unet, dcn = by_family["unet"][key], by_family["dcn"][key]
        difference = paired_difference(unet, dcn)
        per_seed = ", ".join(f"{unet[s] - dcn[s]:+.3f}" for s in sorted(set(unet) & set(dcn)))
        print(f"| {label} | {difference.estimate.text(signed=True)} | {difference.p_value:.3g} | {per_seed} |")
    if args.tracking_uri:
        print()
        for family, seconds in sorted(wall_times(args.tracking_uri, rows).items()):
            print(f"{models.get(family).title}: {mean_interval(seconds).text()} s per trial ({len(seconds)} trials)")


if __name__ == "__main__":
    main(sys.argv[1:])
