"""Scores that fit the target: object scores for a sparse foreground, V_rand for cell interiors, chosen
from the labels; labels checked slice by slice; ``score --target / --slices``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import run_cli

from dcn_ray.core import objects, scores
from dcn_ray.core.evaluation import score_probabilities
from dcn_ray.core.labels import ACCEPT_KEY, LabelCheck, label_lines


def blobs(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for y, x, h, w in boxes:
        mask[y : y + h, x : x + w] = True
    return mask


def test_objects_match_one_to_one_at_iou_one_half() -> None:
    # Truth: A (10x10), B (10x20), C (4x4). Prediction: A shifted by one row (IoU 90/110 > 0.5),
    # B cut to a quarter (IoU 50/200 < 0.5: missed), and an invented object D.
    truth = blobs((64, 64), [(5, 5, 10, 10), (30, 30, 10, 20), (50, 5, 4, 4)])
    pred = blobs((64, 64), [(6, 5, 10, 10), (30, 30, 5, 10), (50, 50, 5, 5)])
    counts = objects.object_counts(pred, truth)
    assert (counts.truth, counts.predicted, counts.matched) == (3, 3, 1)
    assert counts.precision == pytest.approx(1 / 3) and counts.recall == pytest.approx(1 / 3)
    assert counts.f1 == pytest.approx(2 / 6)
    # Diagonal neighbours are one object (8-connected); counts add over slices.
    diagonal = blobs((8, 8), [(1, 1, 2, 2), (3, 3, 2, 2)])
    assert objects.objects(diagonal)[1] == 1
    stacked = objects.object_counts(np.stack([pred, truth]), np.stack([truth, truth]))
    assert (stacked.truth, stacked.predicted, stacked.matched) == (6, 6, 4)
    assert objects.ObjectCounts().f1 == 1.0  # nothing to find, nothing found


def test_the_target_chooses_the_scores_and_auto_decides_by_the_foreground() -> None:
    truth = np.stack([blobs((64, 64), [(5, 5, 10, 10), (30, 30, 10, 20)])] * 2)
    pred = truth.copy()
    found = scores.segmentation_scores(pred, truth, target="objects")
    assert tuple(found) == scores.keys_of("objects") and "vrand" not in found
    assert found["object_f1"] == 1.0 and found["objects_true"] == 4.0 and found["background_iou"] == 1.0
    assert scores.resolve_target("auto", 0.08) == "objects" and scores.resolve_target("auto", 0.78) == "cells"
    assert scores.resolve_target("cells", 0.08) == "cells"
    line = scores.target_line("auto", "objects", 0.08)
    assert line.startswith("target: objects") and "8.0 % foreground" in line and "data.target: cells" in line
    result = score_probabilities(truth.astype(np.float32) * 0.9, truth)
    assert result["target"] == "objects" and result["object_f1"] == 1.0 and "vrand" not in result
    cells = score_probabilities(truth.astype(np.float32) * 0.9, truth, target="cells")
    assert cells["vrand"] == cells["vrand_best"] == 1.0 and "object_f1" not in cells


def test_unlabelled_slices_are_named_and_a_held_out_one_is_a_warning() -> None:
    masks = np.zeros((6, 20, 20), bool)
    for z in (0, 2, 3, 5):
        masks[z, 5:10, 5:10] = True  # 6.25 %
    masks[3, :, :15] = True  # 75 %: far from the stack
    check = LabelCheck.of(masks)
    assert check.empty == (1, 4) and check.far == (3,)
    splits = {"train": [0, 1, 2], "val": [3], "test": [4, 5]}
    lines = label_lines(check, splits)
    assert "no foreground in slices 1 (train), 4 (test)" in lines[1]
    assert "slice 3 (val) 75.0 %" in lines[2]
    warning = lines[-1]
    assert (
        warning.startswith("warning: slice 4 (test) without any foreground") and f"--set {ACCEPT_KEY}=true" in warning
    )
    accepted = label_lines(check, splits, allow_empty=True)
    assert not any(line.startswith("warning:") for line in accepted) and "accepted" in accepted[-1]


def test_score_picks_the_truth_s_slices_and_says_its_target(tmp_path: Path, capsys) -> None:
    truth = np.zeros((6, 32, 32), np.uint8)
    truth[:, 4:12, 4:12] = 255
    truth[:, 20:28, 16:30] = 255
    truth[4, 20:28, 16:30] = 0  # one object fewer on slice 4
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    tifffile.imwrite(tmp_path / "pred.tif", truth[2:5])  # a prediction of slices 2, 3, 4
    code, out, err = run_cli(capsys, ["score", tmp_path / "pred.tif", tmp_path / "truth.tif", "--json"])
    assert code == 2 and "--slices A:B picks the truth's slices" in err
    code, out, err = run_cli(
        capsys, ["score", tmp_path / "pred.tif", tmp_path / "truth.tif", "--slices", "2:5", "--json"]
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["target"] == "objects" and result["slices"] == 3
    assert result["object_f1"] == 1.0 and result["objects_true"] == 5.0 and result["iou"] == 1.0
    code, out, err = run_cli(capsys, ["score", tmp_path / "pred.tif", tmp_path / "truth.tif", "--slices", "1:4"])
    assert code == 0 and "object F1 0.9091" in out  # 5 of 6 truth objects found: the last slice misses one
    assert "target: objects" in err and "decided from the labels" in err
    code, out, err = run_cli(
        capsys, ["score", tmp_path / "pred.tif", tmp_path / "truth.tif", "--slices", "2:5", "--target", "cells"]
    )
    assert code == 0 and "V_rand (at 0.5) 1.0000" in out and "V_rand best 1.0000" in out
    code, _, err = run_cli(capsys, ["score", tmp_path / "pred.tif", tmp_path / "truth.tif", "--target", "mito"])
    assert code == 2 and err.startswith("dcn-ray: error: --target 'mito'")


def test_the_cells_watershed_tells_its_progress_slice_by_slice() -> None:
    truth = np.stack([blobs((32, 32), [(2, 2, 20, 20)])] * 3)
    told: list[tuple[int, int]] = []
    for workers in (1, 2):
        told.clear()
        scores.probability_scores(truth * np.float32(0.8), truth, workers=workers, progress=lambda *a: told.append(a))
        assert told == [(1, 3), (2, 3), (3, 3)]


def test_the_dry_run_names_an_unlabelled_test_slice_before_training(tmp_path: Path, capsys, synthetic_stack) -> None:
    import yaml
    from conftest import small_job

    images, labels = synthetic_stack
    stack = tifffile.imread(labels)
    stack[11] = 0  # the test slice's annotation is missing
    tifffile.imwrite(tmp_path / "labels.tif", stack)
    job = small_job(images, tmp_path / "labels.tif", data={"split": {"train": "0:8", "val": "9", "test": "11"}})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code, _, err = run_cli(capsys, ["sweep", tmp_path / "job.yaml", "--dry-run"])
    assert code == 0, err
    lines = err.splitlines()
    assert any(line.startswith("target: cells") for line in lines)  # synthetic cell interiors: most pixels
    assert "labels: no foreground in slice 11 (test): annotation missing?" in lines
    warning = next(line for line in lines if line.startswith("warning: slice 11 (test)"))
    assert "--set data.allow_empty_slices=true" in warning
    code, _, err = run_cli(
        capsys, ["sweep", tmp_path / "job.yaml", "--dry-run", "--set", "data.allow_empty_slices=true"]
    )
    assert code == 0 and "warning: slice 11" not in err and "accepted without foreground" in err
