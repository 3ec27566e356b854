"""``model.kernels``: the DCN's kernels are a key of its model section, like a U-Net's ``model.depth``.

``sweep.kernels`` lists the values of that key (one configuration each); ``--set model.kernels=...``
and ``sweep.grid: {model.kernels: [...]}`` vary it as any key. No Ray, no torch beyond building a model.
"""

from __future__ import annotations

import pytest

from dcn_ray.errors import InputError
from dcn_ray.job.config import job_from_dict
from dcn_ray.job.job_file import load_job
from dcn_ray.job.sweep_grid import trial_job, variants


def raw_job(**sections) -> dict:
    raw = {"name": "k", "data": {"images": "/nowhere/i.tif", "labels": "/nowhere/l.tif"}, "model": {"width": 4}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def test_model_kernels_is_the_dcn_key_and_builds_the_model():
    from dcn_ray.core.train import build_model

    job = job_from_dict(raw_job(model={"kernels": [2, 8, 16]}))
    assert job.model.kernels == (2, 8, 16) and job.flat()["model.kernels"] == [2, 8, 16]
    assert [v.name for v in variants(job)] == ["2-8-16"]  # a job's kernels alone: the sweep runs them
    model = build_model(job.model, seed=0)  # read from the model section
    assert tuple(model.kwargs["kernels"]) == (2, 8, 16)
    assert tuple(build_model(job.model, (4, 8, 12), seed=0).kwargs["kernels"]) == (4, 8, 12)  # given in its place
    assert job_from_dict(raw_job()).model.kernels == (4, 8, 16)  # the paper's by default
    with pytest.raises(InputError, match="model.kernels: k3=6 is invalid for branch F3"):
        job_from_dict(raw_job(model={"kernels": [4, 8, 6]}))
    with pytest.raises(InputError, match="model.kernels applies to the DCN only, not to unet"):
        job_from_dict(raw_job(model={"family": "unet", "kernels": [2, 8, 16]}))


def test_set_model_kernels_and_sweep_kernels_list_its_values(tmp_path):
    file = tmp_path / "job.yaml"
    file.write_text("name: k\ndata: {images: i.tif, labels: l.tif}\nmodel: {width: 4}\n")
    job = load_job(file, ["model.kernels=[2,8,16]"])
    assert [v.name for v in variants(job)] == ["2-8-16"]
    listed = load_job(file, ["sweep.kernels=[[4,8,16],[2,8,16]]"])
    found = variants(listed)
    assert [v.name for v in found] == ["4-8-16", "2-8-16"]
    assert [v.settings for v in found] == [
        {"model.family": "dcn", "model.kernels": (4, 8, 16)},
        {"model.family": "dcn", "model.kernels": (2, 8, 16)},
    ]
    trained = trial_job(listed, "dcn", (("model.kernels", (2, 8, 16)),), 3)
    assert trained.model.kernels == (2, 8, 16) and trained.train.seed == 3


def test_a_grid_over_model_kernels_names_its_configurations_as_sweep_kernels_does():
    grid = {"model.kernels": [[4, 8, 16], [2, 8, 16]], "train.lr": [0.001, 0.003]}
    found = variants(job_from_dict(raw_job(sweep={"grid": grid})))
    assert [v.name for v in found] == [  # the grid's first axis outermost
        "4-8-16_train.lr=0.001", "4-8-16_train.lr=0.003", "2-8-16_train.lr=0.001", "2-8-16_train.lr=0.003"
    ]  # fmt: skip
    assert found[2].settings == {"model.family": "dcn", "model.kernels": (2, 8, 16), "train.lr": 0.001}
    families = {"model.family": ["dcn", "unet"], "model.kernels": [[4, 8, 16], [2, 8, 16]]}
    assert [v.name for v in variants(job_from_dict(raw_job(sweep={"grid": families})))] == ["4-8-16", "2-8-16", "unet"]
    with pytest.raises(InputError, match=r"sweep.grid \(model.kernels=4-8-6\): model.kernels: k3=6"):
        variants(job_from_dict(raw_job(sweep={"grid": {"model.kernels": [[4, 8, 6]]}})))
    both = raw_job(sweep={"grid": {"model.kernels": [[2, 8, 16]]}, "kernels": [[4, 8, 12]]})
    with pytest.raises(InputError, match="sweep.grid varies model.kernels and sweep.kernels lists other kernels"):
        variants(job_from_dict(both))
