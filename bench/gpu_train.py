"""The DCN training step on one GPU: fp32, bf16 autocast, channels_last, torch.compile, side by side.

Each variant runs dcn_ray.core.train's own step (make_train_step with StepOptions); the training default
is dcn_ray.core.train.default_step_options, to be set to the fastest correct variant found here.
Data stays resident on the GPU (dcn_ray.core.sampler.CropSampler). For each variant it prints images/s and
achieved TFLOP/s (forward + backward FLOPs counted by torch's FlopCounterMode), next to the GPU's
bf16 matrix-product rate measured in the same run, and which variants stay numerically close to fp32
(loss after the same steps). The last line names the fastest correct variant.

    python bench/gpu_train.py                       # full DCN, width 64, 512 x 512, batch 8, CUDA
    python bench/gpu_train.py --device cpu --size 128 --width 8 --batch 2 --steps 3 --matmul-size 1024  # CPU smoke
    python bench/gpu_train.py --json figures.json   # also the figures as JSON, rewritten after each variant

A variant that fails (torch.compile without a compiler, say) is recorded with its error; the others still run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import add_step_arguments, resident_sampler, synchronize, training_step
from torch.utils.flop_counter import FlopCounterMode

from dcn_ray.core.loss import dcn_loss
from dcn_ray.core.sampler import CropSampler
from dcn_ray.models.dcn import DCN

VARIANTS = {
    "fp32": dict(bf16=False, channels_last=False, compile=False),
    "bf16": dict(bf16=True, channels_last=False, compile=False),
    "bf16+channels_last": dict(bf16=True, channels_last=True, compile=False),
    "bf16+channels_last+compile": dict(bf16=True, channels_last=True, compile=True),
}


def matmul_rate(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matrix-product TFLOP/s of this device."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def step_flops(model: DCN, batch: torch.Tensor, target: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = dcn_loss(model(batch), target, 0.5)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run_variant(name: str, options: dict, args, sampler: CropSampler, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    model = DCN(kernels=(4, 8, 16), width=args.width).to(device)
    step = training_step(model, sampler, **options)

    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return args.steps * args.batch / seconds, float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--matmul-size", type=int, default=8192, help="side of the matrices timed for the peak rate")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True

    sampler = resident_sampler(args.size, args.batch, device)
    model = DCN(kernels=(4, 8, 16), width=args.width).to(device)
    flops_per_image = step_flops(model, *sampler.sample()) / args.batch
    peak = matmul_rate(device, args.matmul_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = "bf16" if device.type == "cuda" else "fp32"
    print(f"device: {name}; measured {precision} matmul rate {peak:.1f} TFLOP/s")
    print(
        f"DCN width {args.width}, {args.size} x {args.size}, batch {args.batch}: {flops_per_image / 1e9:.0f} GFLOP per image (forward + backward)"
    )
    figures = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "width": args.width,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "gflop_per_image": flops_per_image / 1e9,
        "matmul_precision": precision,
        "matmul_tflops": peak,
        "variants": {},
    }

    results = {}
    for variant in args.variants.split(","):
        try:
            rate, loss = run_variant(variant, VARIANTS[variant], args, sampler, device)
        except Exception as error:  # one variant's failure (a compiler missing) must not hide the others
            figures["variants"][variant] = {"error": f"{type(error).__name__}: {error}"[:500]}
            print(f"{variant:28s} failed: {type(error).__name__}: {error}")
            _write(args.json, figures)
            continue
        tflops = rate * flops_per_image / 1e12
        results[variant] = (rate, loss)
        figures["variants"][variant] = {
            "images_per_s": rate,
            "tflops": tflops,
            "fraction_of_matmul": tflops / peak,
            "loss": loss,
        }
        print(
            f"{variant:28s} {rate:8.1f} images/s  {tflops:7.1f} TFLOP/s  {100 * tflops / peak:5.1f}% of matmul rate  loss {loss:.4f}"
        )
        _write(args.json, figures)
    if not results:
        raise SystemExit("every variant failed")
    reference_loss = results.get("fp32", next(iter(results.values())))[1]
    correct = {v: r for v, r in results.items() if abs(r[1] - reference_loss) <= 0.05 + 0.1 * abs(reference_loss)}
    for variant in results:
        figures["variants"][variant]["close_to_fp32"] = variant in correct
    best = max(correct, key=lambda v: correct[v][0])
    figures["fastest_correct"] = best
    _write(args.json, figures)
    print(f"fastest correct variant: {best} ({correct[best][0]:.1f} images/s)")


def _write(path: Path | None, figures: dict) -> None:
    """Rewrite the JSON after each variant (to a temporary name, then rename): a run stopped midway keeps what it measured."""
    if path is not None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(figures, indent=2))
        partial.replace(path)


if __name__ == "__main__":
    main()
