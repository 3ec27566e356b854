"""The cover image of an exported model: input, prediction, truth, errors, and the F1-F3 maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dcn_ray.core.render import CAPTION_HEIGHT, PANEL_GAP, branch_image, render_overlay

COLUMNS = 4


def render_cover(
    image: np.ndarray,
    probability: np.ndarray,
    truth: np.ndarray,
    branches: Sequence[np.ndarray] | None,
    path: Path,
    *,
    lines: Sequence[str] = (),
) -> Path:
    """A 2:1 PNG: input | prediction | truth | errors over the slice, then F1 | F2 | F3 | ``lines``.

    ``image`` (H, W) in [0, 1], ``probability`` (H, W) foreground probability, ``truth`` (H, W) bool,
    ``branches`` three (2, H, W) logit maps (None for a family without side branches).
    """
    height, width = image.shape
    grey = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    prediction = np.rint(np.clip(probability, 0, 1) * 255).astype(np.uint8)
    overlay = path.with_name(f".{path.name}.overlay.png")
    render_overlay(image, probability > 0.5, truth, overlay)
    errors = np.asarray(Image.open(overlay).convert("RGB"))
    overlay.unlink()
    panels: list[tuple[np.ndarray | None, str]] = [
        (grey, "input"),
        (prediction, "foreground probability"),
        (truth.astype(np.uint8) * 255, "truth"),
        (errors, "green TP, red FP, blue FN"),
    ]
    for index, branch in enumerate(branches or ()):
        panels.append((branch_image(branch), f"F{index + 1}"))
    panels += [(None, "")] * (2 * COLUMNS - len(panels))
    cell_w, cell_h = width + PANEL_GAP, height + CAPTION_HEIGHT
    cover = Image.new("RGB", (COLUMNS * cell_w, 2 * cell_h), color="white")
    draw = ImageDraw.Draw(cover)
    for index, (panel, caption) in enumerate(panels):
        left, top = (index % COLUMNS) * cell_w, (index // COLUMNS) * cell_h
        if panel is not None:
            cover.paste(Image.fromarray(panel).convert("RGB"), (left, top))
            draw.text((left + 2, top + height + 1), caption, fill="black")
    text_left, text_top = (len(panels) - 1) % COLUMNS * cell_w, cell_h
    if panels[-1][0] is None:  # the last cell of the second row holds the text
        for row, line in enumerate(lines):
            draw.text((text_left + 4, text_top + 4 + 12 * row), line, fill="black")
    side = max(cover.width, 2 * cover.height)  # 2:1, as bioimage.io asks of covers
    framed = Image.new("RGB", (side, side // 2), color="white")
    framed.paste(cover, ((side - cover.width) // 2, (side // 2 - cover.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    framed.save(path, format="PNG")
    return path
