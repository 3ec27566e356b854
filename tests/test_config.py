from pathlib import Path

import pytest
import yaml

from dcn_ray.errors import InputError
from dcn_ray.job.config import JobConfig, job_from_dict
from dcn_ray.job.job_file import load_job, parse_override
from dcn_ray.kernels import TABLE1

REPO = Path(__file__).resolve().parent.parent
PAPER_TABLE1 = list(TABLE1)


def write_job(tmp_path: Path, job: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_table1_job_holds_exactly_the_paper_grid():
    job = load_job(REPO / "jobs" / "table1.yaml")
    assert list(job.sweep.kernels) == PAPER_TABLE1
    assert job.model.width == 64
    # z-blocked splits with a one-slice gap between blocks (train 0-19, val 21-23, test 25-29)
    assert (job.data.split.train, job.data.split.val, job.data.split.test) == ("0:20", "21:24", "25:30")


def test_data_paths_are_relative_to_the_job_file_and_overrides_to_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    path = write_job(tmp_path / "jobs", {"data": {"images": "../d/img.tif", "labels": "/abs/lab.tif"}})
    job = load_job(path)
    assert job.data.images == str(tmp_path / "d" / "img.tif")
    assert job.data.labels == "/abs/lab.tif"
    monkeypatch.chdir(tmp_path)
    job = load_job(path, ["data.images=other.tif"])
    assert job.data.images == str(tmp_path / "other.tif")


def test_overrides_are_parsed_as_yaml_and_typed(tmp_path):
    path = write_job(tmp_path, {"data": {"images": "a.tif", "labels": "b.tif"}})
    job = load_job(
        path,
        [
            "train.steps=40",
            "train.lr=1e-2",
            "sweep.kernels=[[4,8,16],[2,8,16]]",
            "sweep.resources.gpu=0.5",
            "model.batch_norm=false",
        ],
    )
    assert job.train.steps == 40 and job.train.lr == 0.01
    assert job.sweep.kernels == ((4, 8, 16), (2, 8, 16))
    assert job.sweep.resources.gpu == 0.5 and job.model.batch_norm is False
    assert isinstance(job, JobConfig)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "unknown job key 'train.stepz'"),
        ("nope=1", "unknown job key 'nope'"),
        ("train.steps=abc", "train.steps must be an integer"),
        ("train.steps=2.5", "train.steps must be an integer"),
        ("model.batch_norm=3", "model.batch_norm must be true or false"),
        ("sweep.kernels=[[4,8,6]]", "k3=6 is invalid for branch F3"),
        ("sweep.kernels=[[1,8,16]]", "k1=1 is invalid for branch F1"),
        ("sweep.kernels=[[4,8]]", "sweep.kernels[0]"),
        ("train.crop=30", "train.crop must be a positive multiple of 8"),
        ("train.optimizer=lbfgs", "train.optimizer"),
        ("sweep.resources.gpu=-1", "sweep.resources.gpu"),
        ("train=3", "train must be a mapping"),
        ("novalue", "--set expects key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, override, message):
    path = write_job(tmp_path, {"data": {"images": "a.tif", "labels": "b.tif"}})
    with pytest.raises(InputError, match=pytest.importorskip("re").escape(message)):
        load_job(path, [override])


def test_bad_job_files(tmp_path):
    with pytest.raises(InputError, match="job file not found"):
        load_job(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(InputError, match="not readable YAML"):
        load_job(bad)
    bad.write_text("- a list")
    with pytest.raises(InputError, match="must hold a mapping"):
        load_job(bad)


def test_round_trip_through_dict_and_flat_keys():
    job = job_from_dict({"data": {"images": "/a.tif", "labels": "/b.tif"}, "sweep": {"kernels": [[4, 8, 16]]}})
    again = job_from_dict(job.to_dict())
    assert again == job
    flat = job.flat()
    assert flat["train.steps"] == job.train.steps and flat["sweep.resources.gpu"] == 1.0
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
