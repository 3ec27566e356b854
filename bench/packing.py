"""GPU packing: total training images/s with 1, 2 and 4 trials sharing one GPU.

Each "trial" is a separate process running the DCN training step on the same device (as Tune runs
fractional-GPU trials: sweep.resources.gpu = 1, 0.5, 0.25). The processes start together, warm up,
then all time the same number of steps; total images/s is the sum. Run on a GPU machine:

    python bench/packing.py                        # width 64, 512 x 512, batch 8, Table 1 kernels
    python bench/packing.py --device cpu --size 128 --width 8 --batch 2 --steps 5   # a CPU smoke run

The last line names the packing with the highest total throughput: set sweep.resources.gpu from it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--packings", default="1,2,4")
    args = parser.parse_args()
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
