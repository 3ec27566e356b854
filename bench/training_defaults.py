"""Measure training defaults on sparse foreground: the paper's training against candidates, paired by seed.

Tasks with a sparse foreground:
- ``epfl``: EPFL hippocampus mitochondria (about 8 % of the pixels), from ``--epfl`` (default:
  ``../shared/datasets/epfl-mito``). Its 27 training slices give validation (original slices 89-91
  and 105, a run of neighbours kept together) and training (the other 23); its separate 5-slice test
  volume is the test split. The three are stacked into one temporary TIFF (never into the repository);
- ``isbi``: ISBI 2012 membranes (``data.foreground: 0``, about 22 % of the pixels), read in place
  from ``--isbi`` (default: ``../shared/datasets/isbi2012``), z-blocked as ``jobs/table1.yaml``
  (train 0-19, validation 21-23, test 25-29, one-slice gaps);
- ``organelles``: ``dcn-ray synth --task organelles`` (about 4.5 % of the pixels), made in a
  temporary folder, split as ``isbi``.

Every arm trains the same narrow DCN with the same seeds (same initial weights per seed); the
checkpoint is chosen on validation IoU and scored once on the test split. Each finished run is
appended to ``--out`` (JSON lines), so an interrupted measurement continues where it stopped.
The summary gives, per task and candidate, the mean paired difference of test IoU (candidate - paper)
with a 95 % t interval, the paired t-test p-value and Holm's adjustment over all comparisons::

    python bench/training_defaults.py --seeds 5 --steps 200            # measure, then summarise
    python bench/training_defaults.py --summary-only                   # the table from --out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import stats

from dcn_ray.core.checkpoint import model_from_payload
from dcn_ray.core.dataset import load_data
from dcn_ray.core.stats import holm, paired_difference
from dcn_ray.core.train import score_test_split, train
from dcn_ray.io.synth import write_synthetic
from dcn_ray.job.config import job_from_dict

REPO = Path(__file__).resolve().parents[1]
SPLIT = {"train": "0:20", "val": "21:24", "test": "25:30"}  # as jobs/table1.yaml
KERNELS = (4, 8, 16)
#: EPFL: positions in train-images.tif of the validation slices (original slices 89, 90, 91, 105).
EPFL_VAL = (17, 18, 19, 20)
#: The arms: the paper's training (the old defaults), the sparse recipe, and each of its parts alone.
ARMS: dict[str, dict] = {
    "paper": {"preset": "paper"},
    "ce_dice+cosine+fg0.5": {"loss": "ce_dice", "schedule": "cosine", "warmup": 20, "foreground_crops": 0.5},
    "weighted_ce+cosine+fg0.5": {"loss": "weighted_ce", "schedule": "cosine", "warmup": 20, "foreground_crops": 0.5},
    "ce_dice": {"preset": "paper", "loss": "ce_dice"},
    "fg0.5": {"preset": "paper", "foreground_crops": 0.5},
    "cosine": {"preset": "paper", "schedule": "cosine", "warmup": 20},
}


def task_data(task: str, args: argparse.Namespace, work: Path) -> dict:
    """The job's ``data`` section of a task (files in ``work`` where the task needs new ones)."""
    if task == "isbi":
        folder = Path(args.isbi)
        images, labels = folder / "train-volume.tif", folder / "train-labels.tif"
        return {"images": str(images), "labels": str(labels), "foreground": 0, "split": SPLIT}
    if task == "epfl":
        return epfl_data(Path(args.epfl), work)
    images, labels = write_synthetic(work / "organelles", slices=30, size=256, seed=0, task="organelles")
    return {"images": str(images), "labels": str(labels), "foreground": 255, "split": SPLIT}


