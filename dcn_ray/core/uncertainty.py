"""Where a model is unsure, from its 8 test-time-augmentation views: what ``dcn-ray suggest`` ranks.

For a pixel with foreground probabilities p_1..p_8 from the 8 dihedral views (each transformed
back; :meth:`dcn_ray.predict.engine.SlicePredictor.views`) and their mean p:

- ``entropy`` = H(p), the binary entropy of the mean in bits: 1 at p = 0.5, 0 where the model
  is sure (the predictive entropy);
- ``disagreement`` = H(p) - mean_t H(p_t), the mutual information between the prediction and the
  view (BALD, with the views as the ensemble): 0 where the views agree, whatever they say, high
  where a flip or a rotation changes the answer. In [0, 1] bits.

A region's score is the mean of a pixel score over its unlabelled pixels (already labelled pixels
need no label); a region without an unlabelled pixel is not ranked.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: The pixel scores, the first the default that ranks.
SCORES = ("disagreement", "entropy")
_EPS = 1e-7


def binary_entropy(probability: np.ndarray) -> np.ndarray:
    """H(p) = -p log2 p - (1 - p) log2 (1 - p), float32, 0 at p in {0, 1}."""
    p = np.clip(probability.astype(np.float64), _EPS, 1.0 - _EPS)
    return (-(p * np.log2(p)) - (1.0 - p) * np.log2(1.0 - p)).astype(np.float32)


def pixel_scores(views: np.ndarray) -> dict[str, np.ndarray]:
    """``probability``, ``entropy`` and ``disagreement`` maps (Y, X) of (T, Y, X) view probabilities."""
    if views.ndim != 3 or len(views) < 1:
        raise ValueError(f"views must be (T, Y, X) probabilities, got shape {views.shape}")
    mean = views.mean(axis=0)
    entropy = binary_entropy(mean)
    disagreement = np.maximum(entropy - binary_entropy(views).mean(axis=0), 0.0)
    return {"probability": mean, "entropy": entropy, "disagreement": disagreement.astype(np.float32)}


def region_rows(z: int, maps: dict[str, np.ndarray], unlabelled: np.ndarray | None, size: int) -> list[dict]:
    """Rows for slice ``z``: the whole slice, then each ``size`` x ``size`` tile of a grid from its top
    left (edge tiles smaller), with each score's mean over the unlabelled pixels and their share."""
    height, width = maps[SCORES[0]].shape
    open_ = np.ones((height, width), dtype=bool) if unlabelled is None else unlabelled
    regions = [("slice", 0, 0, height, width)] + [
        ("tile", top, left, min(size, height - top), min(size, width - left))
        for top in range(0, height, size)
        for left in range(0, width, size)
    ]
    rows = []
    for kind, top, left, rows_, cols in regions:
        where = open_[top : top + rows_, left : left + cols]
        count = int(np.count_nonzero(where))
        if not count:
            continue
        row = {"kind": kind, "z": z, "y0": top, "x0": left, "height": rows_, "width": cols}
        for key in SCORES:
            row[key] = float(maps[key][top : top + rows_, left : left + cols][where].mean())
        row["unlabelled"] = count / where.size
        rows.append(row)
    return rows


def ranked(rows: Iterable[dict], score: str) -> list[dict]:
    """``rows`` sorted by ``score``, highest first (ties by z, y0, x0), each with its ``rank`` from 1."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    order = sorted(rows, key=lambda row: (-row[score], row["z"], row["y0"], row["x0"]))
    return [{"rank": index, **row} for index, row in enumerate(order, start=1)]
