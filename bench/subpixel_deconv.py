"""The side branches' deconvolution as oneDNN runs it today against a sub-pixel rewrite, side by side.

A stride-s transposed convolution of kernel k equals a dense convolution of the low-resolution map
to s^2 x channels (kernel ceil(k / s), the same weights reshaped and flipped) followed by
``pixel_shuffle``. This script checks that the two agree (float64, every (k, s) below) and times
forward + backward of each, one thread, channels_last (the CPU default) and NCHW, at the shapes of
the CPU study's DCN (width 8, crops 128, batch 4) and of width 16 / crops 256.

    python bench/subpixel_deconv.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

#: (in channels, input side, kernel, stride): F1-F3 of the study's DCN, then F1 and F3 at width 16 / crop 256.
SHAPES = ((16, 64, 4, 2), (32, 32, 8, 4), (64, 16, 16, 8), (32, 128, 4, 2), (128, 32, 16, 8))
MID = 8  # the branches' channels at full resolution (max(width // 2, 8))


def subpixel_deconv(x: torch.Tensor, weight: torch.Tensor, stride: int, kernel: int) -> torch.Tensor:
    """``ConvTranspose2d(k, stride=s, padding=(k - s) // 2)`` cropped to s x the input, as conv + pixel_shuffle."""
    s, k = stride, kernel
    m = -(-k // s)
    cin, cout = weight.shape[:2]
    w = F.pad(weight, (0, m * s - k, 0, m * s - k)).reshape(cin, cout, m, s, m, s).flip(2, 4)
    w = w.permute(1, 3, 5, 0, 2, 4).reshape(cout * s * s, cin, m, m)
    h, wd = x.shape[-2:]
    p = (k - s) // 2
    low, high_y, high_x = p // s, (p + h * s - 1) // s, (p + wd * s - 1) // s
    x = F.pad(x, (m - 1 - low, high_x - wd + 1, m - 1 - low, high_y - h + 1))
    up = F.pixel_shuffle(F.conv2d(x, w), s)
    offset = p - low * s
    return up[..., offset : offset + h * s, offset : offset + wd * s]


def check() -> float:
    """The largest difference between the two over kernels and strides the DCN allows (float64)."""
    worst = 0.0
    for k, s in [(2, 2), (3, 2), (4, 2), (6, 2), (4, 4), (7, 4), (10, 4), (8, 8), (9, 8), (14, 8), (16, 8), (24, 8)]:
        deconv = torch.nn.ConvTranspose2d(5, 3, k, stride=s, padding=(k - s) // 2, bias=False).double()
        x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
        with torch.no_grad():
            reference = deconv(x)[..., : 6 * s, : 7 * s]
            worst = max(worst, float((reference - subpixel_deconv(x, deconv.weight, s, k)).abs().max()))
    return worst


def timed(step, repeats: int) -> float:
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"largest difference, float64: {check():.1e}")
    print(
        "in, side, k, s | deconv channels_last | deconv NCHW | sub-pixel NCHW | sub-pixel channels_last | best sub-pixel / deconv channels_last"
    )
    for cin, side, k, s in SHAPES:
        deconv = torch.nn.ConvTranspose2d(cin, MID, k, stride=s, padding=(k - s) // 2, bias=False)
        best: dict[str, float] = {}
        for layout in (torch.channels_last, torch.contiguous_format):
            x = torch.randn(4, cin, side, side).to(memory_format=layout).requires_grad_()
            grad = torch.randn(4, MID, side * s, side * s).to(memory_format=layout)
            module = deconv.to(memory_format=layout)
            name = "channels_last" if layout is torch.channels_last else "NCHW"
            for _ in range(2):  # alternate, best of each
                for arm, forward in (
                    ("deconv", lambda: module(x)[..., : side * s, : side * s]),
                    ("sub-pixel", lambda: subpixel_deconv(x, module.weight, s, k)),
                ):
                    seconds = timed(lambda: forward().backward(grad), args.repeats)
                    best[f"{arm} {name}"] = min(best.get(f"{arm} {name}", float("inf")), seconds)
        ratio = best["deconv channels_last"] / min(best["sub-pixel NCHW"], best["sub-pixel channels_last"])
        cells = [
            f"{1e3 * best[k]:.2f} ms"
            for k in ("deconv channels_last", "deconv NCHW", "sub-pixel NCHW", "sub-pixel channels_last")
        ]
        print(f"{cin}, {side}, {k}, {s} | " + " | ".join(cells) + f" | {ratio:.2f}x")


if __name__ == "__main__":
    main()
