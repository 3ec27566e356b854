"""`dcn-ray score` against `dcn-ray predict --no-tta` on the same slices, side by side, in one run.

The stack: 8 slices of 1024 x 1024 mitochondria (the EPFL subset's first slices, 768 rows mirrored
to 1024), written as TIFF with its labels. `predict` (the stack driver, no TTA, a DCN 4-8-16 of
--width with random weights: the time does not depend on the weights) writes a probability TIFF;
`score` (core.evaluation.score_stacks, what the command runs: reading both files included) scores it,
for the objects target (what `auto` decides for mitochondria) and, with --cells, for the cells target
(the ISBI watershed at 10 thresholds, for comparison). Each is timed REPEATS times, the best kept
(these machines are shared and noisy); the load average is printed with them.

    python bench/score_vs_predict.py [--width 64] [--device cpu|cuda] [--cells]

Done when: score (objects) / predict < 0.10.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

EPFL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "epfl-mito"
SLICES, SIZE, REPEATS = 8, 1024, 2


def make_stack(folder: Path, labels: Path) -> tuple[Path, Path]:
    """8 x 1024 x 1024 images and labels from the EPFL subset (rows mirrored), as TIFF."""
    images = tifffile.imread(labels.parent / "train-images.tif")[:SLICES]
    truth = tifffile.imread(labels)[:SLICES]
    pad = ((0, 0), (0, SIZE - images.shape[1]), (0, SIZE - images.shape[2]))
    tifffile.imwrite(folder / "images.tif", np.pad(images, pad, mode="reflect"), photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", np.pad(truth, pad, mode="reflect"), photometric="minisblack")
    return folder / "images.tif", folder / "labels.tif"


def best_time(work) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64, help="DCN width (64: the paper's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    parser.add_argument("--labels", type=Path, default=EPFL / "train-mitochondria.tif")
    parser.add_argument("--cells", action="store_true", help="also time the cells target (the ISBI watershed)")
    args = parser.parse_args()

    from dcn_ray.core.evaluation import score_stacks
    from dcn_ray.predict.stack import PredictOptions, predict_stack
    from dcn_ray.track.sources import load_source

    with tempfile.TemporaryDirectory(prefix="dcn-bench-") as name:
        folder = Path(name)
        images, labels = make_stack(folder, args.labels)
        from common import random_dcn_file  # torch: only where a model is made

        random_dcn_file(folder / "model.pt", args.width, config={"data": {"foreground": 255}})
        loaded = load_source(str(folder / "model.pt"))
        options = PredictOptions(tta=False, device=args.device)
        output = folder / "probabilities.tif"

        def predict():
            if output.exists():
                output.unlink()
            return predict_stack(loaded, images, output, options)

        predict_s, _ = best_time(predict)
        score_s, scores = best_time(lambda: score_stacks(output, labels, target="objects"))
        print(
            f"{SLICES} slices of {SIZE} x {SIZE}, DCN 4-8-16 width {args.width} on {options.device or 'auto'}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, best of {REPEATS}"
        )
        print(f"predict --no-tta: {predict_s:8.2f} s")
        print(f"score (objects):  {score_s:8.2f} s   ratio {score_s / predict_s:.3f}  (done when < 0.10)")
        print(f"  objects: {scores['objects_true']:.0f} in the truth, {scores['objects_pred']:.0f} predicted")
        if args.cells:
            cells_s, _ = best_time(lambda: score_stacks(output, labels, target="cells"))
            print(f"score (cells):    {cells_s:8.2f} s   ratio {cells_s / predict_s:.3f}  (the ISBI watershed)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
