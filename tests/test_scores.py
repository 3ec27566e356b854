"""The score registry (dcn_ray.core.scores): what training computes is what reports and sources name."""

from __future__ import annotations

import numpy as np

from dcn_ray.core import metrics, scores
from dcn_ray.core.scores import segmentation_scores
from dcn_ray.results import report
from dcn_ray.track import sources
from dcn_ray.tune.spec import METRIC


def test_the_registry_names_every_score_the_metrics_compute() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((2, 32, 32)) > 0.3
    keys = []
    for target in scores.TARGETS:
        computed = segmentation_scores(rng.random((2, 32, 32)) > 0.3, truth, target=target)
        assert tuple(computed) == scores.keys_of(target)
        keys += [key for key in computed if key not in keys]
    assert sorted(keys, key=scores.SCORE_KEYS.index) == list(scores.SCORE_KEYS)  # every entry computed somewhere
    assert report.TEST_COLUMNS == tuple(f"test_{key}" for key in scores.SCORE_KEYS)
    assert set(sources.VERSION_SCORES) == {METRIC, *report.TEST_COLUMNS}
    assert METRIC == scores.BEST_VAL_HEADLINE == "best_val_iou"
    lower = [s.key for s in scores.SCORES if s.higher_is_better is False]
    assert lower == ["pixel_error"]
    counts = [s.key for s in scores.SCORES if s.higher_is_better is None]
    assert counts == ["objects_true", "objects_pred"]


def test_each_entry_s_function_computes_its_score_as_the_joint_scoring_does() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random((2, 40, 40)) > 0.25
    pred = truth ^ (rng.random((2, 40, 40)) > 0.9)
    computed = segmentation_scores(pred, truth)
    alone = {s.key: s.function(pred, truth) for s in scores.SCORES if s.function is not None and "cells" in s.targets}
    assert alone == {key: computed[key] for key in alone}
    assert computed["vrand"], computed["vinfo"] == metrics.rand_info_scores(pred, truth)
    assert computed["iou"] < 1.0 and computed["pixel_error"] > 0.0


def test_direction_decides_what_is_better_and_the_searcher_s_mode() -> None:
    error = next(s for s in scores.SCORES if s.key == "pixel_error")
    assert error.better(0.1, 0.2) and not error.better(0.2, 0.1)
    assert scores.HEADLINE_SCORE.better(0.9, 0.8) and not scores.HEADLINE_SCORE.better(0.8, 0.8)
    assert scores.HEADLINE_MODE == "max"


def test_labels_read_as_people_write_them() -> None:
    assert scores.label("test_vrand") == "test V_rand at 0.5"
    assert scores.label("test_object_f1") == "test object F1"
    assert scores.label("best_val_iou") == "best val IoU"
    assert scores.label("val_membrane_iou") == "val membrane IoU"
    assert scores.label("vs_reference") == "vs_reference"
