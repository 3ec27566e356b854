"""The held-out split: each trial's test score, the split a table reports, and its baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_job

from dcn_ray.core.dataset import load_data
from dcn_ray.core.evaluation import reported_split, score_probabilities
from dcn_ray.core.metrics import iou
from dcn_ray.core.scores import keys_of, segmentation_scores
from dcn_ray.core.train import build_model, evaluate, score_test_split
from dcn_ray.errors import InputError
from dcn_ray.job.config import job_from_dict

pytestmark = pytest.mark.usefixtures("two_threads")

SPLITS = {"train": "0:6", "val": "7:9", "test": "10:12"}


def test_test_split_is_scored_with_the_given_model(synthetic_stack):
    job = job_from_dict(small_job(*synthetic_stack, data={"split": SPLITS}))
    dataset = load_data(job.data)
    torch.manual_seed(0)
    model = build_model(job.model, (4, 8, 16), seed=job.train.seed)
    scores = score_test_split(model, dataset, torch.device("cpu"))
    assert dataset.target == "cells"  # the synthetic cells: most pixels are foreground
    assert tuple(scores) == tuple(f"test_{key}" for key in keys_of("cells"))
    expected = evaluate(model, torch.from_numpy(dataset.test_images), dataset.test_masks, target=dataset.target)
    assert scores == {f"test_{key}": value for key, value in expected.items()}
    assert scores != {f"test_{key}": value for key, value in evaluate(
        model, torch.from_numpy(dataset.val_images), dataset.val_masks
    ).items()}  # fmt: skip
    without = load_data(job_from_dict(small_job(*synthetic_stack)).data)
    assert score_test_split(model, without, torch.device("cpu")) == {}


def test_reported_split_is_test_when_there_is_one_with_its_baselines(synthetic_stack):
    dataset = load_data(job_from_dict(small_job(*synthetic_stack, data={"split": SPLITS})).data)
    evaluation = reported_split(dataset)
    assert evaluation["split"] == "test" and evaluation["slices"] == [10, 11]
    everything = evaluation["baselines"]["all_foreground"]
    assert everything == segmentation_scores(np.ones_like(dataset.test_masks), dataset.test_masks)
    assert everything["iou"] == pytest.approx(dataset.test_masks.mean())
    assert evaluation["baselines"]["all_background"]["iou"] == 0.0
    validation = reported_split(load_data(job_from_dict(small_job(*synthetic_stack)).data))
    assert validation["split"] == "validation" and validation["slices"] == [10, 11]


def test_score_probabilities_adds_the_floor_and_refuses_other_shapes():
    truth = np.zeros((2, 8, 8), bool)
    truth[:, 1:4, 1:7] = True
    probability = truth.astype(np.float32) * 0.8
    scores = score_probabilities(probability, truth)
    assert scores["iou"] == 1.0 and scores["slices"] == 2
    assert scores["baseline_all_foreground_iou"] == pytest.approx(iou(np.ones_like(truth), truth))
    with pytest.raises(InputError, match="shape"):
        score_probabilities(probability[:1], truth)
