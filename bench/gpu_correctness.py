"""The device check's first step: does dcn-ray compute correctly on this device?

For each model (the DCN, a U-Net, and a 2.5D DCN where ``model.context`` exists), on ISBI-style slices:
- it learns: a short training run's best validation IoU beats both its untrained start and the
  all-foreground prediction of the same slices by ``LEARN_MARGIN``;
- its checkpoint round-trips: saved and loaded, the weights are equal, the outputs on the device are
  equal, and the validation IoU rescored from the loaded file is within 0.001 of the one training recorded;
- predict on the device equals predict on the CPU (``SlicePredictor``, the engine of ``dcn-ray predict``)
  within 1/255 on a few test slices;
- bf16 validation (autocast, as training validates on CUDA) is within 0.002 IoU of fp32.
On the CPU (``--device cpu``) the device and the CPU are the same: the checks run, and pass trivially.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import sweeps
import torch

from dcn_ray import models
from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.core.metrics import iou
from dcn_ray.core.train import build_model, evaluate, train
from dcn_ray.errors import InputError
from dcn_ray.job.job_file import load_job
from dcn_ray.models.outputs import pad_forward
from dcn_ray.predict.engine import PredictOptions, SlicePredictor

log = logging.getLogger("gpu_check")

LEARN_MARGIN = 0.01
PREDICT_LIMIT = 1 / 255
BF16_LIMIT = 0.002
RESCORE_LIMIT = 0.001
KERNELS = (4, 8, 16)

#: (name, --set overrides, size settings) of each model checked; "small" sizes run on a CPU in seconds.
MODELS = {
    "dcn": [],
    "unet": ["model.family=unet"],
    "dcn_context": ["model.context=1"],  # the 2.5D model: skipped while model.context does not exist
}
SIZES = {
    "full": {
        "width": 32,
        "unet_width": 16,
        "depth": 4,
        "crop": 256,
        "batch": 8,
        "steps": 300,
        "slices": 3,
        "tta": True,
    },
    "small": {"width": 4, "unet_width": 4, "depth": 2, "crop": 64, "batch": 2, "steps": 24, "slices": 2, "tta": False},
}


def run(device: torch.device, data: Path, work: Path, output: Path, *, small: bool) -> dict[str, Any]:
    """Every model's checks; ``output`` is rewritten after each model (a stopped run keeps the finished ones)."""
    sizes = SIZES["small" if small else "full"]
    figures: dict[str, Any] = {"device": _device_name(device), "sizes": sizes, "models": {}}
    for name, overrides in MODELS.items():
        started = time.perf_counter()
        try:
            figures["models"][name] = check_model(name, overrides, device, data, work, sizes, small=small)
        except Exception as error:  # one model's failure is a finding: the next model is still checked
            log.exception("%s failed", name)
            figures["models"][name] = {"error": f"{type(error).__name__}: {error}"[:600]}
        figures["models"][name]["seconds"] = time.perf_counter() - started
        checked = [m for m in figures["models"].values() if "skipped" not in m]
        figures["passed"] = all(m.get("passed", False) for m in checked)
        _write(output, figures)
    return figures


