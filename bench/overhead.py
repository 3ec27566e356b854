"""Training throughput inside a sweep trial vs the same loop run bare: the cost of Ray Tune + MLflow.

Same config, same threads, one run, each in a fresh process: the bare loop and a one-trial sweep alternate (REPEATS times
each, best of each kept, since these machines are noisy). Throughput is steps x batch over the
training loop's wall time, evaluations included; in the trial that time also holds the per-evaluation
checkpoint persistence, the Tune report and the MLflow logging. The last line is the ratio.

    python bench/overhead.py [--steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

import ray  # noqa: E402
import torch  # noqa: E402

from dcn_ray.core.dataset import load_dataset  # noqa: E402
from dcn_ray.core.train import train  # noqa: E402
from dcn_ray.io.synth import write_synthetic  # noqa: E402
from dcn_ray.job.config import job_from_dict  # noqa: E402
from dcn_ray.tune.sweep import run_sweep  # noqa: E402

REPEATS = 3


def job_dict(folder: Path, steps: int, threads: int, name: str) -> dict:
    images, labels = write_synthetic(folder / "data", slices=12, size=256, seed=0)
    return {
        "name": name,
        "data": {"images": str(images), "labels": str(labels), "split": {"train": "0:10", "val": "10:12"}},
        "model": {"width": 16},
        "train": {"steps": steps, "batch_size": 8, "crop": 128, "eval_every": steps // 5, "threads": threads},
        "sweep": {"kernels": [[4, 8, 16]], "resources": {"gpu": 0, "cpu": threads}},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "overhead"},
    }


def bare_in_this_process(raw: dict) -> float:
    job = job_from_dict(raw)
    data = job.data
    dataset = load_dataset(
        data.images, data.labels, foreground=data.foreground, train=data.split.train, val=data.split.val
    )
    result = train(job.model.with_keys(kernels=(4, 8, 16)), job.train, dataset)
    return job.train.steps * job.train.batch_size / result.history[-1]["elapsed_s"]


def bare(raw: dict) -> float:
    """The bare loop in a fresh process, as a trial gets one (no warm-up advantage either way)."""
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import overhead; print(overhead.bare_in_this_process(json.loads(sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(raw)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def in_trial(raw: dict, storage: Path) -> float:
    job = job_from_dict(raw)
    run_sweep(job, job_text="", storage=str(storage), address=None, write=lambda line: None)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(raw["tracking"]["uri"])
    experiment = client.get_experiment_by_name("overhead").experiment_id
    (run,) = client.search_runs(
        [experiment],
        filter_string="tags.kernels = '4-8-16' and tags.`mlflow.parentRunId` != ''",
        max_results=1,
        order_by=["start_time DESC"],
    )
    elapsed = client.get_metric_history(run.info.run_id, "elapsed_s")[-1].value
    return job.train.steps * job.train.batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dcn-overhead-") as folder:
        folder = Path(folder)
        ray.init(num_cpus=args.threads, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            bare_rates, trial_rates = [], []
            for repeat in range(REPEATS):
                raw = job_dict(folder, args.steps, args.threads, f"overhead{repeat}")
                bare_rates.append(bare(raw))
                trial_rates.append(in_trial(raw, folder / "runs"))
                print(
                    f"repeat {repeat}: bare {bare_rates[-1]:.1f} images/s, in a trial {trial_rates[-1]:.1f} images/s",
                    flush=True,
                )
        finally:
            ray.shutdown()
    print(
        f"config: width 16, crop 128, batch 8, {args.steps} steps, {args.threads} threads, eval every {args.steps // 5} steps"
    )
    print(f"bare loop: {max(bare_rates):.1f} images/s; in a sweep trial: {max(trial_rates):.1f} images/s")
    print(f"throughput ratio trial/bare: {max(trial_rates) / max(bare_rates):.3f}")


if __name__ == "__main__":
    main()
