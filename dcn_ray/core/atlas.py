"""The branch atlas: every configuration's F1-F3 maps and fused output on one validation slice.

A pure renderer (numpy and PIL): rows of trials ordered by kernels, each with its branch scores and
its headline score, as one PNG and one self-contained HTML page (every image inlined as a ``data:``
URI, nothing fetched). Which trials become rows is :func:`choose_rows`; where the images come from
(the trials' logged ``feature_maps/``) is :mod:`dcn_ray.track.atlas`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from dcn_ray.kernels import BRANCHES, STRIDES, kernels_text

PNG_FILE, HTML_FILE = "branch_atlas.png", "branch_atlas.html"
#: What marks a file as this renderer's (PNG text chunk ``Software``, HTML ``<meta name="generator">``).
GENERATOR = "dcn-ray branch atlas"
#: Layout in pixels: the label column, a text line, the gap between cells, the narrowest cell;
#: captions under panels and the column heads are two lines each.
LABEL_WIDTH, LINE, GAP, MIN_CELL = 190, 15, 6, 150
CAPTION = 2 * LINE + 2
WEAK_COLOUR, TEXT_COLOUR, REFERENCE_COLOUR = (200, 0, 0), (0, 0, 0), (255, 246, 214)


@dataclass(frozen=True)
class AtlasStyle:
    """How big the atlas gets: panels at most ``panel`` pixels a side, at most ``max_rows`` rows."""

    panel: int = 160
    max_rows: int = 60

    def __post_init__(self) -> None:
        if self.panel < 16 or self.max_rows < 1:
            raise ValueError(f"atlas panel must be >= 16 px and max_rows >= 1, got {self.panel}, {self.max_rows}")


@dataclass(frozen=True)
class AtlasRow:
    """One trial: its F1-F3 maps (uint8 grey) and fused output (uint8 RGB overlay), with its scores."""

    config: str
    kernels: tuple[int, int, int]
    seed: int | None
    phase: str
    reference: bool
    maps: tuple[np.ndarray, np.ndarray, np.ndarray]
    fused: np.ndarray
    branch_scores: tuple[float | None, float | None, float | None]
    weak: str | None  # "F3", "none" (no clear weak branch) or None (unknown)
    score: float | None


@dataclass(frozen=True)
class Atlas:
    """What the page shows: a title, the headline's name, the input slice, the rows, notes on what is left out."""

    title: str
    score_label: str
    rows: tuple[AtlasRow, ...]
    input: np.ndarray | None = None
    notes: tuple[str, ...] = ()

    def ordered(self) -> list[AtlasRow]:
        """The rows by kernels (k1, k2, k3), then configuration, seed and phase."""
        return sorted(self.rows, key=lambda r: (r.kernels, r.config, r.seed or 0, r.phase))


def is_reference(row: Mapping[str, Any], reference: Sequence[int]) -> bool:
    """A results-table row of the reference configuration itself (not a grid variant of its kernels)."""
    kernels = (row.get("k1"), row.get("k2"), row.get("k3"))
    return kernels == tuple(reference) and row.get("config") in (None, "", kernels_text(reference))


