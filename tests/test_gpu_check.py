"""bench/gpu_check.sh, the device check, end to end on the CPU at small sizes: every step writes its JSON
with its figures, a step that fails does not stop the next, and at most 8 files come back."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import tifffile

from dcn_ray.io.synth import make_synthetic

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"
STEPS = ("correctness", "gpu_train", "packing", "predict_volume", "table1")


def _isbi_like(folder: Path) -> Path:
    """30 synthetic 128 x 128 slices under the ISBI file names (the script's small sizes crop 128 x 128)."""
    images, labels = make_synthetic(slices=30, size=128, seed=3)
    folder.mkdir()
    tifffile.imwrite(folder / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(folder / "train-labels.tif", labels, photometric="minisblack")
    return folder


def _run(tmp_path: Path, *arguments: str, fail: str = "", budget: int = 2400) -> tuple[Path, str]:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", "GPU_CHECK_FAIL": fail}
    command = ["bash", str(SCRIPT), "--device", "cpu", "--small", "--budget", str(budget), "--out", str(out)]
    done = subprocess.run(
        [*command, *arguments], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=budget + 120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stdout


def _read(out: Path, step: str) -> dict:
    return json.loads((out / f"{step}.json").read_text())


@pytest.mark.integration
@pytest.mark.timeout(2600)  # about 1.5 CPU-minutes; the budget is for a loaded machine
def test_every_step_writes_its_figures_and_a_failing_step_stops_nothing(tmp_path):
    data = _isbi_like(tmp_path / "data")
    out, stdout = _run(tmp_path, "--data", str(data), fail="gpu_train")

    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["summary.json", "gpu_check.log", *(f"{s}.json" for s in STEPS)])  # 7 <= 8 come back
    failed = _read(out, "gpu_train")  # failed on purpose, first of the benchmarks: the rest still ran
    assert (failed["status"], failed["rc"]) == ("failed", 1)
    assert any("failing on purpose" in line for line in failed["log_tail"])
    for step in ("correctness", "packing", "predict_volume", "table1"):
        assert _read(out, step)["status"] == "ok", _read(out, step)

    correctness = _read(out, "correctness")
    for name in ("dcn", "unet"):
        model = correctness["models"][name]
        assert set(model["checks"]) == {
            "learns",
            "checkpoint_roundtrip",
            "predict_device_equals_cpu",
            "bf16_validation",
        }
        assert model["checks"]["checkpoint_roundtrip"]["passed"]  # saved, loaded: the same weights and outputs
        assert model["checks"]["predict_device_equals_cpu"]["max_abs_diff"] == 0.0  # the device is the CPU here
        assert abs(model["checks"]["bf16_validation"]["difference"]) < 0.05
        assert 0.0 <= model["best_val_iou"] <= 1.0 and model["history"]
    context = correctness["models"]["dcn_context"]  # the 2.5D model: checked where model.context exists
    assert "skipped" in context or "checks" in context

    packing = _read(out, "packing")["packings"]["2"]  # two trials side by side through one real sweep
    assert packing["rc"] == 0 and len(packing["trials"]) == 2
    assert packing["total_images_per_s"] > 0

    volume = _read(out, "predict_volume")
    assert volume["forward_voxels_per_s"] > 0 and volume["predict_voxels_per_s"] > 0
    assert set(volume["memory"]) == {"base", "wider", "deeper"}

    table1 = _read(out, "table1")
    assert table1["rc"] == 0 and table1["trials_finished"] == 2  # 2 configurations x 1 seed at small sizes
    assert table1["seconds_per_step_median"] > 0 and table1["val_iou_by_step"]

    summary = _read(out, "summary")
    assert summary["environment"]["torch"] and summary["environment"]["device"] == "cpu"
    assert {s: v["status"] for s, v in summary["steps"].items()} == {
        "correctness": "ok",
        "gpu_train": "failed",
        "packing": "ok",
        "predict_volume": "ok",
        "table1": "ok",
    }
    assert "gpu_train       failed" in stdout


@pytest.mark.integration
def test_the_training_step_benchmark_alone(tmp_path):
    """--steps runs the named steps only; the training step's variants with images/s and TFLOP/s."""
    out, _ = _run(tmp_path, "--steps", "gpu_train", budget=300)
    figures = _read(out, "gpu_train")
    assert figures["status"] == "ok" and figures["matmul_tflops"] > 0
    assert set(figures["variants"]) == {"fp32", "bf16", "bf16+channels_last"}  # compile: minutes on a CPU
    for variant in figures["variants"].values():
        assert variant["images_per_s"] > 0 and variant["tflops"] > 0 and "close_to_fp32" in variant
    assert figures["fastest_correct"] in figures["variants"]
    assert not (out / "packing.json").exists()
