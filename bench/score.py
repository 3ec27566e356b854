"""`dcn-ray score`'s work (probability_scores) today against the code at a git ref, side by side.

The maps: ISBI 2012's training labels blurred, with noise (like a model's output), or a probability
TIFF given with --maps (a `dcn-ray predict` output). Old and new alternate REPEATS times in this
process; the best time of each is kept (these machines are noisy), and the scores must be identical.

    python bench/score.py [--slices 30] [--ref ef35c69] [--workers N] [--maps probabilities.tif]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from before import module_at  # noqa: E402

from dcn_ray.core import metrics, scores  # noqa: E402

ISBI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "isbi2012"
REPEATS = 2


def isbi_like(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(truth.astype(np.float32), (0, 1.5, 1.5))
    return np.clip(0.85 * smooth + 0.15 * rng.random(truth.shape, dtype=np.float32), 0.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--ref", default="ef35c69", help="git ref of the code before (default: before issue 24)")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: metrics.default_workers())")
    parser.add_argument("--labels", type=Path, default=ISBI / "train-labels.tif")
    parser.add_argument("--maps", type=Path, default=None, help="foreground probabilities (Z, Y, X) in [0, 1]")
    args = parser.parse_args()
    truth = tifffile.imread(args.labels)[: args.slices] == 255
    probability = isbi_like(truth) if args.maps is None else tifffile.imread(args.maps)[: args.slices]
    probability = probability.astype(np.float32) / (255.0 if probability.dtype == np.uint8 else 1.0)
    before = module_at(args.ref, "dcn_ray/core/metrics.py")
    workers = metrics.default_workers() if args.workers is None else args.workers
    print(
        f"{len(truth)} slices of {truth.shape[1]} x {truth.shape[2]}, {workers} worker thread(s), before = {args.ref}"
    )
    best = {"before": float("inf"), "now": float("inf")}
    results = {}
    for repeat in range(REPEATS):
        for name, score in (
            ("before", lambda: before.probability_scores(probability, truth)),
            ("now", lambda: scores.probability_scores(probability, truth, workers=workers)),
        ):
            start = time.perf_counter()
            results[name] = score()
            elapsed = time.perf_counter() - start
            best[name] = min(best[name], elapsed)
            print(f"repeat {repeat} {name:6s} {elapsed:7.2f} s")
    identical = results["before"] == results["now"]
    print(f"scores identical: {identical}  (vrand {results['now']['vrand']:.6f}, vinfo {results['now']['vinfo']:.6f})")
    print(f"speed-up (best before / best now): {best['before'] / best['now']:.2f}x")
    if not identical:
        raise SystemExit("scores differ")


if __name__ == "__main__":
    main()