def check_model(
    name: str, overrides: list[str], device: torch.device, data: Path, work: Path, sizes: dict, *, small: bool
) -> dict[str, Any]:
    unet = "model.family=unet" in overrides
    width = sizes["unet_width"] if unet else sizes["width"]
    job_file = sweeps.write_job(
        work / f"correctness-{name}.yaml", name=f"correctness-{name}", images=data / "train-volume.tif",
        labels=data / "train-labels.tif", kernels=[KERNELS], seeds=1, width=width, crop=sizes["crop"],
        batch=sizes["batch"], steps=sizes["steps"], eval_every=max(1, sizes["steps"] // 2), gpu=1, cpu=1,
        roi=(0, 0, 128, 128) if small else None,
    )  # fmt: skip
    extra = [*overrides, *([f"model.depth={sizes['depth']}"] if unet else [])]
    try:
        job = load_job(job_file, extra)
    except InputError as error:
        if name == "dcn_context":
            return {"skipped": f"no 2.5D model here ({error})"}
        raise
    context = getattr(job.model, "context", 0)  # serial-section neighbours as input channels (2.5D)
    dataset = load_data(job.data, context=context) if context else load_data(job.data)
    kernels = KERNELS if models.get(job.model.family).uses_kernels else None
    untrained = build_model(job.model, kernels, seed=job.train.seed).to(device)
    val_masks = dataset.val_masks.astype(bool)
    result: dict[str, Any] = {"family": job.model.family, "width": width, "steps": job.train.steps}
    started = time.perf_counter()
    trained = train(job.model.with_keys(kernels=kernels) if kernels else job.model, job.train, dataset, device=device)
    result["train_seconds"] = time.perf_counter() - started
    all_foreground = iou(np.ones_like(val_masks), val_masks)
    initial = None if context else val_iou(untrained, dataset.val_images, val_masks, device, bf16=False)
    floor = max(all_foreground, initial if initial is not None else 0.0)
    result.update(
        best_val_iou=trained.best_iou,
        best_step=trained.best_step,
        initial_val_iou=initial,
        all_foreground_val_iou=all_foreground,
        history=[{k: h[k] for k in ("step", "val_iou", "train_loss", "images_per_s")} for h in trained.history],
    )
    checks: dict[str, Any] = {
        "learns": {
            "passed": trained.best_iou > floor + LEARN_MARGIN,
            "rule": f"best val IoU > {floor:.4f} + {LEARN_MARGIN}",
        }
    }
    path = work / f"{name}.pt"
    checkpoint.save(trained.model, path)
    loaded, payload = checkpoint.load_model(path, map_location="cpu")
    same_weights = payload["weights"].keys() == trained.model["weights"].keys() and all(
        torch.equal(payload["weights"][k], trained.model["weights"][k]) for k in payload["weights"]
    )
    checks["checkpoint_roundtrip"] = {"weights_equal": same_weights, "passed": same_weights}
    if context:  # its input is several slices: the single-slice checks below do not apply
        result["checks"] = checks
        result["passed"] = all(c["passed"] for c in checks.values())
        return result
    kept = checkpoint.model_from_payload(trained.model).to(device)
    loaded = loaded.to(device)
    slice_ = torch.from_numpy(dataset.val_images[0]).to(device)[None, None]
    with torch.no_grad():
        a = pad_forward(kept, slice_, models.size_multiple(kept)).fused
        b = pad_forward(loaded, slice_, models.size_multiple(loaded)).fused
    rescored = evaluate(loaded, torch.from_numpy(dataset.val_images).to(device), val_masks)["iou"]
    output_diff = float((a - b).abs().max())
    checks["checkpoint_roundtrip"].update(
        output_max_abs_diff=output_diff,
        rescored_val_iou=rescored,
        # training ran channels_last, the loaded model runs NCHW: other kernels, a pixel's argmax may flip
        passed=same_weights and output_diff == 0.0 and abs(rescored - trained.best_iou) <= RESCORE_LIMIT,
    )
    checks["predict_device_equals_cpu"] = predict_check(payload, dataset.test_images[: sizes["slices"]], device, sizes)
    fp32 = val_iou(loaded, dataset.val_images, val_masks, device, bf16=False)
    bf16 = val_iou(loaded, dataset.val_images, val_masks, device, bf16=True)
    checks["bf16_validation"] = {
        "fp32_iou": fp32,
        "bf16_iou": bf16,
        "difference": bf16 - fp32,
        "limit": BF16_LIMIT,
        "passed": abs(bf16 - fp32) <= BF16_LIMIT,
    }
    result["checks"] = checks
    result["passed"] = all(c["passed"] for c in checks.values())
    return result


def predict_check(payload: dict, images: np.ndarray, device: torch.device, sizes: dict) -> dict[str, Any]:
    """The engine's probabilities on ``device`` against the CPU's, slice by slice."""
    here = SlicePredictor(checkpoint.model_from_payload(payload), PredictOptions(tta=sizes["tta"], device=device.type))
    cpu = SlicePredictor(checkpoint.model_from_payload(payload), PredictOptions(tta=sizes["tta"], device="cpu"))
    worst, changed = 0.0, 0
    for image in images:
        a, b = here(image), cpu(image)
        worst = max(worst, float(np.abs(a - b).max()))
        changed += int(np.count_nonzero(np.round(a * 255) != np.round(b * 255)))
    return {
        "slices": len(images),
        "tta": sizes["tta"],
        "max_abs_diff": worst,
        "uint8_pixels_changed": changed,
        "limit": PREDICT_LIMIT,
        "passed": worst <= PREDICT_LIMIT,
    }


def val_iou(
    model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, device: torch.device, *, bf16: bool
) -> float:
    """Foreground IoU of the argmax over whole slices, in fp32 or under bf16 autocast."""
    model = model.to(device).eval()
    predictions = np.empty(masks.shape, dtype=bool)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.no_grad(), autocast:
        for index, image in enumerate(images):
            output = pad_forward(model, torch.from_numpy(image).to(device)[None, None], models.size_multiple(model))
            predictions[index] = (output.fused[0].argmax(0) == 1).cpu().numpy()
    return iou(predictions, masks)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _write(path: Path, figures: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(figures, indent=2, default=float))
    partial.replace(path)


if __name__ == "__main__":  # python bench/gpu_correctness.py DATA_DIR OUT.json [--small] [--device cpu]
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory(prefix="dcn-correctness-") as folder:
        run(torch.device(args.device), args.data, Path(folder), args.output, small=args.small)
