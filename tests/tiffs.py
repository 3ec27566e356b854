"""Small TIFF stacks for tests, and where the shared ISBI 2012 copy lives (beside the repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

ISBI = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "isbi2012"
RNG = np.random.default_rng(7)


def random_stack(z: int = 4, y: int = 24, x: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (z, y, x), dtype=np.uint8)


def membrane_labels(z: int = 4, y: int = 24, x: int = 32) -> np.ndarray:
    labels = np.full((z, y, x), 255, np.uint8)
    labels[:, ::6, :] = 0  # membranes: every 6th row
    return labels


def write_tif(tmp_path: Path, name: str, data: np.ndarray, **kwargs: object) -> Path:
    path = tmp_path / name
    kwargs.setdefault("photometric", "minisblack")  # else tifffile takes (3|4, Y, X) for RGB(A)
    tifffile.imwrite(path, data, **kwargs)
    return path
