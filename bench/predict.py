"""Benchmark `dcn-ray predict` (or, with --suggest, `dcn-ray suggest`): slices per second and peak memory.

Each case (Z = 4, then Z = 16 slices) runs in a fresh Python process that predicts the stack
with a narrow DCN (width 4, random weights, batch norm in eval mode) on the CPU, tiled with
tile 512 (the default before bench/predict_volume.py chose 2048) and overlap 128, without TTA,
and reports its own resident-set high-water mark (``ru_maxrss``). Streaming means the peak does
not grow with Z: the last lines print peak(Z=48) / peak(Z=16) and peak(Z=16) / peak(Z=4), which
should be about 1 (the peak of a process varies by a few percent from run to run with the allocator).

    python bench/predict.py            # about three minutes on 2 cores
    python bench/predict.py --suggest  # the same for suggest (8 TTA views a slice, 1024 x 1024 slices)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 2048
SUGGEST_SIZE = 1024  # suggest runs 8 views a slice
DEPTHS = (4, 16, 48)
WIDTH = 4


def make_stack(path: Path, depth: int, size: int) -> None:
    from dcn_ray.io.tiff_writer import StackWriter

    rng = np.random.default_rng(depth)
    with StackWriter(path) as writer:
        for _ in range(depth):
            writer.write(rng.integers(0, 256, (size, size), dtype=np.uint8))


def run_case(model: Path, stack: Path, output: Path, command: str) -> dict:
    """In the child process: predict (or suggest), then report the time and this process's peak RSS."""
    import torch

    from dcn_ray.predict.stack import PredictOptions, predict_stack
    from dcn_ray.predict.suggest import SuggestOptions, suggest
    from dcn_ray.track.sources import load_source

    torch.set_num_threads(2)
    loaded = load_source(str(model))
    if command == "suggest":
        started = time.perf_counter()
        slices = len(suggest(loaded, stack, output, SuggestOptions(top=5), device="cpu").slices)
        seconds = time.perf_counter() - started
    else:  # predict's own timing, as the figures in docs/benchmarks.md were measured
        result = predict_stack(loaded, stack, output, PredictOptions(tile=512, tta=False, device="cpu"))
        slices, seconds = result.slices, result.seconds
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"slices": slices, "seconds": seconds, "peak_mib": peak_kib / 1024}


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--case":
        print(json.dumps(run_case(*(Path(a) for a in sys.argv[2:5]), sys.argv[5])))
        return
    command = "suggest" if "--suggest" in sys.argv[1:] else "predict"
    size = SUGGEST_SIZE if command == "suggest" else SIZE
    started = time.perf_counter()
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="dcn-bench-") as folder:
        folder = Path(folder)
        from common import random_dcn_file  # torch: only where a model is made

        random_dcn_file(folder / "model.pt", WIDTH)
        for depth in DEPTHS:
            stack = folder / f"stack{depth}.tif"
            make_stack(stack, depth, size)
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    str(folder / "model.pt"),
                    str(stack),
                    str(folder / (f"out{depth}" if command == "suggest" else f"out{depth}.tif")),
                    command,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            case = json.loads(child.stdout.strip().splitlines()[-1])
            peaks[depth] = case["peak_mib"]
            print(
                f"Z={depth:>2}: {command} {case['slices']} slices of {size} x {size} in {case['seconds']:.1f} s = "
                f"{case['slices'] / case['seconds']:.2f} slices/s (width {WIDTH}, CPU, "
                f"{'8 TTA views' if command == 'suggest' else 'no TTA'}), "
                f"peak RSS {case['peak_mib']:.0f} MiB"
            )
    print(f"total {time.perf_counter() - started:.0f} s")
    print(f"peak(Z=48)/peak(Z=16) = {peaks[48] / peaks[16]:.3f}  (no growth per slice: streaming)")
    print(f"peak(Z=16)/peak(Z=4) = {peaks[16] / peaks[4]:.3f}")


if __name__ == "__main__":
    main()
