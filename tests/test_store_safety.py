"""Stores and scores that never lose or misread data (issue 26), each class through the CLI.

Outputs never touch the files and trees behind inputs; temporary names stay short; a refused run
leaves nothing; ``--resume`` refuses changed input data; ``score`` reads masks as masks; damaged
volumes and malformed NGFF metadata give one line; one sweep per name at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from conftest import run_cli
from test_hostile_input import assert_one_error, model_file
from test_volumes import write_ome

RNG = np.random.default_rng(26)
SHAPE = (2, 40, 40)


def volume_data() -> np.ndarray:
    return RNG.integers(0, 256, SHAPE, dtype=np.uint8)


def truth_data() -> np.ndarray:
    truth = np.full(SHAPE, 255, np.uint8)
    truth[:, ::5] = 0
    return truth


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too), by relative path: what a run may not change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def predict(capsys, model: Path, source, output, *extra) -> tuple:
    return run_cli(capsys, ["predict", model, source, output, "--no-tta", "--tile", "64", "--overlap", "16", *extra])


# ----------------------------------------------------------------------------- 1. inputs as files and trees


def test_no_output_is_contains_or_lies_inside_an_input(work: Path, capsys) -> None:
    model = model_file(work)
    with h5py.File(work / "d.h5", "w") as handle:
        handle.create_dataset("volumes/raw", data=volume_data())
        handle.create_dataset("volumes/labels", data=truth_data())
    tifffile.imwrite(work / "in.tif", volume_data(), photometric="minisblack")
    assert predict(capsys, model, work / "in.tif", work / "prev.ome.zarr")[0] == 0  # an earlier output
    (work / "store.ome.zarr").mkdir()
    os.link(model, work / "model-link.pt")
    (work / "link.ome.zarr").symlink_to(work / "prev.ome.zarr")
    before = tree(work)
    h5, ome = f"{work / 'd.h5'}:/volumes/raw", work / "prev.ome.zarr"
    cases = [
        ([h5, work / "d.h5"], "is the input"),  # a TIFF output over the HDF5 file behind the input
        ([work / "in.tif", work / "d.h5", "--labels", f"{work / 'd.h5'}:/volumes/labels"], "the --labels file"),
        ([f"{ome}/0", ome], "contains the input"),  # the input array lies in the output store
        ([work / "in.tif", ome, "--labels", f"{ome}/0"], "contains the --labels volume"),
        ([ome, ome / "pred.ome.zarr"], "lies inside the input"),  # written into the input store
        ([work / "in.tif", work / "link.ome.zarr", "--labels", f"{ome}/0"], "the --labels volume"),  # a symlink
        ([h5, work / "model-link.pt"], "the model file"),  # a hard link of the model
    ]
    for args, problem in cases:
        code, out, err = predict(capsys, model, *args)
        assert_one_error(code, err, problem)
        assert out == ""
    # the model file inside an earlier output store
    (work / "inner").mkdir()
    write_ome(work / "inner" / "out.ome.zarr", volume_data(), "0.4")
    inside = work / "inner" / "out.ome.zarr" / "m.pt"
    inside.write_bytes(model.read_bytes())
    code, _, err = predict(capsys, inside, work / "in.tif", work / "inner" / "out.ome.zarr")
    assert_one_error(code, err, "contains the model file")
    assert inside.exists()
    (work / "inner" / "out.ome.zarr" / "m.pt").unlink()
    after = tree(work)
    assert {name: after.get(name) for name in before} == before


def test_long_names_symlinked_outputs_and_refused_runs_leave_nothing(work: Path, capsys) -> None:
    model = model_file(work)
    source = work / "in.tif"
    tifffile.imwrite(source, volume_data(), photometric="minisblack")
    long = "p" * 241 + ".ome.zarr"  # 250 characters: a valid name; its temporary names must fit too
    code, _, err = predict(capsys, model, source, work / long)
    assert code == 0, err
    assert zarr.open_array(store=str(work / long), path="0", mode="r").shape == SHAPE
    code, _, err = predict(capsys, model, source, work / ("t" * 246 + ".tif"))
    assert code == 0, err
    # an output that is a symbolic link to an earlier store: the link is replaced, its target kept
    (work / "link.ome.zarr").symlink_to(work / long)
    code, _, err = predict(capsys, model, source, work / "link.ome.zarr")
    assert code == 0, err
    assert not (work / "link.ome.zarr").is_symlink() and (work / long).is_dir()
    assert not [p for p in work.iterdir() if ".replaced-" in p.name or ".partial-" in p.name]
    # a run refused once it starts (a dead --address) leaves no store behind
    names = set(os.listdir(work))
    code, _, err = predict(capsys, model, source, work / "new.ome.zarr", "--address", "127.0.0.1:9")
    assert code in (1, 2), err
    assert set(os.listdir(work)) == names


# ----------------------------------------------------------------------------- 4. score reads what it is given


def test_score_reads_masks_as_masks_and_refuses_what_is_neither(work: Path, capsys) -> None:
    truth = truth_data()
    tifffile.imwrite(work / "truth.tif", truth, photometric="minisblack")
    fg = truth == 255
    masks = {
        "m01.tif": fg.astype(np.uint8),
        "m255.tif": fg.astype(np.uint16) * 255,
        "m01_32.tif": fg.astype(np.int32),
    }
    for name, mask in masks.items():
        tifffile.imwrite(work / name, mask, photometric="minisblack")
        code, out, err = run_cli(capsys, ["score", work / name, work / "truth.tif"])
        assert code == 0, err
        assert "IoU 1.0000" in out and "mask" in err, (name, out, err)
    zarr.create_array(str(work / "m.zarr"), data=fg.astype(np.uint8), chunks=(1, 40, 40))
    code, out, _ = run_cli(capsys, ["score", work / "m.zarr", work / "truth.tif", "--json"])
    scores = json.loads(out)
    assert scores["iou"] == 1.0 and "0/1 mask" in scores["prediction_read_as"]
    refused = {
        "low16.tif": (fg.astype(np.uint16) * 200, "neither a 0/1 or 0/255 mask"),
        "neg.tif": (fg.astype(np.int16) - 1, "negative"),
        "wide.tif": (fg.astype(np.float32) * 2, "must lie in [0, 1]"),
    }
    for name, (values, problem) in refused.items():
        tifffile.imwrite(work / name, values, photometric="minisblack")
        code, out, err = run_cli(capsys, ["score", work / name, work / "truth.tif"])
        assert_one_error(code, err, name, problem)
    tifffile.imwrite(work / "full.tif", np.full(SHAPE, 255, np.uint8), photometric="minisblack")
    code, _, err = run_cli(capsys, ["score", work / "m01.tif", work / "full.tif"])
    assert_one_error(code, err, "full.tif", "no background")
    grey = np.zeros((*SHAPE, 3), np.uint8)  # colour labels without one coloured pixel: no foreground
    tifffile.imwrite(work / "grey.tif", grey, photometric="rgb")
    code, _, err = run_cli(capsys, ["score", work / "m01.tif", work / "grey.tif", "--foreground", "color"])
    assert_one_error(code, err, "grey.tif", "no foreground")
    code, _, err = run_cli(capsys, ["score", work / "m01.tif", work / "truth.tif", "--foreground", "0"])
    assert code == 0, err
    for bad in ("nan", "1", "-0.1"):
        code, out, err = run_cli(capsys, ["score", work / "m01.tif", work / "truth.tif", "--threshold", bad])
        assert_one_error(code, err, "--threshold")
