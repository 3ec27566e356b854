"""Training presets (issue 27): ``auto`` picks the sparse recipe or the paper's by the training split's
foreground, given keys win, Table 1 keeps the paper's, and what a job trains with is what it says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import small_job, train_job

from dcn_ray.core.dataset import load_data
from dcn_ray.errors import InputError
from dcn_ray.io.synth import write_synthetic
from dcn_ray.job.config import job_from_dict
from dcn_ray.job.job_file import load_job
from dcn_ray.job.sweep_grid import with_params
from dcn_ray.job.train_config import PRESET_KEYS, PRESETS, SPARSE_BELOW, TrainConfig, resolve_training
from dcn_ray.tune.checks import check_data

REPO = Path(__file__).resolve().parents[1]


def preset_values(train: TrainConfig) -> dict:
    return {key: getattr(train, key) for key in PRESET_KEYS}


@pytest.fixture(scope="module")
def organelles(tmp_path_factory) -> tuple[Path, Path]:
    """A sparse foreground (about 4-5 % of the pixels)."""
    return write_synthetic(tmp_path_factory.mktemp("organelles"), slices=12, size=128, seed=0, task="organelles")


def test_auto_trains_sparse_foreground_with_the_sparse_recipe_and_dense_with_the_papers() -> None:
    sparse = resolve_training(TrainConfig(), SPARSE_BELOW / 2)
    dense = resolve_training(TrainConfig(), SPARSE_BELOW)  # the threshold itself is dense
    assert sparse.preset == "sparse" and preset_values(sparse) == PRESETS["sparse"]
    assert dense.preset == "paper" and preset_values(dense) == PRESETS["paper"]
    assert PRESETS["sparse"] != PRESETS["paper"]
    assert resolve_training(sparse, 0.9) == sparse  # decided once: a decided config stays as it is


def test_keys_given_win_and_named_presets_ignore_the_data() -> None:
    given = resolve_training(TrainConfig(loss="ce", warmup=5), 0.05)
    assert (given.preset, given.loss, given.warmup, given.schedule) == ("sparse", "ce", 5, "cosine")
    assert preset_values(resolve_training(TrainConfig(preset="paper"), 0.01)) == PRESETS["paper"]
    assert preset_values(resolve_training(TrainConfig(preset="sparse", steps=400), 0.99)) == PRESETS["sparse"]
    short = resolve_training(TrainConfig(preset="sparse", steps=12), 0.5)
    assert short.warmup == 1  # the recipe's 20 warmup steps, at most a tenth of a short run


def test_the_default_is_auto_and_a_bad_preset_is_named(synthetic_stack) -> None:
    assert job_from_dict(small_job(*synthetic_stack)).train.preset == "auto"
    assert not job_from_dict(small_job(*synthetic_stack)).train.resolved  # decided with the data
    with pytest.raises(InputError, match="train.preset must be one of paper, sparse, auto"):
        job_from_dict(small_job(*synthetic_stack, train={"preset": "nnunet"}))
    with pytest.raises(InputError, match="train.preset"):
        job_from_dict(small_job(*synthetic_stack, train={"preset": None}))


def test_a_job_gets_the_training_its_data_calls_for(synthetic_stack, organelles) -> None:
    for (images, labels), preset in ((organelles, "sparse"), (synthetic_stack, "paper")):
        job = job_from_dict(small_job(images, labels))
        dataset = load_data(job.data)
        assert (dataset.train_foreground < SPARSE_BELOW) == (preset == "sparse")
        settled = job.trained_on(dataset.train_foreground).train
        warmup = min(PRESETS[preset]["warmup"], job.train.steps // 10)
        assert settled.preset == preset and preset_values(settled) == {**PRESETS[preset], "warmup": warmup}
        assert f"train.preset auto -> {preset}" in check_data(job)[0]
    pinned = job_from_dict(small_job(*organelles, train={"preset": "paper"}))
    assert pinned.trained_on(load_data(pinned.data).train_foreground).train.preset == "paper"
    assert "train.preset paper (" in check_data(pinned)[0]


def test_auto_on_sparse_data_trains_exactly_the_sparse_recipe(organelles) -> None:
    base = small_job(*organelles, train={"steps": 4, "eval_every": 4, "crop": 32, "seed": 3})
    auto = job_from_dict(base)
    explicit = job_from_dict({**base, "train": {**base["train"], **PRESETS["sparse"], "warmup": 0}})
    paper = job_from_dict({**base, "train": {**base["train"], "preset": "paper"}})
    dataset = load_data(auto.data)
    weights = [train_job(job, (4, 8, 16), dataset).model["weights"] for job in (auto, explicit, paper)]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=0)
    assert any(not torch.equal(weights[2][name], tensor) for name, tensor in weights[0].items())


def test_a_grid_over_the_preset_gives_each_variant_its_own_training(organelles) -> None:
    job = job_from_dict(small_job(*organelles))
    dataset = load_data(job.data)
    for preset in ("paper", "sparse"):
        variant = with_params(job, {"train.preset": preset})
        warmup = min(PRESETS[preset]["warmup"], job.train.steps // 10)
        assert preset_values(variant.trained_on(dataset.train_foreground).train) == {
            **PRESETS[preset],
            "warmup": warmup,
        }


def test_table1_and_the_cpu_studies_keep_the_papers_training() -> None:
    for name in ("table1.yaml", "isbi2012-cpu.yaml", "isbi2012-guided.yaml"):
        settled = resolve_training(load_job(REPO / "jobs" / name).train, 0.01)  # even on a sparse foreground
        assert settled.preset == "paper" and preset_values(settled) == PRESETS["paper"], name
