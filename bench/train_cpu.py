"""The CPU training step against this machine's fp32 matmul rate, where its time goes, and trials per hour,
today's code against the code at a git ref (default ef35c69, before issue 24), side by side in one run.

Settings: the CPU study's (jobs/isbi2012-cpu.yaml: width 8, crops 128, batch 4, Adam, 1 thread) and
width 16 / crops 256. A step is what the training loop does: sample and augment a batch, set the rate,
forward, loss, backward, Adam. Step rates: the variants alternate --repeats times in this process (the
machine is noisy), best of each; the fp32 matmul rate (1024 x 1024) is measured between them, best kept;
FLOPs per step are counted by torch's FlopCounterMode. Trials per hour: whole `train()` runs on ISBI
(`--trial-steps`, evaluations every 50 steps) in fresh processes, before (the package at the ref, from
`git archive`) and now, two trials at once with one thread each (one trial per core, the study's
layout), and now with two threads per trial, one trial after the other.

    python bench/train_cpu.py [--study-steps 20] [--wide-steps 3] [--trial-steps 100] [--no-trials] [--seeds 3]
        [--isbi ../shared/datasets/isbi2012]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from before import module_at, package_at  # noqa: E402

from dcn_ray.core import sampler as sampler_now  # noqa: E402
from dcn_ray.core import train as train_now  # noqa: E402
from dcn_ray.core.dataset import load_data  # noqa: E402
from dcn_ray.core.loss import dcn_loss  # noqa: E402
from dcn_ray.job.job_file import load_job  # noqa: E402
from dcn_ray.models.dcn import DCN  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "jobs" / "isbi2012-cpu.yaml"
SETTINGS = {"study": (8, 128, 4), "wide": (16, 256, 4)}  # width, crop, batch


def matmul_rate(size: int = 1024, reps: int = 4) -> float:
    """fp32 FLOP/s of a square matmul on this process's threads (best of ``reps``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def step_flops(width: int, crop: int, batch: int) -> int:
    model = DCN(kernels=(4, 8, 16), width=width)
    x, y = torch.rand(batch, 1, crop, crop), torch.randint(0, 2, (batch, crop, crop))
    with FlopCounterMode(display=False) as counter:
        dcn_loss(model(x), y, 0.5)[0].backward()
    return counter.get_total_flops()


