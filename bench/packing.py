"""GPU packing: total training images/s with 1, 2 and 4 trials sharing one GPU.

Each "trial" is a separate process running the DCN training step on the same device (as Tune runs
fractional-GPU trials: sweep.resources.gpu = 1, 0.5, 0.25). The processes start together, warm up,
then all time the same number of steps; total images/s is the sum. Run on a GPU machine:

    python bench/packing.py                        # width 64, 512 x 512, batch 8, Table 1 kernels
    python bench/packing.py --device cpu --size 128 --width 8 --batch 2 --steps 5   # a CPU smoke run

The last line names the packing with the highest total throughput: set sweep.resources.gpu from it.

``--sweep`` measures the same through real sweeps, as a user runs them: for each packing P, `dcn-ray sweep`
of P Table 1 configurations (one seed each, ISBI-style splits of ``--images`` / ``--labels``) with
sweep.resources.gpu = 1 / P, so Tune runs the P trials side by side on one GPU; each trial's images/s is the
median over its evaluations after the first (the warm-up), and the total is their sum. Ray, MLflow (a
SQLite store) and the job file are the real ones; ``--budget`` seconds are shared among the packings.

    python bench/packing.py --sweep --images train-volume.tif --labels train-labels.tif --crop 256 --steps 300
    python bench/packing.py --sweep --images ... --labels ... --device cpu --width 4 --crop 64 --batch 2 \
        --steps 20 --roi 0,0,128,128 --packings 1,2 --cpu 1      # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import sweeps
import torch
from common import add_step_arguments, resident_sampler, synchronize, training_step

from dcn_ray.models.dcn import DCN

TABLE1_KERNELS = [(4, 8, 16), (4, 8, 10), (2, 8, 20), (6, 8, 16)]


def worker(rank: int, args, barrier, results) -> None:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads() // args.packed))
    sampler = resident_sampler(args.size, args.batch, device, seed=rank)
    model = DCN(kernels=TABLE1_KERNELS[rank % len(TABLE1_KERNELS)], width=args.width).to(device)
    cuda = device.type == "cuda"
    step = training_step(model, sampler, bf16=cuda, channels_last=cuda, compile=False)  # the training default

    for _ in range(args.warmup):
        step()
    synchronize(device)
    barrier.wait()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    results.put(args.steps * args.batch / (time.perf_counter() - start))


def measure(args, packed: int) -> float:
    args.packed = packed
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(packed), context.Queue()
    processes = [context.Process(target=worker, args=(rank, args, barrier, results)) for rank in range(packed)]
    for process in processes:
        process.start()
    rates = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join()
    return sum(rates)


def through_sweeps(args) -> dict:
    """Total images/s of each packing, each through one real `dcn-ray sweep`; the figures as a dict."""
    work = Path(args.work or tempfile.mkdtemp(prefix="dcn-packing-"))
    packings = [int(p) for p in args.packings.split(",")]
    figures: dict = {
        "mode": "dcn-ray sweep",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
        "width": args.width,
        "crop": args.crop,
        "batch": args.batch,
        "steps": args.steps,
        "packings": {},
    }
    deadline = time.monotonic() + args.budget
    for index, packed in enumerate(packings):
        name = f"packing-{packed}"
        job = sweeps.write_job(
            work / f"{name}.yaml", name=name, images=args.images, labels=args.labels,
            kernels=TABLE1_KERNELS[:packed] if packed <= len(TABLE1_KERNELS) else TABLE1_KERNELS * packed,
            seeds=1, width=args.width, crop=args.crop, batch=args.batch, steps=args.steps,
            eval_every=max(1, args.steps // 3), gpu=1 / packed, cpu=args.cpu, roi=args.roi,
        )  # fmt: skip
        share = (deadline - time.monotonic()) / (len(packings) - index)  # what the earlier ones left, shared
        grace = min(60.0, share / 4)  # to write what finished after an interruption
        run = sweeps.run_sweep(
            job, storage=work / "runs", tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
            timeout=share - grace - 5, grace=grace, log=work / "sweeps.log",
        )  # fmt: skip
        trials = sweeps.trial_histories(work / "runs" / name)
        rates = {trial: sweeps.steady_rate(t["rows"]) for trial, t in trials.items()}
        measured = [r for r in rates.values() if r is not None]
        figures["packings"][str(packed)] = {
            **run,
            "gpu_per_trial": 1 / packed,
            "trials": {t: {"images_per_s": rates[t], "evaluations": len(trials[t]["rows"])} for t in trials},
            "total_images_per_s": sum(measured) if len(measured) == packed else None,
            "overlap": sweeps.overlap(trials),
        }
        total = figures["packings"][str(packed)]["total_images_per_s"]
        print(
            f"{packed} trial(s) per GPU (gpu {1 / packed:g} each): "
            + (f"{total:.1f} images/s in total" if total else f"not measured ({len(measured)} of {packed} trials)")
            + f", sweep rc {run['rc']} in {run['seconds']:.0f} s",
            flush=True,
        )
        _write(args.json, figures)
    totals = {int(p): f["total_images_per_s"] for p, f in figures["packings"].items() if f["total_images_per_s"]}
    if totals:
        best = max(totals, key=totals.get)
        figures["best"] = best
        figures["sweep.resources.gpu"] = 1 / best
        if 1 in totals:
            figures["best_over_single"] = totals[best] / totals[1]
        print(f"best packing: {best} trial(s) per GPU -> sweep.resources.gpu = {1 / best:g}")
    _write(args.json, figures)
    if not totals:
        raise SystemExit("no packing was measured: see each sweep's log_tail")
    return figures


def _write(path: Path | None, figures: dict) -> None:
    if path is not None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(figures, indent=2))
        partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--packings", default="1,2,4")
    parser.add_argument("--sweep", action="store_true", help="measure through real dcn-ray sweeps (see above)")
    parser.add_argument("--images", type=Path, help="--sweep: the image stack (30 ISBI-like slices)")
    parser.add_argument("--labels", type=Path, help="--sweep: the label stack")
    parser.add_argument("--crop", type=int, default=256, help="--sweep: train.crop")
    parser.add_argument("--cpu", type=float, default=2, help="--sweep: sweep.resources.cpu per trial")
    parser.add_argument("--roi", type=lambda t: [int(v) for v in t.split(",")], help="--sweep: data.roi y0,x0,h,w")
    parser.add_argument("--budget", type=float, default=600, help="--sweep: seconds for all packings together")
    parser.add_argument("--work", type=Path, help="--sweep: folder for the job files, runs and MLflow store")
    parser.add_argument("--json", type=Path, help="--sweep: also write the figures to this JSON file")
    args = parser.parse_args()
    if args.sweep:
        if not (args.images and args.labels):
            parser.error("--sweep needs --images and --labels")
        through_sweeps(args)
        return
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"device: {name}; DCN width {args.width}, {args.size} x {args.size}, batch {args.batch}")
    totals = {}
    for packed in (int(p) for p in args.packings.split(",")):
        totals[packed] = measure(args, packed)
        print(f"{packed} trial(s) per GPU (gpu {1 / packed:g} each): {totals[packed]:.1f} images/s in total")
    best = max(totals, key=totals.get)
    print(
        f"best packing: {best} trial(s) per GPU -> sweep.resources.gpu = {1 / best:g} ({totals[best] / totals[min(totals)]:.2f}x the single-trial throughput)"
    )


if __name__ == "__main__":
    main()
