"""What the comparison scripts of docs/results share: a finished sweep's rows, its test scores by arm
and seed, the per-arm table of means, and each finished trial's MLflow run."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from dcn_ray.core.stats import mean_interval
from dcn_ray.results import report

#: (label, results column) of the test scores each comparison reports.
SCORES = (
    ("test IoU (cell interior)", "test_iou"),
    ("test membrane IoU", "test_membrane_iou"),
    ("test V_rand", "test_vrand"),
    ("test V_info", "test_vinfo"),
    ("best validation IoU", "best_val_iou"),
)


def read_sweep(description: str, argv: list[str]) -> tuple[argparse.Namespace, list[dict]]:
    """``FOLDER [--tracking-uri URI]``: the arguments and the sweep's finished rows."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    rows = [r for r in pq.read_table(args.folder / report.TABLE_FILE).to_pylist() if r["status"] == "finished"]
    return args, rows


def scores_by_arm(rows: list[dict], arm_of: Callable[[dict], object]) -> dict:
    """``{arm: {score column: {seed: value}}}`` of the rows' numeric scores."""
    found: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        for _, key in SCORES:
            if isinstance(row.get(key), float):
                found[arm_of(row)][key][int(row["seed"])] = row[key]
    return found


def print_means(by_arm: dict, arms: list, columns: list[str], cells: Callable[[object], list[str]]) -> None:
    """One row per arm: ``cells(arm)`` under ``columns``, the seeds, then each score's mean [95 % CI]."""
    print("| " + " | ".join([*columns, "seeds", *(label for label, _ in SCORES)]) + " |")
    print("|" + "---|" * (len(columns) + 1 + len(SCORES)))
    for arm in arms:
        scores = by_arm[arm]
        means = [mean_interval(list(scores[key].values())).text() for _, key in SCORES]
        print("| " + " | ".join([*cells(arm), str(len(scores["test_iou"])), *means]) + " |")


def finished_runs(tracking_uri: str, rows: list[dict]) -> Iterator[tuple[dict, object]]:
    """``(row, MLflow run)`` of each row that names its run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for row in rows:
        if row.get("mlflow_run_id"):
            yield row, client.get_run(row["mlflow_run_id"])


def run_seconds(run) -> float:
    """Seconds from the run's start to its end."""
    return (run.info.end_time - run.info.start_time) / 1000
