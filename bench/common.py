"""What the benchmarks share: their arguments, the resident synthetic data, one training step, a model file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from dcn_ray.core import checkpoint
from dcn_ray.core.sampler import CropSampler
from dcn_ray.core.train import StepOptions, make_train_step
from dcn_ray.io.synth import make_synthetic
from dcn_ray.models.dcn import DCN


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --size, --width, --batch, --steps, --warmup (defaults: the full DCN on a GPU)."""
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)


def resident_sampler(size: int, batch: int, device: torch.device, seed: int = 0) -> CropSampler:
    """Whole-slice crops of a synthetic stack that lives on ``device`` (no host copies per step)."""
    images, labels = make_synthetic(slices=max(4, batch), size=size, seed=seed)
    return CropSampler(
        torch.from_numpy(images / 255.0).float().to(device),
        torch.from_numpy(labels == 255).to(device),
        crop=size,
        batch_size=batch,
        generator=torch.Generator(device=device).manual_seed(seed),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(
    model: DCN, sampler: CropSampler, *, bf16: bool, channels_last: bool, compile: bool
) -> Callable[[], torch.Tensor]:
    """One Adam step on a fresh batch through dcn_ray.core.train's own step; returns the loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = make_train_step(model, optimizer, StepOptions(bf16=bf16, channels_last=channels_last, compile=compile))

    def sampled_step() -> torch.Tensor:
        images, targets = sampler.sample()
        return step(images, targets, 0.5)

    return sampled_step


def random_dcn_file(path: Path, width: int, *, config: dict | None = None) -> Path:
    """A DCN 4-8-16 of ``width``, seeded random weights, batch norm in eval mode, saved as ``model.pt``:
    what prediction benchmarks run (their time does not depend on the weights)."""
    torch.manual_seed(0)
    model = DCN(kernels=(4, 8, 16), width=width).eval()
    checkpoint.save(checkpoint.model_payload(model, config=config or {}, step=0, metrics={}), path)
    return path