def choose_rows(
    rows: Sequence[Mapping[str, Any]], reference: Sequence[int], max_rows: int
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The results-table rows the atlas shows, in kernel order, and notes on those it leaves out.

    Finished trials with an MLflow run: one per configuration (its lowest seed), every seed of the
    reference; at most ``max_rows`` (the reference's first). Families without branches are left out.
    """
    finished = [r for r in rows if r.get("status") == "finished" and r.get("mlflow_run_id")]
    branchless = [r for r in finished if r.get("k1") is None]
    chosen: dict[str, Mapping[str, Any]] = {}
    for row in sorted((r for r in finished if r.get("k1") is not None), key=_row_key):
        name = row.get("config") or kernels_text((row["k1"], row["k2"], row["k3"]))
        key = f"{name}|seed {row.get('seed')}" if is_reference(row, reference) else name
        chosen.setdefault(key, row)
    shown = sorted(chosen.values(), key=lambda r: (not is_reference(r, reference), _row_key(r)))[:max_rows]
    notes = []
    if branchless:
        families = ", ".join(sorted({str(r.get("model_family") or "unknown") for r in branchless}))
        notes.append(f"{len(branchless)} trial(s) of families without branches ({families}) are left out")
    if len(chosen) > len(shown):
        notes.append(f"{len(chosen) - len(shown)} configuration(s) more are not shown (at most {max_rows} rows)")
    return sorted(shown, key=_row_key), notes


def panel(image: Image.Image | np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled (never up) so that its longer side is at most ``side``: uint8 grey or RGB."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    picture = picture.convert("RGB" if picture.mode in ("RGB", "RGBA", "P") else "L")
    scale = min(1.0, side / max(picture.size))
    if scale < 1.0:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(picture)


def render_png(atlas: Atlas, path: str | os.PathLike[str]) -> Path:
    """The atlas as one PNG: a label column, then F1 | F2 | F3 | fused per row (written via a temporary name)."""
    rows = atlas.ordered()
    height, width = _panel_size(atlas)
    font = _font(12)
    cell_w, cell_h = max(width, MIN_CELL) + GAP, height + CAPTION + GAP
    top = LINE * (2 + len(atlas.notes)) + CAPTION
    body_rows = len(rows) + (atlas.input is not None)
    title_font = _font(14)
    full_width = max(LABEL_WIDTH + 4 * cell_w, int(title_font.getlength(atlas.title)) + 8)
    picture = Image.new("RGB", (full_width, top + body_rows * cell_h + GAP), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((4, 2), atlas.title, fill=TEXT_COLOUR, font=title_font)
    for index, note in enumerate(atlas.notes):
        draw.text((4, 2 + LINE * (index + 1)), note, fill=TEXT_COLOUR, font=font)
    for column, head in enumerate(_column_heads()):
        draw.multiline_text((LABEL_WIDTH + column * cell_w, top - CAPTION), head, fill=TEXT_COLOUR, font=font)
    y = top
    if atlas.input is not None:
        draw.text((4, y + 2), "input: the validation slice", fill=TEXT_COLOUR, font=font)
        picture.paste(Image.fromarray(atlas.input).convert("RGB"), (LABEL_WIDTH, y))
        y += cell_h
    for row in rows:
        if row.reference:
            draw.rectangle((0, y - 2, picture.width, y + cell_h - 3), fill=REFERENCE_COLOUR)
        for line, text in enumerate(_row_lines(row, atlas.score_label)):
            draw.text((4, y + 2 + LINE * line), text, fill=TEXT_COLOUR, font=font)
        for column, (image, caption, weak) in enumerate(_panels(row, atlas.score_label)):
            left = LABEL_WIDTH + column * cell_w
            picture.paste(Image.fromarray(image).convert("RGB"), (left, y))
            colour = WEAK_COLOUR if weak else TEXT_COLOUR
            draw.multiline_text((left, y + height + 1), caption, fill=colour, font=font, spacing=2)
        y += cell_h
    info = PngInfo()
    info.add_text("Software", GENERATOR)
    info.add_text("Title", atlas.title)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, optimize=True)
    return _write(Path(path), buffer.getvalue())


def render_html(atlas: Atlas, path: str | os.PathLike[str]) -> Path:
    """The atlas as one self-contained HTML page: a table whose images are inlined ``data:`` URIs."""
    heads = "".join(f"<th>{_lines(head)}</th>" for head in _column_heads())
    body = []
    if atlas.input is not None:
        body.append(f"<tr><td class=label>input: the validation slice</td><td>{_img(atlas.input, 'input')}</td></tr>")
    for row in atlas.ordered():
        label = _lines("\n".join(_row_lines(row, atlas.score_label)))
        cells = "".join(
            f"<td><figure>{_img(image, caption)}<figcaption{' class=weak' if weak else ''}>"
            f"{_lines(caption)}</figcaption></figure></td>"
            for image, caption, weak in _panels(row, atlas.score_label)
        )
        body.append(f"<tr{' class=reference' if row.reference else ''}><td class=label>{label}</td>{cells}</tr>")
    notes = "".join(f"<p>{html.escape(note)}</p>" for note in atlas.notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{GENERATOR}">
<title>{html.escape(atlas.title)}</title>
<style>
body {{ font: 13px sans-serif; margin: 12px; }} table {{ border-collapse: collapse; }}
td, th {{ padding: 3px 5px; vertical-align: top; text-align: left; }} figure {{ margin: 0; }}
td.label {{ min-width: 12em; }} tr.reference {{ background: #fff6d6; }} .weak {{ color: #c80000; font-weight: bold; }}
img {{ display: block; image-rendering: auto; }}
</style></head><body>
<h1 style="font-size: 16px">{html.escape(atlas.title)}</h1>{notes}
<table><thead><tr><th></th>{heads}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""
    return _write(Path(path), page.encode())


def is_atlas_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a PNG or HTML file this renderer wrote (its GENERATOR mark)."""
    path = Path(path)
    try:
        if path.suffix == ".png":
            with Image.open(path) as picture:
                return getattr(picture, "text", {}).get("Software") == GENERATOR
        with open(path, "rb") as handle:
            return f'content="{GENERATOR}"'.encode() in handle.read(1024)
    except (OSError, ValueError):  # PIL.UnidentifiedImageError is an OSError
        return False


def _column_heads() -> list[str]:
    """Two lines per column: the branch and its kernel's stride; the fused output and its colours."""
    heads = [f"{name}\nk{i + 1}, stride {s}" for i, (name, s) in enumerate(zip(BRANCHES, STRIDES))]
    return [*heads, "fused vs truth\nTP green, FP red, FN blue"]


def _lines(text: str) -> str:
    """Text of lines as HTML: escaped, joined by <br>."""
    return "<br>".join(html.escape(line) for line in text.split("\n"))


def _row_lines(row: AtlasRow, score_label: str) -> list[str]:
    """The label of a row: configuration (reference marked), seed and phase, headline score, weak branch."""
    seed = "" if row.seed is None else f"seed {row.seed} · "
    weak = {None: "weak branch unknown", "none": "no clear weak branch"}.get(row.weak, f"weak branch {row.weak}")
    return [
        row.config + ("  (reference)" if row.reference else ""),
        f"{seed}{row.phase}",
        f"{score_label} {_fmt(row.score)}",
        weak,
    ]


def _panels(row: AtlasRow, score_label: str) -> list[tuple[np.ndarray, str, bool]]:
    """(image, caption, is the weak branch) for F1, F2, F3 and the fused output."""
    found = []
    for index, (name, image) in enumerate(zip(BRANCHES, row.maps)):
        weak = row.weak == name
        mark = " · weak" if weak else ""
        caption = f"{name} k={row.kernels[index]}{mark}\ncalibrated {_fmt(row.branch_scores[index])}"
        found.append((image, caption, weak))
    found.append((row.fused, f"fused\n{score_label} {_fmt(row.score)}", False))
    return found


def _panel_size(atlas: Atlas) -> tuple[int, int]:
    """The largest (height, width) of any panel: every cell of the grid gets it."""
    images = [atlas.input] if atlas.input is not None else []
    images += [image for row in atlas.rows for image in (*row.maps, row.fused)]
    if not images:
        return 1, 1
    return max(i.shape[0] for i in images), max(i.shape[1] for i in images)


def _img(image: np.ndarray, alt: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" width="{image.shape[1]}" height="{image.shape[0]}" src="data:image/png;base64,{data}">'


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _row_key(row: Mapping[str, Any]) -> tuple:
    return (row["k1"], row["k2"], row["k3"], row.get("config") or "", row.get("seed") or 0, row.get("phase") or "")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path