def epfl_data(folder: Path, work: Path) -> dict:
    """EPFL mitochondria as one stack: training slices, validation slices, then the test volume."""
    train_images, test_images = (tifffile.imread(folder / f"{s}-images.tif") for s in ("train", "test"))
    train_masks, test_masks = (tifffile.imread(folder / f"{s}-mitochondria.tif") for s in ("train", "test"))
    train = [i for i in range(len(train_images)) if i not in EPFL_VAL]
    order = train + list(EPFL_VAL)
    images = np.concatenate([train_images[order], test_images])
    masks = np.concatenate([train_masks[order], test_masks])
    (work / "epfl").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(work / "epfl" / "images.tif", images)
    tifffile.imwrite(work / "epfl" / "labels.tif", masks)
    n_train, n_val = len(train), len(EPFL_VAL)
    split = {"train": f"0:{n_train}", "val": f"{n_train}:{n_train + n_val}", "test": f"{n_train + n_val}:{len(images)}"}
    return {"images": str(work / "epfl" / "images.tif"), "labels": str(work / "epfl" / "labels.tif"),
            "foreground": 255, "split": split}  # fmt: skip


def run_one(task: str, arm: str, seed: int, data: dict, args: argparse.Namespace) -> dict:
    job = job_from_dict(
        {
            "name": f"defaults-{task}",
            "data": data,
            "model": {"width": args.width, "batch_norm": True},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch,
                "crop": args.crop,
                "lr": args.lr,
                "eval_every": args.eval_every,
                "seed": seed,
                "threads": args.threads,
                **ARMS[arm],
            },
        }
    )
    dataset = load_data(job.data)
    started, cpu = time.perf_counter(), time.process_time()
    result = train(job.model.with_keys(kernels=KERNELS), job.train, dataset, device=torch.device("cpu"))
    scores = score_test_split(model_from_payload(result.model), dataset, torch.device("cpu"))
    return {
        "task": task,
        "arm": arm,
        "seed": seed,
        "val_iou": result.best_iou,
        "best_step": result.best_step,
        "test_iou": scores["test_iou"],
        "test_dice": scores["test_dice"],
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "train_foreground": float(dataset.train_masks.mean()),
        "test_foreground": float(dataset.test_masks.mean()),
    }


