"""`dcn-ray suggest`: the uncertainty scores, the ranking it writes, and the paths it refuses."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from conftest import run_cli, small_job, train_job

from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.core.uncertainty import pixel_scores, ranked, region_rows
from dcn_ray.job.config import job_from_dict
from dcn_ray.predict.engine import PredictOptions, SlicePredictor


def test_disagreement_is_zero_where_the_views_agree_and_high_where_they_do_not():
    views = np.zeros((8, 2, 3), dtype=np.float32)
    views[:, 0] = 0.5  # agree on "unsure": entropy 1, disagreement 0
    views[:4, 1], views[4:, 1] = 0.0, 1.0  # sure, but half say the opposite: both 1
    maps = pixel_scores(views)
    assert maps["entropy"][0] == pytest.approx([1, 1, 1], abs=1e-5)
    assert maps["disagreement"][0] == pytest.approx([0, 0, 0], abs=1e-5)
    assert maps["disagreement"][1] == pytest.approx([1, 1, 1], abs=1e-5)
    assert maps["probability"][1] == pytest.approx([0.5, 0.5, 0.5])


def test_regions_score_their_unlabelled_pixels_only():
    maps = {"disagreement": np.arange(16, dtype=np.float32).reshape(4, 4), "entropy": np.ones((4, 4), np.float32)}
    unlabelled = np.ones((4, 4), dtype=bool)
    unlabelled[:2, :2] = False  # the top-left tile is labelled already
    rows = region_rows(3, maps, unlabelled, 2)
    assert [(r["kind"], r["y0"], r["x0"]) for r in rows] == [
        ("slice", 0, 0),
        ("tile", 0, 2),
        ("tile", 2, 0),
        ("tile", 2, 2),
    ]
    assert rows[0]["disagreement"] == pytest.approx(maps["disagreement"][unlabelled].mean())
    assert rows[0]["unlabelled"] == 0.75 and rows[1]["disagreement"] == pytest.approx((2 + 3 + 6 + 7) / 4)
    order = ranked(rows[1:], "disagreement")
    assert [(r["rank"], r["y0"], r["x0"]) for r in order] == [(1, 2, 2), (2, 2, 0), (3, 0, 2)]


@pytest.fixture(scope="module")
def model_file(synthetic_stack, tmp_path_factory):
    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 12, "eval_every": 12, "crop": 48}))
    path = tmp_path_factory.mktemp("model") / "model.pt"
    checkpoint.save(train_job(job, (4, 8, 16), load_data(job.data)).model, path)
    return path


def test_views_average_to_the_prediction(model_file, synthetic_stack):
    model = checkpoint.load_model(model_file)[0]
    predictor = SlicePredictor(model, PredictOptions(device="cpu"))
    image = tifffile.imread(synthetic_stack[0])[0].astype(np.float32) / 255
    views = predictor.views(image)
    assert views.shape == (8, 128, 128)
    np.testing.assert_allclose(views.mean(axis=0), predictor(image), atol=1e-6)


def test_suggest_writes_a_ranking_and_a_map_of_the_stack(model_file, synthetic_stack, tmp_path, capsys):
    images = synthetic_stack[0]
    painted = np.zeros(tifffile.imread(images).shape, dtype=np.uint8)
    painted[2] = 1  # slice 2 is labelled whole, slice 5 half: neither is suggested there again
    painted[5, :64] = 2
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, painted)
    out = tmp_path / "next"
    args = ["suggest", model_file, images, out, "--top", "3", "--region", "64", "--labels", labels]
    code, stdout, err = run_cli(capsys, args)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["ranking.csv", "ranking.json", "suggested.tif", "uncertainty.tif"]
    table = json.loads((out / "ranking.json").read_text())
    score = tifffile.imread(out / "uncertainty.tif")
    assert score.shape == painted.shape and score.dtype == np.float32 and 0 <= score.min() and score.max() <= 1
    slices, tiles = table["slices"], table["tiles"]
    assert sorted(r["z"] for r in slices) == [z for z in range(12) if z != 2]
    assert [r["rank"] for r in slices] == list(range(1, 12))
    assert all(a["disagreement"] >= b["disagreement"] for a, b in zip(slices, slices[1:]))
    half = next(r for r in slices if r["z"] == 5)
    assert half["unlabelled"] == 0.5 and half["disagreement"] == pytest.approx(score[5, 64:].mean(), rel=1e-5)
    assert len(tiles) == 3 and not any(t["z"] == 2 or (t["z"] == 5 and t["y0"] < 64) for t in tiles)
    # the 3 best tiles beat every other unlabelled tile
    others = [
        score[z, y : y + 64, x : x + 64].mean()
        for z in range(12)
        for y in (0, 64)
        for x in (0, 64)
        if z != 2 and not (z == 5 and y == 0) and (z, y, x) not in {(t["z"], t["y0"], t["x0"]) for t in tiles}
    ]
    assert min(t["disagreement"] for t in tiles) >= max(others) - 1e-6
    marks = tifffile.imread(out / "suggested.tif")
    first = tiles[0]
    assert (marks[first["z"], first["y0"] : first["y0"] + 64, first["x0"] : first["x0"] + 64] == 1).all()
    assert sorted(np.unique(marks)) == [0, 1, 2, 3]
    with (out / "ranking.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 11 + 3 and rows[0]["kind"] == "slice" and rows[-1]["kind"] == "tile"
    assert stdout.splitlines()[1].split()[:3] == ["1", "slice", str(slices[0]["z"])]


def test_suggest_never_writes_over_or_inside_its_inputs(model_file, synthetic_stack, tmp_path, capsys):
    images = synthetic_stack[0]
    before = images.read_bytes()
    for out, words in (
        (images, "is the stack of this command"),
        (images.parent, "contains the stack"),
        (model_file.parent, "contains the model file"),
    ):
        code, stdout, err = run_cli(capsys, ["suggest", model_file, images, out])
        assert code == 2 and not stdout, err
        assert err.startswith("dcn-ray: error: ") and words in err and err.count("\n") == 1, err
    assert images.read_bytes() == before
    code, _, err = run_cli(capsys, ["suggest", model_file, images, tmp_path / "o", "--top", "0"])
    assert code == 2 and "--top 0: must be 1 or more" in err


def test_suggest_writes_the_map_as_ome_zarr_with_the_tiles_as_its_labels(model_file, synthetic_stack, tmp_path, capsys):
    import zarr

    images = synthetic_stack[0]
    tiff, out = tmp_path / "tiff", tmp_path / "zarr"
    base = ["suggest", model_file, images, "--top", "3", "--region", "64", "--device", "cpu"]
    code, _, err = run_cli(capsys, [*base[:3], tiff, *base[3:]])
    assert code == 0, err
    code, stdout, err = run_cli(capsys, [*base[:3], out, *base[3:], "--format", "ome-zarr"])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["ranking.csv", "ranking.json", "uncertainty.ome.zarr"]
    root = zarr.open_group(str(out / "uncertainty.ome.zarr"), mode="r")
    assert [d["path"] for d in root.attrs["multiscales"][0]["datasets"]] == ["0"]
    assert list(root["labels"].attrs["labels"]) == ["suggested"]
    # the same numbers as the TIFF map, and the tiles painted by rank as suggested.tif paints them
    np.testing.assert_allclose(root["0"][...], tifffile.imread(tiff / "uncertainty.tif"), atol=1e-6)
    np.testing.assert_array_equal(root["labels/suggested/0"][...], tifffile.imread(tiff / "suggested.tif"))
    assert root.attrs["dcn_ray"]["complete"] and "dcn_ray_blocks" not in root
    # run again into the same folder: the store dcn-ray wrote is replaced whole
    code, _, err = run_cli(capsys, [*base[:3], out, *base[3:], "--format", "ome-zarr", "--top", "1"])
    assert code == 0, err
    again = zarr.open_group(str(out / "uncertainty.ome.zarr"), mode="r")
    assert sorted(np.unique(again["labels/suggested/0"][...])) == [0, 1]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside


def test_suggest_refuses_an_ome_zarr_map_over_a_folder_it_did_not_write(model_file, synthetic_stack, tmp_path, capsys):
    out = tmp_path / "next"
    (out / "uncertainty.ome.zarr").mkdir(parents=True)
    (out / "uncertainty.ome.zarr" / "mine.txt").write_text("keep")
    code, stdout, err = run_cli(capsys, ["suggest", model_file, synthetic_stack[0], out, "--format", "ome-zarr"])
    assert code == 2 and not stdout and err.count("\n") == 1, err
    assert err.startswith("dcn-ray: error: ") and "did not write" in err
    assert (out / "uncertainty.ome.zarr" / "mine.txt").read_text() == "keep"
    code, _, err = run_cli(capsys, ["suggest", model_file, synthetic_stack[0], out, "--format", "png"])
    assert code == 2 and err.startswith("dcn-ray: error: ") and "--format" in err and err.count("\n") == 1, err
