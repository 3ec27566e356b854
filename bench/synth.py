"""How fast the synthetic EM-like stack is made (the smoke job makes one on first use).

Side by side in one process, best of REPEATS: ``make_synthetic`` and, as the floor any generator of
such a stack pays, drawing the same volume of Gaussian noise and blurring it once. The ratio says
how many such passes the generator costs; the seconds say what a newcomer waits.

    python bench/synth.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from dcn_ray.io.synth import make_synthetic

REPEATS = 3
#: (slices, size): the smoke job's stack, and the size the generator was specified for (well under 2 s).
SIZES = ((12, 128), (24, 256))


def floor(slices: int, size: int, seed: int) -> None:
    noise = np.random.default_rng(seed).standard_normal((slices, size, size), dtype=np.float32)
    ndimage.gaussian_filter(noise, sigma=(0, 2, 2))


def best_time(function, *args) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    for slices, size in SIZES:
        generator = best_time(lambda: make_synthetic(slices=slices, size=size, seed=11))
        blur = best_time(floor, slices, size, 11)
        print(
            f"{slices} x {size} x {size}: make_synthetic {generator:.3f} s, noise + one blur {blur:.3f} s, "
            f"ratio {generator / blur:.1f}x"
        )


if __name__ == "__main__":
    main()