def loop_step(train_module, sampler_module, images, masks, width: int, crop: int, batch: int) -> Callable[[], float]:
    """One step of that code's training loop (seed 0), as ``train()`` runs it; returns the loss."""
    torch.manual_seed(0)
    model = DCN(kernels=(4, 8, 16), width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    device = torch.device("cpu")
    sampler = sampler_module.CropSampler(
        images, masks, crop=crop, batch_size=batch, generator=torch.Generator().manual_seed(0)
    )
    step = train_module.make_train_step(model, optimizer, train_module.default_step_options(device))

    def one() -> float:
        x, y = sampler.sample()
        train_module.set_lr(optimizer, 3e-3)
        return float(step(x, y, 0.5))

    return one


def images_per_s(step: Callable[[], float], steps: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def profile(images, masks, width: int, crop: int, batch: int, steps: int) -> dict[str, float]:
    """Shares of a step's wall time (today's step options): data, forward, backward, optimizer, the rest."""
    torch.manual_seed(0)
    model = DCN(kernels=(4, 8, 16), width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    options = train_now.default_step_options(torch.device("cpu"))
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    sampler = sampler_now.CropSampler(images, masks, crop=crop, batch_size=batch)
    spent = dict.fromkeys(("data", "forward", "backward", "optimizer"), 0.0)
    start = time.perf_counter()
    for _ in range(steps):
        marks = [time.perf_counter()]
        x, y = sampler.sample()
        if options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        marks.append(time.perf_counter())
        total, _ = dcn_loss(model(x), y, 0.5)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        for key, begin, end in zip(spent, marks, marks[1:]):
            spent[key] += end - begin
    wall = time.perf_counter() - start
    return {**{key: value / wall for key, value in spent.items()}, "python": 1 - sum(spent.values()) / wall}


def step_rates(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dataset = load_data(load_job(JOB, args.overrides).data)
    images, masks = torch.from_numpy(dataset.train_images), torch.from_numpy(dataset.train_masks)
    before = (module_at(args.ref, "dcn_ray/core/train.py"), module_at(args.ref, "dcn_ray/core/sampler.py"))
    print(f"torch {torch.__version__}, {args.threads} thread(s), before = {args.ref}")
    for name, (width, crop, batch) in SETTINGS.items():
        steps = args.study_steps if name == "study" else args.wide_steps
        flops = step_flops(width, crop, batch)
        variants = {
            "before": loop_step(*before, images, masks, width, crop, batch),
            "now": loop_step(train_now, sampler_now, images, masks, width, crop, batch),
        }
        same = [variants["before"]() for _ in range(3)] == [variants["now"]() for _ in range(3)]
        best, rate = dict.fromkeys(variants, 0.0), 0.0
        for _ in range(args.repeats):
            for key, step in variants.items():
                rate = max(rate, matmul_rate())
                best[key] = max(best[key], images_per_s(step, steps, batch))
        print(f"\n{name}: width {width}, crops {crop}, batch {batch}: {flops / batch / 1e9:.2f} GFLOP per image")
        print(f"  fp32 matmul rate (1024^2, best): {rate / 1e9:.1f} GFLOP/s")
        for key, value in best.items():
            achieved = value * flops / batch
            print(f"  {key:6s} {value:7.2f} images/s  {achieved / 1e9:6.1f} GFLOP/s  {achieved / rate:5.1%} of matmul")
        print(f"  now / before: {best['now'] / best['before']:.2f}x; first 3 losses bit-identical: {same}")
        shares = profile(images, masks, width, crop, batch, steps)
        print("  where a step's time goes (now): " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))


TRIAL = """
import dataclasses, json, sys, time, torch
from dcn_ray.job.job_file import load_job
from dcn_ray.core import dataset as data_module
try:
    from dcn_ray.models.dcn import DCN
except ImportError:  # older refs: the DCN lived in core
    from dcn_ray.core.dcn import DCN
from dcn_ray.core.train import score_test_split, train
job = load_job(sys.argv[1], sys.argv[5:])
steps, threads, seed = (int(sys.argv[2]) or job.train.steps), int(sys.argv[3]), int(sys.argv[4])
job = dataclasses.replace(job, train=dataclasses.replace(job.train, steps=steps, threads=threads, seed=seed))
sections = hasattr(data_module, "load_data")  # core takes the job's sections (older refs: the whole job)
dataset = data_module.load_data(job.data) if sections else data_module.load_job_dataset(job)
start = time.perf_counter()
if not sections:
    result = train(job, (4, 8, 16), dataset)
elif hasattr(job.model, "with_keys"):  # model.kernels is the model's key (older refs: an argument of train)
    result = train(job.model.with_keys(kernels=(4, 8, 16)), job.train, dataset)
else:
    result = train(job.model, job.train, dataset, kernels=(4, 8, 16))
seconds = time.perf_counter() - start
model = DCN(**result.model["model_kwargs"])
model.load_state_dict(result.model["weights"])
test = score_test_split(model.eval(), dataset, torch.device("cpu"))
print(json.dumps({"seconds": seconds, "best_val_iou": result.best_iou, "test_iou": test.get("test_iou")}))
"""


def trials(
    tree: Path, steps: int, threads: int, at_once: bool, overrides: list[str], seeds: tuple[int, ...] = (0, 0)
) -> tuple[float, list[dict]]:
    """Trials of ``seeds`` in fresh processes (all at once, or one after the other): wall seconds, their results."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    commands = [[sys.executable, "-c", TRIAL, str(JOB), str(steps), str(threads), str(s), *overrides] for s in seeds]
    start = time.perf_counter()
    if at_once:
        running = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for command in commands]
        outputs = [process.communicate()[0] for process in running]
    else:
        outputs = [subprocess.run(c, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout for c in commands]
    wall = time.perf_counter() - start
    return wall, [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def trial_rates(args: argparse.Namespace) -> None:
    layouts = {
        "before, 2 trials x 1 thread at once": (package_at(args.ref), 1, True),
        "now,    2 trials x 1 thread at once": (REPO, 1, True),
        "now,    1 trial  x 2 threads, in turn": (REPO, 2, False),
    }
    print(f"\ntrials per hour: train() of jobs/isbi2012-cpu.yaml for {args.trial_steps} steps, fresh processes")
    best = dict.fromkeys(layouts, 0.0)
    for _ in range(args.repeats):
        for name, (tree, threads, at_once) in layouts.items():
            wall, results = trials(tree, args.trial_steps, threads, at_once, args.overrides)
            best[name] = max(best[name], 2 * 3600 / wall)
            print(f"  {name}: {2 * 3600 / wall:6.0f} trials/h  (best val IoU {results[0]['best_val_iou']:.4f})")
    names = list(layouts)
    print(f"  best: now / before (one trial per core): {best[names[1]] / best[names[0]]:.2f}x;")
    print(f"        two threads per trial / one trial per core (now): {best[names[2]] / best[names[1]]:.2f}x")


def accuracy(args: argparse.Namespace) -> None:
    """The job's training (``--accuracy-steps``, 0: as written) for seeds 0..N-1 at once, before and now."""
    steps = args.accuracy_steps or "all"
    print(f"\naccuracy: jobs/isbi2012-cpu.yaml, kernels 4-8-16, {steps} steps, seeds 0-{args.seeds - 1}")
    for name, tree in (("before", package_at(args.ref)), ("now", REPO)):
        seeds = tuple(range(args.seeds))
        for seed, result in zip(seeds, trials(tree, args.accuracy_steps, 1, True, args.overrides, seeds)[1]):
            print(
                f"  {name:6s} seed {seed}: best val IoU {result['best_val_iou']:.4f}, test IoU {result['test_iou']:.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="ef35c69")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the step rates (the study: 1)")
    parser.add_argument("--study-steps", type=int, default=20)
    parser.add_argument("--wide-steps", type=int, default=3)
    parser.add_argument("--trial-steps", type=int, default=100)
    parser.add_argument("--no-trials", action="store_true", help="step rates only")
    parser.add_argument("--seeds", type=int, default=0, help="also train the job for N seeds, both codes")
    parser.add_argument("--accuracy-steps", type=int, default=0, help="steps of those runs (0: the job's 400)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of before and now (best kept)")
    parser.add_argument("--no-steps", action="store_true", help="skip the step rates")
    parser.add_argument("--isbi", type=Path, default=None, help="ISBI 2012 folder (default: the job's paths)")
    args = parser.parse_args()
    folder = args.isbi.resolve() if args.isbi else None
    args.overrides = (
        [f"data.images={folder / 'train-volume.tif'}", f"data.labels={folder / 'train-labels.tif'}"] if folder else []
    )
    if not args.no_steps:
        step_rates(args)
    if not args.no_trials:
        trial_rates(args)
    if args.seeds:
        accuracy(args)


if __name__ == "__main__":
    main()