def finished_runs(out: Path) -> set[tuple[str, str, int]]:
    """(task, arm, seed) of every run recorded in ``out`` so far."""
    if not out.exists():
        return set()
    return {(r["task"], r["arm"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}


def summarise(records: list[dict], metric: str = "test_iou") -> str:
    """Markdown tables: each arm's mean per task, then the paired differences against the paper's arm."""
    tasks = sorted({r["task"] for r in records})
    arms = [a for a in ARMS if any(r["arm"] == a for r in records)]
    value = {(r["task"], r["arm"], r["seed"]): r[metric] for r in records}
    lines = [f"| task | arm | seeds | mean {metric} | sd |", "|---|---|---|---|---|"]
    for task in tasks:
        for arm in arms:
            values = [v for (t, a, _), v in value.items() if t == task and a == arm]
            if values:
                lines.append(
                    f"| {task} | {arm} | {len(values)} | {np.mean(values):.4f} | {np.std(values, ddof=1):.4f} |"
                )
    rows = []
    for task in tasks:
        for arm in arms[1:]:
            seeds = sorted(s for (t, a, s) in value if t == task and a == arm and (task, "paper", s) in value)
            if len(seeds) < 2:
                continue
            diffs = [value[task, arm, s] - value[task, "paper", s] for s in seeds]
            paired = paired_difference(
                {s: value[task, arm, s] for s in seeds}, {s: value[task, "paper", s] for s in seeds}
            )
            estimate = paired.estimate
            rows.append([task, arm, len(seeds), estimate.mean, estimate.low, estimate.high, paired.p_value, diffs])
    for row, adjusted in zip(rows, holm([r[6] for r in rows])):
        row.append(adjusted)
    lines += [
        "",
        f"| task | candidate - paper | seeds | mean diff {metric} | 95 % t interval | p (paired t) | p Holm | per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, arm, n, mean, low, high, p, diffs, adjusted in rows:
        per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
        lines.append(
            f"| {task} | {arm} | {n} | {mean:+.4f} | [{low:+.4f}, {high:+.4f}] | {p:.4f} | {adjusted:.4f} | {per_seed} |"
        )
    return "\n".join(lines)


def decisions(records: list[dict], confidence: float = 0.95) -> str:
    """The pre-registered choice, on validation IoU only: per task, the candidate with the best mean
    validation IoU, and whether its paired ``confidence`` interval against ``paper`` lies above zero."""
    shown = f"{100 * confidence:g} % t interval"
    lines = [f"| task | winner on validation | seeds | mean val IoU | val diff vs paper | {shown} | wins the task |"]
    lines.append("|---|---|---|---|---|---|---|")
    value = {(r["task"], r["arm"], r["seed"]): r["val_iou"] for r in records}
    for task in sorted({r["task"] for r in records}):
        candidates = {
            arm: [v for (t, a, _), v in value.items() if t == task and a == arm] for arm in ARMS if arm != "paper"
        }
        candidates = {arm: values for arm, values in candidates.items() if values}
        if not candidates:
            continue
        winner = max(candidates, key=lambda arm: float(np.mean(candidates[arm])))
        seeds = sorted(s for (t, a, s) in value if t == task and a == winner and (task, "paper", s) in value)
        diffs = np.array([value[task, winner, s] - value[task, "paper", s] for s in seeds])
        if len(diffs) < 2:
            continue
        half = stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
        low, high = diffs.mean() - half, diffs.mean() + half
        lines.append(
            f"| {task} | {winner} | {len(diffs)} | {np.mean(candidates[winner]):.4f} | {diffs.mean():+.4f} | "
            f"[{low:+.4f}, {high:+.4f}] | {'yes' if low > 0 else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isbi", default=str(REPO.parent / "shared" / "datasets" / "isbi2012"))
    parser.add_argument("--epfl", default=str(REPO.parent / "shared" / "datasets" / "epfl-mito"))
    parser.add_argument("--tasks", default="isbi,organelles")
    parser.add_argument("--arms", default="paper,ce_dice+cosine+fg0.5")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "training-defaults.jsonl")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--decision-confidence", type=float, default=0.95, help="of the validation decision")
    parser.add_argument("--reverse", action="store_true", help="seeds from the last: a second process beside a first")
    args = parser.parse_args()

    records = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if not args.summary_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        seeds = list(range(args.seeds))[:: -1 if args.reverse else 1]
        with tempfile.TemporaryDirectory(prefix="dcn-defaults-") as work:
            for task in args.tasks.split(","):
                data = task_data(task, args, Path(work))
                for seed in seeds:
                    for arm in args.arms.split(","):
                        if (task, arm, seed) in finished_runs(args.out):  # another process may have run it
                            continue
                        record = run_one(task, arm, seed, data, args)
                        keys = ("steps", "width", "crop", "batch", "lr", "threads", "eval_every")
                        record["settings"] = {k: getattr(args, k) for k in keys}
                        records.append(record)
                        with args.out.open("a") as handle:
                            handle.write(json.dumps(record) + "\n")
                        print(
                            f"{task} {arm} seed {seed}: test IoU {record['test_iou']:.4f} "
                            f"(val {record['val_iou']:.4f} at {record['best_step']}) {record['wall_s']:.1f} s",
                            flush=True,
                        )
    arms = args.arms.split(",")
    records = [r for r in records if r["arm"] in arms]  # the arms asked for (the summary's too)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    wall, cpu = sum(r["wall_s"] for r in records), sum(r.get("cpu_s", 0.0) for r in records)
    print(f"training + scoring: {wall:.0f} s wall, {cpu:.0f} s CPU over {len(records)} runs\n")
    print(decisions(records, args.decision_confidence))
    print()
    print(summarise(records))
    print()
    print(summarise(records, "test_dice"))
    print()
    print(summarise(records, "val_iou"))


if __name__ == "__main__":
    main()
