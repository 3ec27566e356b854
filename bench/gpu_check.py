"""The steps of bench/gpu_check.sh, one command each; the shell script time-boxes them and records their outcome.

    python bench/gpu_check.py STEP --out DIR --work DIR --data DIR --budget SECONDS [--device cpu] [--small]

STEP is one of ``env``, the five steps (``correctness``, ``gpu_train``, ``packing``, ``predict_volume``,
``table1``), ``finish STEP --rc N --seconds S --log FILE`` (the step's status into its JSON) or ``summary``.
Each step writes ``OUT/<step>.json``; ``env`` and ``summary`` write ``OUT/summary.json``. With
GPU_CHECK_FAIL=step[,step] a step fails on purpose at its start (the test of the script uses it).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
STEPS = ("correctness", "gpu_train", "packing", "predict_volume", "table1")
FAIL_ENV = "GPU_CHECK_FAIL"
#: Full sizes (a GPU) and small ones (a CPU in minutes) of the benchmark steps.
SIZES = {
    "full": {
        "gpu_train": ["--width", "64", "--size", "512", "--batch", "8", "--steps", "30", "--warmup", "5"],
        "packing": ["--width", "64", "--crop", "256", "--batch", "8", "--steps", "300", "--packings", "1,2,4"],
        "predict_volume": ["--width", "64", "--size", "2048", "--repeats", "3", "--threads", "8"],
        "table1": {"width": 64, "crop": 256, "batch": 8, "steps": 400, "configurations": 4, "seeds": 2},
    },
    "small": {
        "gpu_train": ["--width", "4", "--size", "64", "--batch", "2", "--steps", "2", "--warmup", "1"]
        + ["--matmul-size", "256", "--variants", "fp32,bf16,bf16+channels_last"],  # compile: minutes on a CPU
        "packing": ["--width", "4", "--crop", "64", "--batch", "2", "--steps", "12", "--packings", "2"]
        + ["--roi", "0,0,128,128", "--cpu", "1"],
        "predict_volume": ["--width", "4", "--size", "64", "--repeats", "1", "--threads", "1"],
        "table1": {"width": 4, "crop": 64, "batch": 2, "steps": 12, "configurations": 2, "seeds": 1},
    },
}
#: Table 1's configurations in the order the step takes them: the reference first, then the proposed and two more.
TABLE1_KERNELS = [(4, 8, 16), (4, 8, 10), (2, 8, 16), (6, 8, 16)]
TABLE1_FULL = {"configurations": 16, "seeds": 3, "steps": 4000}  # jobs/table1.yaml as it stands

log = logging.getLogger("gpu_check")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("env", *STEPS, "finish", "summary"))
    parser.add_argument("finished", nargs="?", help="finish: the step that ended")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp"))
    parser.add_argument("--data", type=Path, default=Path(".devdata"))
    parser.add_argument("--budget", type=float, default=480.0, help="this step's seconds (env: the whole run's)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--rc", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.step in os.environ.get(FAIL_ENV, "").split(","):
        raise SystemExit(f"{args.step}: failing on purpose ({FAIL_ENV}={os.environ[FAIL_ENV]})")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = SIZES["small" if args.small else "full"]
    if args.step == "env":
        write(args.out / "summary.json", {"environment": environment(args), "steps": {}})
    elif args.step == "correctness":
        import gpu_correctness
        import torch

        _need_data(args.data)
        gpu_correctness.run(
            torch.device(args.device), args.data, args.work, args.out / "correctness.json", small=args.small
        )
    elif args.step == "gpu_train":
        _script("gpu_train.py", "--device", args.device, *sizes["gpu_train"], "--json", args.out / "gpu_train.json")
    elif args.step == "packing":
        _need_data(args.data)
        _script(
            "packing.py", "--sweep", "--device", args.device, *sizes["packing"], "--budget", str(args.budget - 15),
            "--images", args.data / "train-volume.tif", "--labels", args.data / "train-labels.tif",
            "--work", args.work, "--json", args.out / "packing.json",
        )  # fmt: skip
    elif args.step == "predict_volume":
        _script(
            "predict_volume.py",
            "--device",
            args.device,
            *sizes["predict_volume"],
            "--json",
            args.out / "predict_volume.json",
        )
    elif args.step == "table1":
        _need_data(args.data)
        table1(args, sizes["table1"])
    elif args.step == "finish":
        finish(args)
    else:
        summary(args.out)


def _script(name: str, *arguments: Any) -> None:
    """Run a bench script in this process's place (its exit status is the step's)."""
    command = [sys.executable, str(BENCH / name), *map(str, arguments)]
    log.info("%s", " ".join(command))
    sys.stdout.flush()
    os.execv(sys.executable, command)


def _need_data(data: Path) -> None:
    missing = [n for n in ("train-volume.tif", "train-labels.tif") if not (data / n).is_file()]
    if missing:
        raise SystemExit(f"no ISBI 2012 slices in {data} (missing {', '.join(missing)}): see docs/benchmarks.md")


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What ran: the machine, the GPU, the versions, the budget."""
    import torch

    found: dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "device": args.device,
        "small": args.small,
        "budget_s": args.budget,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        found["gpu"] = {
            "name": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "memory_gib": properties.total_memory / 2**30,
            "multiprocessors": properties.multi_processor_count,
        }
    for package in ("ray", "mlflow-skinny", "mlflow", "zarr", "ome-zarr", "numpy", "triton"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    try:  # the device machine's copy of the checkout may have no .git, and no git
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=BENCH, timeout=10)
        found["commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        found["commit"] = None
    return found


def table1(args: argparse.Namespace, sizes: dict[str, Any]) -> None:
    """4 Table 1 configurations x 2 seeds at full width, for as many steps as the time left allows (from the
    packing step's throughput when it measured one), through a real sweep: the data to set the step budget."""
    import sweeps

    packing = _read(args.out / "packing.json")
    best = packing.get("best")
    total_rate = packing.get("packings", {}).get(str(best), {}).get("total_images_per_s") if best else None
    trials = sizes["configurations"] * sizes["seeds"]
    steps = sizes["steps"]
    if total_rate and not args.small:  # half the time left for training, the rest for start-up and evaluations
        steps = int(min(TABLE1_FULL["steps"], max(200, 0.5 * args.budget * total_rate / sizes["batch"] / trials)))
        steps -= steps % 50
    packed = int(best) if best else 4
    figures: dict[str, Any] = {
        "kernels": [list(k) for k in TABLE1_KERNELS[: sizes["configurations"]]],
        **sizes,
        "steps": steps,
        "eval_every": max(1, steps // 4),
        "gpu_per_trial": 1 / packed,
        "steps_from": "packing throughput" if steps != sizes["steps"] else "default",
    }
    job = sweeps.write_job(
        args.work / "table1.yaml", name="table1-budget", images=args.data / "train-volume.tif",
        labels=args.data / "train-labels.tif", kernels=TABLE1_KERNELS[: sizes["configurations"]],
        seeds=sizes["seeds"], width=sizes["width"], crop=sizes["crop"], batch=sizes["batch"], steps=steps,
        eval_every=figures["eval_every"], gpu=1 / packed, cpu=1 if args.small else 2,
        roi=(0, 0, 128, 128) if args.small else None,
    )  # fmt: skip
    write(args.out / "table1.json", figures)
    grace = min(60.0, args.budget / 4)  # after the time limit, the interrupted sweep writes what finished
    run = sweeps.run_sweep(
        job, storage=args.work / "runs", tracking_uri=f"sqlite:///{args.work / 'mlflow.db'}",
        timeout=args.budget - grace - 10, grace=grace, log=args.work / "table1-sweep.log",
    )  # fmt: skip
    figures["sweep"] = run
    histories = sweeps.trial_histories(args.work / "runs" / "table1-budget")
    figures["trials"] = histories
    figures.update(budget_figures(histories, steps, figures["eval_every"], packed))
    write(args.out / "table1.json", figures)
    print(json.dumps({k: v for k, v in figures.items() if k not in ("trials", "sweep")}, indent=2))
    if run["rc"] and not histories:
        raise SystemExit(f"the sweep failed (exit {run['rc']}) before any trial reported")


def budget_figures(histories: dict[str, dict[str, Any]], steps: int, eval_every: int, packed: int) -> dict[str, Any]:
    """What the trials say about the step budget: seconds per step, where the best checkpoint fell, and the
    projected GPU hours of the whole grid (jobs/table1.yaml) at the measured speed, ``packed`` trials per GPU."""
    finished = {n: t for n, t in histories.items() if t["final"]}
    per_step = [
        t["rows"][-1]["elapsed_s"] / t["rows"][-1]["step"]
        for t in histories.values()
        if t["rows"] and t["rows"][-1].get("step")
    ]
    at_last = (
        [n for n, t in finished.items() if t["final"].get("best_step") == t["rows"][-1]["step"]] if finished else []
    )
    seconds_per_step = sorted(per_step)[len(per_step) // 2] if per_step else None
    figures: dict[str, Any] = {
        "trials_finished": len(finished),
        "trials_started": len(histories),
        "seconds_per_step_median": seconds_per_step,
        "best_at_last_evaluation": len(at_last),
        "val_iou_by_step": _mean_by_step(histories),
    }
    if seconds_per_step:
        grid = TABLE1_FULL["configurations"] * TABLE1_FULL["seeds"] * TABLE1_FULL["steps"]
        figures["table1_gpu_hours_at_4000_steps"] = grid * seconds_per_step / packed / 3600
    figures["note"] = (
        f"{len(at_last)} of {len(finished)} finished trials chose their last evaluation (step {steps}, every {eval_every}): "
        + (
            "validation IoU was still rising"
            if finished and len(at_last) * 2 > len(finished)
            else "most had levelled off"
        )
        if finished
        else "no trial finished"
    )
    return figures


def _mean_by_step(histories: dict[str, dict[str, Any]]) -> dict[str, float]:
    scores: dict[int, list[float]] = {}
    for trial in histories.values():
        for row in trial["rows"]:
            if row.get("val_iou") is not None:
                scores.setdefault(int(row["step"]), []).append(row["val_iou"])
    return {str(step): sum(v) / len(v) for step, v in sorted(scores.items())}


def finish(args: argparse.Namespace) -> None:
    """Add the step's exit status, time and (when it failed) its last log lines to its JSON."""
    path = args.out / f"{args.finished}.json"
    figures = _read(path)
    status = "ok" if args.rc == 0 else ("timed out" if args.rc in (124, 137) else "failed")
    figures.update(step=args.finished, status=status, rc=args.rc, seconds=args.seconds, budget_s=args.budget)
    if args.rc and args.log and args.log.is_file():
        figures["log_tail"] = args.log.read_text(errors="replace").splitlines()[-25:]
    write(path, figures)


def summary(out: Path) -> None:
    """Each step's status and headline into summary.json, and one line per step on stdout."""
    figures = _read(out / "summary.json")
    figures["steps"] = {}
    for step in STEPS:
        found = _read(out / f"{step}.json")
        figures["steps"][step] = {k: found.get(k) for k in ("status", "rc", "seconds", "budget_s")}
        figures["steps"][step]["passed"] = found.get("passed")
        print(f"{step:15s} {found.get('status', 'missing'):10s} {found.get('seconds') or 0:6.0f} s", flush=True)
    write(out / "summary.json", figures)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write(path: Path, figures: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(figures, indent=2, default=float))
    partial.replace(path)


if __name__ == "__main__":
    main()
