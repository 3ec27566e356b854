"""Read a prediction to score as what it is: a mask, probabilities, or refused.

- Integer values that are all 0/1 or all 0/255 (any integer dtype, bool too) are a mask.
- Other unsigned (or non-negative signed) integers are probabilities over the dtype's range
  (uint8 0-255, uint16 0-65535), unless every value fits in 8 bits of a wider dtype: that is
  neither a mask nor such probabilities, and is refused rather than read as near-zero.
- Floats are probabilities and must lie in [0, 1] (NaN refused).
- One channel only: colour (RGB, RGBA) and 4-D images are refused, naming their shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcn_ray.errors import InputError

#: TIFF layouts (io.tiff_layout) that hold more than one channel per pixel: never read as a prediction.
COLOUR = {"rgb": "a colour (RGB or RGBA) image"}


def read_prediction(source: str | Path) -> tuple[np.ndarray, str]:
    """(float32 (Z, Y, X) foreground probability or 0/1 mask, what it was read as)."""
    raw = _raw_values(source)
    dtype = raw.dtype
    if dtype.kind == "b":
        return raw.astype(np.float32), "a boolean mask"
    if dtype.kind in "ui":
        low, high = int(raw.min()), int(raw.max())
        if low >= 0 and high <= 1:
            return raw.astype(np.float32), f"a 0/1 mask ({dtype})"
        if low >= 0 and high <= 255 and np.isin(raw, (0, 255)).all():
            return (raw == 255).astype(np.float32), f"a 0/255 mask ({dtype})"
        if low < 0:
            raise InputError(f"{source}: holds negative {dtype} values ({low}); give probabilities or a mask")
        top = np.iinfo(dtype).max
        if dtype.itemsize > 1 and high <= 255:
            raise InputError(
                f"{source}: {dtype} values 0-{high} are neither a 0/1 or 0/255 mask nor probabilities over "
                f"0-{top}; store them as uint8"
            )
        return (raw.astype(np.float32) / np.float32(top)), f"{dtype} probabilities over 0-{top}"
    if dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise InputError(f"{source}: holds NaN or infinite values")
        low, high = float(raw.min()), float(raw.max())
        if low < 0.0 or high > 1.0:
            raise InputError(f"{source}: float probabilities must lie in [0, 1], these span {low:g} to {high:g}")
        return raw.astype(np.float32), f"{dtype} probabilities"
    raise InputError(f"{source}: unsupported value type {dtype}")


def _raw_values(source: str | Path) -> np.ndarray:
    """The stored values, (Z, Y, X); colour TIFFs as the grey values :func:`read_volume` gives."""
    from dcn_ray.io.tiff_layout import open_stack, reading
    from dcn_ray.io.volumes import is_tiff, open_volume, read_volume

    if not is_tiff(source):
        return open_volume(source, scan=False).raw()
    with open_stack(Path(source)) as (tif, layout), reading(Path(source)):
        if layout.kind in COLOUR:
            raise InputError(
                f"{source}: is {COLOUR[layout.kind]} of shape {tuple(tif.series[0].shape)}; a prediction is one "
                "channel (Z, Y, X) of probabilities or a mask"
            )
        if layout.kind != "grey":
            return read_volume(source)
        return tif.series[0].asarray().reshape(layout.shape)
