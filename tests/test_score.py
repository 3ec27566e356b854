"""``dcn-ray score``: ISBI-protocol scores of a stack against labels, JSON on stdout, bad input exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from tiffs import ISBI, write_tif

from dcn_ray.cli import main


def labels_with_two_cells() -> np.ndarray:
    """(2, 9, 9) uint8 labels: per slice two cells (255) split by a membrane column (0)."""
    labels = np.full((2, 9, 9), 255, np.uint8)
    labels[:, :, 4] = 0
    return labels


def run(capsys, *args: object) -> tuple[int, str, str]:
    try:
        main(["score", *map(str, args)])
        code = 0
    except SystemExit as done:
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


def test_perfect_mask_scores_one_and_states_the_baselines(tmp_path: Path, capsys) -> None:
    labels = write_tif(tmp_path, "labels.tif", labels_with_two_cells())
    code, out, _ = run(capsys, labels, labels, "--json")
    assert code == 0
    scores = json.loads(out)
    for key in ("iou", "dice", "membrane_iou", "vrand", "vinfo"):
        assert scores[key] == 1.0
    assert scores["pixel_error"] == 0.0 and scores["threshold"] == 0.5 and scores["slices"] == 2
    assert scores["baseline_all_foreground_iou"] == pytest.approx(72 / 81)
    assert scores["baseline_all_background_iou"] == 0.0


def test_probability_map_takes_the_best_threshold(tmp_path: Path, capsys) -> None:
    labels = labels_with_two_cells()
    probability = np.where(labels == 255, 230, 90).astype(np.uint8)  # membrane at 90/255 = 0.35
    pred = write_tif(tmp_path, "pred.tif", probability)
    truth = write_tif(tmp_path, "labels.tif", labels)
    code, out, _ = run(capsys, pred, truth, "--json", "--threshold", "0.3")
    scores = json.loads(out)
    assert code == 0
    assert scores["iou"] == pytest.approx(72 / 81)  # at 0.3 the membrane counts as foreground
    assert scores["vrand_best"] == 1.0 and scores["vrand_best_threshold"] == pytest.approx(0.4)
    assert scores["vinfo_best"] == 1.0 and scores["vinfo_best_threshold"] == pytest.approx(0.4)
    assert scores["vrand"] < 1.0  # at 0.3 the two cells merge: V_rand at 0.3 is another number
    # A merge at every threshold it is allowed: V_rand drops below 1.
    code, out, _ = run(capsys, pred, truth, "--json", "--thresholds", "0.1,0.2")
    assert json.loads(out)["vrand_best"] < 0.7
    # The same map given as membrane probability, inverted.
    inverted = write_tif(tmp_path, "membrane.tif", 255 - probability)
    code, out, _ = run(capsys, inverted, truth, "--json", "--invert", "--threshold", "0.3")
    assert json.loads(out) == pytest.approx(scores)
    # Text: one line of scores, one of baselines.
    code, out, _ = run(capsys, pred, truth)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert "V_rand best 1.0000 (threshold 0.4)" in lines[0] and "IoU 1.0000" in lines[0]
    assert "V_rand (at 0.5) 1.0000" in lines[0]
    assert "all-foreground IoU 0.8889" in lines[1]


@pytest.mark.skipif(not (ISBI / "train-labels.tif").exists(), reason="ISBI 2012 data absent")
def test_eroded_isbi_labels_score_near_one(tmp_path: Path, capsys) -> None:
    import tifffile
    from scipy import ndimage

    labels = tifffile.imread(ISBI / "train-labels.tif")[25:30]
    eroded = np.stack([ndimage.binary_erosion(plane == 255) for plane in labels]).astype(np.uint8) * 255
    code, out, _ = run(capsys, write_tif(tmp_path, "eroded.tif", eroded), str(ISBI / "train-labels.tif"), "--json")
    assert code == 2  # 5 slices against 30: refused
    truth = write_tif(tmp_path, "truth.tif", labels)
    code, out, _ = run(capsys, write_tif(tmp_path, "eroded.tif", eroded), truth, "--json")
    scores = json.loads(out)
    assert scores["vrand"] > 0.999 and scores["vinfo"] > 0.995 and scores["iou"] < 0.93


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "missing.tif"),
        ("shape", "shape"),
        ("foreground", "foreground value 7"),
        ("foreground-text", "--foreground 'cells'"),
        ("threshold", "--threshold"),
        ("thresholds", "--thresholds"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, case: str, message: str) -> None:
    labels = write_tif(tmp_path, "labels.tif", labels_with_two_cells())
    args = {
        "missing": [str(tmp_path / "missing.tif"), labels],
        "shape": [write_tif(tmp_path, "small.tif", labels_with_two_cells()[:1]), labels],
        "foreground": [labels, labels, "--foreground", "7"],
        "foreground-text": [labels, labels, "--foreground", "cells"],
        "threshold": [labels, labels, "--threshold", "1.5"],
        "thresholds": [labels, labels, "--thresholds", "0.2,x"],
    }[case]
    code, out, err = run(capsys, *map(str, args))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("dcn-ray: error:") and message in err


def test_json_alone_on_stdout_of_the_command(tmp_path: Path) -> None:
    labels = write_tif(tmp_path, "labels.tif", labels_with_two_cells())
    done = subprocess.run(
        [sys.executable, "-m", "dcn_ray", "score", str(labels), str(labels), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) >= {"iou", "dice", "pixel_error", "membrane_iou", "vrand", "vinfo", "threshold"}
    assert done.stdout.count("\n") == 1


def _painted(truth: np.ndarray) -> np.ndarray:
    """napari's labels layer of ``truth`` (255 foreground): 1 foreground, 2 background, 0 unpainted;
    slice 1 left unpainted, slice 0 painted on its left half, slices 2 and 3 whole."""
    layer = np.where(truth == 255, 1, 2).astype(np.uint8)
    layer[1] = 0
    layer[0, :, truth.shape[2] // 2 :] = 0
    return layer


@pytest.mark.parametrize("target", ["cells", "objects"])
def test_partly_labelled_truth_scores_its_labelled_pixels_alone(tmp_path: Path, capsys, target: str) -> None:
    rng = np.random.default_rng(36)
    truth = np.full((4, 24, 24), 255, np.uint8)
    truth[:, ::8], truth[:, :, ::8] = 0, 0  # cells between membranes (or objects, as --target says)
    layer = write_tif(tmp_path, "layer.tif", _painted(truth))
    probability = rng.integers(0, 256, truth.shape, dtype=np.uint8)
    first = write_tif(tmp_path, "first.tif", probability)
    unlabelled = _painted(truth) == 0
    changed = np.where(unlabelled, 255 - probability, probability).astype(np.uint8)  # other values there only
    second = write_tif(tmp_path, "second.tif", changed)
    partial = ["--foreground", "1", "--background", "2", "--target", target, "--json"]
    _, out, err = run(capsys, first, layer, *partial)
    scores = json.loads(out)
    code, out, err = run(capsys, second, layer, *partial)
    assert code == 0, err
    assert json.loads(out) == scores  # what the prediction holds where nothing is labelled changes no score
    labelled = 24 * 12 + 2 * 24 * 24
    assert (scores["labelled_pixels"], scores["pixels"]) == (labelled, 4 * 24 * 24)
    assert (scores["labelled_slices"], scores["given_slices"], scores["slices"]) == (3, 4, 3)
    # the unpainted values as data.unlabelled names them: the same scores
    code, out, _ = run(capsys, first, layer, "--foreground", "1", "--unlabelled", "0", "--target", target, "--json")
    assert json.loads(out) == scores
    # every pixel painted: the scores of the plain truth
    whole = write_tif(tmp_path, "whole.tif", np.where(truth == 255, 1, 2).astype(np.uint8))
    _, out, _ = run(capsys, first, whole, *partial)
    _, plain, _ = run(capsys, first, write_tif(tmp_path, "truth.tif", truth), "--target", target, "--json")
    both = json.loads(out)
    assert both["labelled_pixels"] == both["pixels"]
    assert {k: v for k, v in both.items() if k in json.loads(plain)} == pytest.approx(json.loads(plain))
    # the text says how much was labelled
    code, out, _ = run(capsys, first, layer, *partial[:-1], "--slices", "0:2")
    assert code == 0 and out.strip().splitlines()[-1] == (
        f"labelled: {24 * 12} of {2 * 24 * 24} pixels (25.0 %), on 1 of 2 slices; unlabelled pixels count in no score"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--background", "2", "--unlabelled", "0"], "give one"),
        (["--background", "2", "--slices", "1"], "no pixel of the slices --slices 1 picks is labelled"),
        (["--foreground", "color", "--background", "2"], "needs an integer foreground"),
    ],
)
def test_partly_labelled_truth_refusals_are_one_line(tmp_path: Path, capsys, args: list, message: str) -> None:
    truth = np.full((4, 24, 24), 255, np.uint8)
    truth[:, ::8] = 0
    layer = write_tif(tmp_path, "layer.tif", _painted(truth))
    code, out, err = run(capsys, layer, layer, "--foreground", "1", *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("dcn-ray: error:"), err
    assert message in err, err
