"""The comparison of docs/results/dcn-vs-unet-cpu.md, from a finished sweep of jobs/isbi2012-families.yaml.

    python docs/results/dcn_vs_unet.py dcn-ray-runs/isbi2012-families [--tracking-uri sqlite:///mlflow.db]

Prints, per family, the mean and 95 % interval over seeds of the test scores, then U-Net minus DCN
paired by seed (paired t), the parameter counts and, with the MLflow store, the wall time per trial.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from dcn_ray import models
from dcn_ray.core.stats import mean_interval, paired_difference
from dcn_ray.job.job_file import load_job
from dcn_ray.job.sweep_grid import trial_job, variants
from dcn_ray.results import report

REPO = Path(__file__).resolve().parents[2]
SCORES = (
    ("test IoU (cell interior)", "test_iou"),
    ("test membrane IoU", "test_membrane_iou"),
    ("test V_rand", "test_vrand"),
    ("test V_info", "test_vinfo"),
    ("best validation IoU", "best_val_iou"),
)


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
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    times: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("mlflow_run_id") and row.get("status") == "finished":
            info = client.get_run(row["mlflow_run_id"]).info
            times[row["model_family"]].append((info.end_time - info.start_time) / 1000)
    return times


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    rows = [r for r in pq.read_table(args.folder / report.TABLE_FILE).to_pylist() if r["status"] == "finished"]
    by_family: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        for _, key in SCORES:
            if isinstance(row.get(key), float):
                by_family[row["model_family"]][key][int(row["seed"])] = row[key]
    counts = parameter_counts()
    print("| family | parameters | seeds | " + " | ".join(label for label, _ in SCORES) + " |")
    print("|---|---|---|" + "---|" * len(SCORES))
    for family in ("dcn", "unet"):
        scores = by_family[family]
        cells = [mean_interval(list(scores[key].values())).text() for _, key in SCORES]
        seeds = len(scores["test_iou"])
        print(f"| {models.get(family).title} | {counts[family]:,} | {seeds} | " + " | ".join(cells) + " |")
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
