"""The branch atlas renderer: which trials, in which order, laid out and labelled, and a page that fetches nothing."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from dcn_ray.core import atlas
from dcn_ray.core.atlas import CAPTION, GAP, LABEL_WIDTH, LINE, MIN_CELL, Atlas, AtlasRow, AtlasStyle

SIDE = 24


def _row(kernels, seed, value, *, reference=False, weak="F3", phase="grid") -> AtlasRow:
    """A row whose panels are flat grey levels value, value + 1, value + 2 and a flat RGB fused panel."""
    maps = tuple(np.full((SIDE, SIDE), value + i, np.uint8) for i in range(3))
    return AtlasRow(
        config="-".join(map(str, kernels)),
        kernels=kernels,
        seed=seed,
        phase=phase,
        reference=reference,
        maps=maps,
        fused=np.full((SIDE, SIDE, 3), value + 3, np.uint8),
        branch_scores=(0.4, 0.3, 0.05),
        weak=weak,
        score=0.8123 if reference else 0.75,
    )


ROWS = (
    _row((6, 8, 16), 0, 200),
    _row((4, 8, 16), 1, 100, reference=True),
    _row((2, 8, 16), 0, 10, weak="none"),
    _row((4, 8, 16), 0, 50, reference=True),
    _row((4, 8, 12), 0, 150, phase="followup"),
)
ORDER = [((2, 8, 16), 0), ((4, 8, 12), 0), ((4, 8, 16), 0), ((4, 8, 16), 1), ((6, 8, 16), 0)]


def _atlas(**kwargs) -> Atlas:
    defaults = {"title": "Branch atlas", "score_label": "test IoU", "rows": ROWS, "notes": ("a note",)}
    return Atlas(**{**defaults, **kwargs})


def test_rows_are_ordered_by_kernels_then_seed():
    assert [(r.kernels, r.seed) for r in _atlas().ordered()] == ORDER


def test_png_layout_puts_each_panel_in_its_cell_in_kernel_order(tmp_path):
    path = atlas.render_png(_atlas(), tmp_path / atlas.PNG_FILE)
    picture = np.asarray(Image.open(path).convert("RGB"))
    cell_w, cell_h = max(SIDE, MIN_CELL) + GAP, SIDE + CAPTION + GAP
    top = LINE * 3 + CAPTION  # the title, one note, a blank line, the column heads (two lines)
    assert picture.shape == (top + len(ROWS) * cell_h + GAP, LABEL_WIDTH + 4 * cell_w, 3)
    values = {(r.kernels, r.seed): r for r in ROWS}
    for index, key in enumerate(ORDER):
        row = values[key]
        for column in range(4):
            y, x = top + index * cell_h + SIDE // 2, LABEL_WIDTH + column * cell_w + SIDE // 2
            expected = row.maps[column][0, 0] if column < 3 else row.fused[0, 0, 0]
            assert tuple(picture[y, x]) == (expected,) * 3, f"row {index} {key}, column {column}"
    assert atlas.is_atlas_file(path)


def test_input_slice_adds_a_row_above_the_trials(tmp_path):
    plain = Image.open(atlas.render_png(_atlas(), tmp_path / "a.png"))
    shown = Image.open(atlas.render_png(_atlas(input=np.full((SIDE, SIDE), 77, np.uint8)), tmp_path / "b.png"))
    assert shown.height - plain.height == SIDE + CAPTION + GAP
    assert np.asarray(shown.convert("L"))[LINE * 3 + CAPTION + 2, LABEL_WIDTH + 2] == 77


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "srcset", "action", "data") and v]

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_with_inlined_images_and_labels(tmp_path):
    path = atlas.render_html(_atlas(input=np.full((SIDE, SIDE), 77, np.uint8)), tmp_path / atlas.HTML_FILE)
    source = path.read_text()
    page = _Page()
    page.feed(source)
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(page.tags)
    assert "url(" not in source and "@import" not in source
    assert len(page.images) == 1 + 4 * len(ROWS)
    assert all(url.startswith("data:image/png;base64,") for url in page.urls)
    first = Image.open(io.BytesIO(base64.b64decode(page.images[1]["src"].split(",", 1)[1])))
    assert first.size == (SIDE, SIDE) and np.asarray(first)[0, 0] == 10  # 2-8-16 leads
    text = " ".join(page.text)
    assert text.index("2-8-16") < text.index("4-8-12") < text.index("4-8-16  (reference)") < text.index("6-8-16")
    assert text.count("(reference)") == 2 and "seed 1 · grid" in text and "seed 0 · followup" in text
    assert "F1 k=2 calibrated 0.4000" in text and "F3 k=16 · weak calibrated 0.0500" in text
    assert "test IoU 0.8123" in text and "no clear weak branch" in text and "a note" in text
    assert source.count("class=weak") == len(ROWS) - 1  # the row without a clear weak branch marks none
    assert atlas.is_atlas_file(path)


def test_foreign_files_are_not_taken_for_an_atlas(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "other.png")
    (tmp_path / "other.html").write_text("<html><head><title>mine</title></head></html>")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert not any(atlas.is_atlas_file(tmp_path / n) for n in ("other.png", "other.html", "broken.png", "gone.png"))


def test_choose_rows_one_per_configuration_every_reference_seed_branchless_left_out():
    def table_row(k, seed, **extra):
        base = {"k1": k[0], "k2": k[1], "k3": k[2], "seed": seed, "phase": "grid", "status": "finished"}
        return {**base, "config": "-".join(map(str, k)), "mlflow_run_id": f"run-{k}-{seed}", **extra}

    rows = [
        table_row((4, 8, 16), 1),
        table_row((4, 8, 16), 0),
        table_row((2, 8, 16), 1),
        table_row((2, 8, 16), 0),
        table_row((6, 8, 16), 0, status="errored"),
        {
            "k1": None,
            "k2": None,
            "k3": None,
            "seed": 0,
            "status": "finished",
            "mlflow_run_id": "u",
            "model_family": "unet",
        },
    ]
    chosen, notes = atlas.choose_rows(rows, (4, 8, 16), max_rows=10)
    assert [(r["k1"], r["seed"]) for r in chosen] == [(2, 0), (4, 0), (4, 1)]
    assert notes == ["1 trial(s) of families without branches (unet) are left out"]
    capped, notes = atlas.choose_rows(rows, (4, 8, 16), max_rows=2)
    assert [(r["k1"], r["seed"]) for r in capped] == [(4, 0), (4, 1)]  # the reference's seeds are kept
    assert "1 configuration(s) more are not shown (at most 2 rows)" in notes


def test_panels_are_scaled_down_never_up():
    assert atlas.panel(np.zeros((512, 256), np.uint8), 160).shape == (160, 80)
    assert atlas.panel(np.zeros((32, 32, 3), np.uint8), 160).shape == (32, 32, 3)
    with pytest.raises(ValueError):
        AtlasStyle(panel=4)


def test_the_glue_reads_the_files_trials_log():
    from dcn_ray.core.analysis import IMAGE_FILES
    from dcn_ray.track.atlas import FUSED_FILE, MAP_FILES, MONTAGE_FILE

    assert {*MAP_FILES, FUSED_FILE, MONTAGE_FILE} == set(IMAGE_FILES)
