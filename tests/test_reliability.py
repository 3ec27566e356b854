"""Reliability through the CLI (issue 38): no output touches an input, whatever the command.

Every command that writes (``predict`` to TIFF and to OME-Zarr, ``inspect``, ``export``,
``report --atlas``, ``sweep``, ``suggest`` with either map format) is run against one table of hostile outputs: the output is an input
(the model file, the stack, the labels, the job's data), a symbolic or hard link to one, a folder
holding one, or a path inside an input zarr store. Each is refused in one line, exit 2, and no
file of the working folder changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import torch
import yaml
import zarr
from conftest import run_cli, small_job
from test_hostile_input import assert_one_error, model_file, process, snapshot

from dcn_ray.core import checkpoint
from dcn_ray.models.dcn import DCN

RNG = np.random.default_rng(38)
SPLIT = {"train": "0:2", "val": "2:3", "test": "3:4"}
SIDE = 128  # above twice the receptive radius of 4-8-16: export would otherwise refuse for that
#: What the one error line says, by the output's relation to the input (a folder output: a file is no folder).
SAYS = {
    "is": ("is ", "is a file, not a folder"),
    "symlink": ("is ", "is a file, not a folder"),
    "hardlink": ("is ", "is a file, not a folder"),
    "inside": ("lies inside", "contains"),
    "contains": ("contains", "lies in", "is a folder", "is a directory"),  # a file output is no folder
}


def _stack(path: Path, data: np.ndarray) -> Path:
    tifffile.imwrite(path, data, photometric="minisblack")  # whatever the name's suffix
    return path


def _images() -> np.ndarray:
    return RNG.integers(0, 256, (4, SIDE, SIDE), dtype=np.uint8)


def _labels() -> np.ndarray:
    stack = np.full((4, SIDE, SIDE), 255, np.uint8)
    stack[:, ::6] = 0
    return stack


def _zarr_store(path: Path, data: np.ndarray) -> Path:
    """A zarr group holding the array ``0``: the store is the input, whatever array is read."""
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", data=data, chunks=(1, SIDE, SIDE))
    return path


def _model(path: Path, images: str, labels: str) -> Path:
    model = DCN(kernels=(4, 8, 16), width=2, batch_norm=True, in_channels=1)
    data = {"images": images, "labels": labels, "split": SPLIT, "foreground": 255}
    payload = {
        "format": checkpoint.FORMAT,
        "model_kwargs": dict(model.kwargs),
        "config": {"data": data},
        "weights": model.state_dict(),
        "step": 0,
    }
    torch.save(payload, path)
    return path


def _fake_sweep(storage: Path, name: str, images: str, labels: str, tracking: Path) -> None:
    folder = storage / name
    folder.mkdir(parents=True)
    job = small_job(images, labels, name=name)
    record = {"name": name, "job": job, "tracking_uri": f"sqlite:///{tracking}", "experiment_id": "1"}
    record.update(parent_run_id="p", gpu=0.0, max_concurrent=1)
    (folder / "dcn_ray_sweep.json").write_text(json.dumps(record))
    row = {"k1": 4, "k2": 8, "k3": 16, "phase": "grid", "status": "finished", "best_val_iou": 0.5}
    row.update(trial_id="t1", mlflow_run_id="r1", seed=0)
    pq.write_table(pa.Table.from_pylist([row]), folder / "results.parquet")


# ----------------------------------------------------------------------------- the commands

#: The output's name where it matters (an OME-Zarr output ends in .zarr, a package in .zip).
SUFFIX = {
    "predict": ".tif",
    "predict-zarr": ".ome.zarr",
    "export": ".zip",
    "inspect": "",
    "atlas": "",
    "sweep": "",
    "suggest": "",
    "suggest-zarr": "",  # --format ome-zarr: the map as an OME-Zarr image in the folder
}


def _command(command: str, work: Path, out: Path, model: Path, images: Path, labels: Path) -> list:
    """The command line of ``command`` writing ``out`` from these inputs."""
    if command in ("predict", "predict-zarr"):
        return ["predict", model, images, out, "--no-tta", "--tile", "32", "--overlap", "8", "--labels", labels]
    if command == "inspect":
        return ["inspect", model, images, out, "--labels", labels, "--slices", "0:2"]
    if command == "export":
        return ["export", model, out]
    if command in ("suggest", "suggest-zarr"):
        form = ["--format", "ome-zarr"] if command == "suggest-zarr" else []
        return ["suggest", model, images, out, "--labels", labels, "--region", "32", *form]
    if command == "atlas":
        _fake_sweep(work / "runs", "done", str(images), str(labels), work / "mlflow.db")
        return ["report", "done", "--storage", work / "runs", "--atlas", out]
    job = small_job(images, labels, name=out.name, data={"split": SPLIT}, train={"crop": 16})
    (work / "job.yaml").write_text(yaml.safe_dump(job))
    return ["sweep", work / "job.yaml", "--storage", out.parent, "--tracking-uri", f"sqlite:///{work / 'ml.db'}"]


def _world(work: Path, command: str, victim: str, relation: str) -> list:
    """The inputs, with ``victim`` placed so that the output ``relation`` it; the command line."""
    suffix = SUFFIX[command]
    paths = {"model": work / "model.pt", "images": work / "images.tif", "labels": work / "labels.tif"}
    if relation == "is":
        paths[victim] = work / f"out{suffix}"
    if relation == "inside":
        paths[victim] = work / "store.zarr"
    if relation == "contains":
        (work / f"out{suffix}").mkdir()
        paths[victim] = work / f"out{suffix}" / paths[victim].name
    if relation == "inside" and victim != "model":
        _zarr_store(paths[victim], _images() if victim == "images" else _labels())
        source = f"{paths[victim]}/0"
    else:
        source = None
    for role in ("images", "labels"):
        if not (relation == "inside" and role == victim):
            _stack(paths[role], _images() if role == "images" else _labels())
    _model(paths["model"], source if victim == "images" and source else str(paths["images"]), str(paths["labels"]))
    given = {**paths, **({victim: source} if source else {})}
    out = work / f"out{suffix}"
    if relation == "inside":
        out = paths[victim] / f"out{suffix}"
    if relation in ("symlink", "hardlink"):
        target = paths[victim]
        (os.symlink if relation == "symlink" else os.link)(target, out)
    return _command(command, work, out, given["model"], given["images"], given["labels"])


CASES = [
    (command, victim, relation)
    for command in SUFFIX
    for victim in ("model", "images", "labels")
    for relation in ("is", "symlink", "hardlink", "inside", "contains")
    if not (relation == "inside" and victim == "model")
    if not (victim == "model" and command in ("atlas", "sweep"))  # no model among their inputs
    if not (relation == "contains" and command in ("inspect", "atlas"))  # a folder written into, not replaced
    if not (relation == "inside" and command == "inspect")  # it reads TIFF files only
]


@pytest.mark.parametrize("command, victim, relation", CASES)
def test_no_command_writes_over_into_or_around_its_inputs(
    tmp_path: Path, monkeypatch, capsys, command: str, victim: str, relation: str
) -> None:
    if command == "export":
        pytest.importorskip("bioimageio.spec")
    monkeypatch.chdir(tmp_path)
    args = _world(tmp_path, command, victim, relation)
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, args)
    assert_one_error(code, err)
    assert any(words in err for words in SAYS[relation]), err
    assert out == ""
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "ml.db").exists() and not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------- one channel, one line


def test_score_refuses_predictions_of_more_than_one_channel_naming_the_shape(tmp_path: Path, capsys) -> None:
    import h5py

    truth = _stack(tmp_path / "truth.tif", _labels())
    colour = RNG.integers(0, 256, (4, SIDE, SIDE, 3), dtype=np.uint8)
    _stack(tmp_path / "rgb.tif", colour)  # tifffile stores (..., 3) as RGB
    tifffile.imwrite(tmp_path / "rgba.tif", RNG.integers(0, 256, (4, SIDE, SIDE, 4), dtype=np.uint8), photometric="rgb")
    _stack(tmp_path / "four.tif", RNG.integers(0, 256, (2, 4, SIDE, SIDE), dtype=np.uint8))
    zarr.create_array(str(tmp_path / "rgb.zarr"), data=colour, zarr_format=2)
    with h5py.File(tmp_path / "p.h5", "w") as handle:
        handle.create_dataset("p", data=colour)
    cases = [
        ("rgb.tif", "(4, 128, 128, 3)"),
        ("rgba.tif", "(4, 128, 128, 4)"),
        ("four.tif", "(2, 4, 128, 128)"),
        ("rgb.zarr", "(4, 128, 128, 3)"),
        ("p.h5:/p", "(4, 128, 128, 3)"),
    ]
    for name, shape in cases:
        for extra in ([], ["--json"]):
            code, out, err = run_cli(capsys, ["score", f"{tmp_path}/{name}", truth, *extra])
            assert_one_error(code, err, name.split(":")[0], shape)
            assert out == ""


def _unet_file(path: Path) -> Path:
    from dcn_ray import models

    model = models.build("unet", depth=4, width=2)  # sides: multiples of 16
    payload = {"format": checkpoint.FORMAT, "model_family": "unet", "model_kwargs": dict(model.kwargs)}
    payload.update(config={"data": {"foreground": 255}}, weights=model.state_dict(), step=0)
    torch.save(payload, path)
    return path


PRE_WORK = {  # options refused before any line is printed (the model is read, nothing computed)
    "unet-tile": (["--tile", "40", "--overlap", "8"], "--tile 40", "unet"),
    "unet-overlap": (["--tile", "64", "--overlap", "8"], "--overlap 8", "unet"),
    "rgb-labels": (["--labels", "rgb.tif"], "rgb.tif", "dcn"),
    "workers": (["--workers", str(10**20)], "--workers", "dcn"),
    "many-workers": (["--workers", "100000"], "--workers", "dcn"),
}


@pytest.mark.parametrize("output", ["out.tif", "out.ome.zarr"])
@pytest.mark.parametrize("case", sorted(PRE_WORK) + ["cuda"])
def test_predict_checks_what_needs_no_work_before_printing_anything(
    tmp_path: Path, monkeypatch, capsys, case: str, output: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("a GPU is visible: --device cuda is valid here")
        options, problem, family = ["--device", "cuda"], "--device cuda", "dcn"
    else:
        options, problem, family = PRE_WORK[case]
    model = _unet_file(tmp_path / "unet.pt") if family == "unet" else _model(tmp_path / "m.pt", "i.tif", "l.tif")
    _stack(tmp_path / "in.tif", _images())
    _stack(tmp_path / "rgb.tif", RNG.integers(0, 256, (4, SIDE, SIDE, 3), dtype=np.uint8))
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, ["predict", model, "in.tif", output, "--no-tta", *options])
    assert_one_error(code, err, problem)
    assert out == "" and snapshot(tmp_path) == before


def _damaged_zarr(path: Path) -> str:
    zarr.create_array(str(path), data=_images(), chunks=(1, SIDE, SIDE), zarr_format=2)
    (path / "2.0.0").write_bytes(b"garbage" * 8)  # slice 2 of 4: found after two slices are done
    return str(path)


def _damaged_tiff(path: Path) -> str:
    tifffile.imwrite(path, _images(), photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[2].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("damaged", ["zarr", "tiff"])
@pytest.mark.parametrize("output", ["out.tif", "out.ome.zarr"])
def test_damage_found_mid_run_is_one_line_and_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch, capsys, damaged: str, output: str
) -> None:
    monkeypatch.chdir(tmp_path)
    model = _model(tmp_path / "m.pt", "i.tif", "l.tif")
    source = _damaged_zarr(tmp_path / "in.zarr") if damaged == "zarr" else _damaged_tiff(tmp_path / "in.tif")
    args = ["predict", model, source, output, "--no-tta", "--tile", "128", "--overlap", "16"]
    code, out, err = run_cli(capsys, [*args, "--chunk", "1,128,128"] if output.endswith("zarr") else args)
    assert code in (1, 2)
    assert len(err.splitlines()) == 1 and err.startswith("dcn-ray: "), err
    assert "in." in err and out == ""
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out")))
    if output == "out.tif":
        assert leftovers == []  # the temporary TIFF is removed
    else:
        assert leftovers == [] or "--resume" in err  # removed, or resumable as the line says


# ----------------------------------------------------------------------------- resume: one model, one setting


def _other_weights(path: Path, source: Path) -> Path:
    """The model of ``source`` (same family, kernels, keyword arguments) with other weights."""
    payload = torch.load(source, weights_only=True)
    payload["weights"] = {
        name: tensor + 0.01 if tensor.is_floating_point() else tensor for name, tensor in payload["weights"].items()
    }
    torch.save(payload, path)
    return path


RESUMED = {  # what differs from the interrupted run -> what the refusal names
    "weights": ([], "model_sha256"),
    "tta": (["--tta"], "tta"),
    "output": (["--output", "mask"], "output"),
    "tile": (["--tile", "128"], "tile"),
    "overlap": (["--overlap", "24"], "overlap"),
    "threshold": (["--threshold", "0.7"], "threshold"),
}


@pytest.mark.parametrize("change", sorted(RESUMED))
def test_resume_refuses_another_model_or_other_options_naming_what_differs(
    tmp_path: Path, monkeypatch, capsys, change: str
) -> None:
    from test_store_safety import interrupted

    monkeypatch.chdir(tmp_path)
    model = _model(tmp_path / "m.pt", "i.tif", "l.tif")
    source, output = tmp_path / "in.zarr", tmp_path / "out.ome.zarr"
    zarr.create_array(str(source), data=_images()[:, :40, :40], chunks=(1, 16, 16), zarr_format=2)
    interrupted(monkeypatch, capsys, model, source, output)
    written = snapshot(tmp_path)
    extra, problem = RESUMED[change]
    used = _other_weights(tmp_path / "other.pt", model) if change == "weights" else model
    args = ["predict", used, source, output, "--no-tta", "--tile", "64", "--overlap", "16"]
    args += ["--chunk", "1,16,16", "--block", "16", "--resume"]
    code, out, err = run_cli(capsys, [*args, *extra])
    assert_one_error(code, err, problem, "--resume")
    assert out == ""
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "other.pt"} == written


# ----------------------------------------------------------------------------- honest numbers


def _finished_sweep(storage: Path) -> None:
    """A sweep's record and results: the reference and one configuration on 6 paired seeds."""
    from dcn_ray.results.report import results_table

    reference = (4, 8, 16)

    def row(kernels, seed, score):
        identity = {"k1": kernels[0], "k2": kernels[1], "k3": kernels[2], "seed": seed, "phase": "grid"}
        return {**identity, "status": "finished", "test_iou": score, "trial_id": f"t{kernels}{seed}"}

    rows = [row(reference, s, 0.80 + 0.01 * (s % 3)) for s in range(6)]
    rows += [row((2, 8, 16), s, 0.80 + 0.01 * (s % 3) + (0.004 if s % 2 else -0.004)) for s in range(6)]
    folder = storage / "done"
    folder.mkdir(parents=True)
    record = {
        "name": "done",
        "job": small_job("images.tif", "labels.tif", name="done"),
        "tracking_uri": "sqlite:///x.db",
    }
    record.update(experiment_id="1", parent_run_id="p", gpu=0.0, max_concurrent=1)
    (folder / "dcn_ray_sweep.json").write_text(json.dumps(record))
    pq.write_table(results_table(rows, reference), folder / "results.parquet")


def test_report_effect_takes_finite_positive_effects_and_answers_any(tmp_path: Path, capsys) -> None:
    _finished_sweep(tmp_path / "runs")
    report = ["report", "done", "--storage", tmp_path / "runs"]
    for bad in ("inf", "-inf", "nan", "0", "-0.01", "1e400"):
        code, out, err = run_cli(capsys, [*report, f"--effect={bad}"])
        assert_one_error(code, err, "--effect", "finite positive")
        assert out == ""
    answers = {"0.005": "needs 9 seeds", "1e-9": "needs about 1.5e+14 seeds", "1e-300": "more than 1e+300 seeds"}
    answers.update({"1e9": "needs 2 seeds", "5e-324": "more than 1e+300 seeds"})
    for effect, answer in answers.items():
        code, out, err = run_cli(capsys, [*report, "--effect", effect])
        assert code == 0, err
        assert answer in out, out


def test_preset_auto_never_rounds_a_foreground_onto_its_threshold(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    labels = np.zeros((6, 50, 50), np.uint8)
    labels[:4].reshape(-1)[:2998] = 255  # the training split (0:4): 29.98 % foreground
    labels[4:, :25] = 255
    _stack(tmp_path / "labels.tif", labels)
    _stack(tmp_path / "images.tif", RNG.integers(0, 256, (6, 50, 50), dtype=np.uint8))
    job = small_job("images.tif", "labels.tif", data={"split": {"train": "0:4", "val": "4:6"}}, train={"crop": 16})
    job["train"]["preset"] = "auto"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code, _, err = run_cli(capsys, ["sweep", "job.yaml", "--dry-run"])
    assert code == 0, err
    assert "foreground is 29.98 %, below 30 %" in err, err


# ----------------------------------------------------------------------------- diverged models are never crowned


def test_a_diverging_training_fails_naming_it(synthetic_stack) -> None:
    from conftest import train_job

    from dcn_ray.core.dataset import load_data
    from dcn_ray.job.config import job_from_dict

    job = job_from_dict(small_job(*synthetic_stack, train={"lr": 1e9, "steps": 4, "eval_every": 2}))
    with pytest.raises(checkpoint.Diverged, match=r"diverged by step 2: .* NaN or infinite \(train.lr 1e\+09"):
        train_job(job, (4, 8, 16), load_data(job.data))


def _sweep_with_model(
    storage: Path, tracking: Path, empty_store: Path, weights_poisoned: bool, *, diverged: bool = False
) -> None:
    """A finished sweep whose one trial has an MLflow run holding checkpoint/model.pt (a copied empty store)."""
    from conftest import sqlite_copy
    from mlflow.tracking import MlflowClient

    uri = sqlite_copy(empty_store, tracking.parent, tracking.name)
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(tracking.parent / "artifacts"))
    run = client.create_run(experiment, tags={"diverged": "training diverged by step 2"} if diverged else {})
    model = model_file(tracking.parent, poison=weights_poisoned)
    client.log_artifact(run.info.run_id, str(model), "checkpoint")
    client.set_terminated(run.info.run_id)
    folder = storage / "done"
    folder.mkdir(parents=True)
    record = {"name": "done", "job": small_job("images.tif", "labels.tif", name="done"), "tracking_uri": uri}
    record.update(experiment_id=experiment, parent_run_id="p", gpu=0.0, max_concurrent=1)
    (folder / "dcn_ray_sweep.json").write_text(json.dumps(record))
    row = {"k1": 4, "k2": 8, "k3": 16, "phase": "grid", "status": "finished", "best_val_iou": 0.5}
    row.update(trial_id="t1", mlflow_run_id=run.info.run_id, seed=0)
    pq.write_table(pa.Table.from_pylist([row]), folder / "results.parquet")


@pytest.mark.parametrize("broken", ["nan-weights", "diverged-tag"])
def test_register_refuses_a_best_trial_that_diverged(
    tmp_path: Path, empty_store: Path, monkeypatch, capsys, broken: str
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    tracking = tmp_path / "mlflow.db"
    _sweep_with_model(
        tmp_path / "runs", tracking, empty_store, broken == "nan-weights", diverged=broken == "diverged-tag"
    )
    capsys.readouterr()  # MLflow's own lines while the store was made
    code, out, err = run_cli(capsys, ["register", "done", "best", "--storage", tmp_path / "runs"])
    assert_one_error(code, err, "diverge", "nothing registered")
    assert out == ""
    assert MlflowClient(f"sqlite:///{tracking}").search_registered_models() == []


@pytest.mark.parametrize(
    "name", ["m@x", "a/b", "a:b", "q?x", "h#x", "p%20", " lead", "trail ", "", ".", "..", "x" * 256, "tab\tx"]
)
def test_register_refuses_names_that_models_uris_cannot_carry(tmp_path: Path, capsys, name: str) -> None:
    code, out, err = run_cli(capsys, ["register", "done", name, "--storage", tmp_path / "runs"])
    assert_one_error(code, err, "MODEL_NAME")
    assert out == "" and not (tmp_path / "runs").exists()


def test_registered_names_round_trip_through_models_uris() -> None:
    from mlflow.store.artifact.utils.models import _parse_model_uri

    for name in ("best", "dcn v2", "dcn-ray_model.1", "Zellkern-Ä"):
        assert _parse_model_uri(f"models:/{name}/3").name == name
        assert _parse_model_uri(f"models:/{name}@champion").name == name


@pytest.mark.integration
def test_a_diverged_trial_ends_failed_says_so_in_its_run_and_is_never_registered(
    synthetic_stack, tmp_path: Path, monkeypatch, capsys
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    raw = small_job(*synthetic_stack, name="nan", train={"lr": 1e9, "steps": 4, "eval_every": 2})
    raw["sweep"] = {"kernels": [[4, 8, 16]], "resources": {"gpu": 0, "cpu": 1}, "max_failures": 0}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = run_cli(capsys, ["sweep", "job.yaml", "--storage", "runs"])
    assert code == 1, err
    assert "diverged" in err and "1 trial(s) failed" in err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = [
        r
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
        if "diverged" in r.data.tags
    ]
    assert run.info.status == "FAILED" and "train.lr 1e+09" in run.data.tags["diverged"]
    code, _, err = run_cli(capsys, ["register", "nan", "best", "--storage", "runs"])
    assert_one_error(code, err, "no finished trial")
    assert client.search_registered_models() == []


# ----------------------------------------------------------------------------- the grid, checked as whole trials

GRIDS = {  # a grid its trials cannot run -> what the one line names
    "crop-above-slices": ({"train.crop": [16, 256]}, "train.crop=256 is larger than the slices"),
    "missing-data": ({"data.images": ["images.tif", "gone.tif"]}, "gone.tif: no such file"),
    "batch-beyond-memory": ({"train.batch_size": [2, 10**7]}, "train.batch_size=10000000"),
    "one-value-twice": ({"train.lr": [0.001, "1e-3"]}, "lists one value twice"),
    "same-value-twice": ({"train.lr": [0.001, 0.001]}, "lists a value twice"),
    "mapping-values": ({"data.synthetic": [{"size": 64}, {"size": 32}]}, "is a mapping"),
    "slash": ({"data.images": ["images.tif", "./images.tif"]}, "cannot be part of a configuration's name"),
    "unicode": ({"train.loss": ["dice", "dïce"]}, "cannot be part of a configuration's name"),
    "very-long": ({"train.loss": ["dice", "x" * 300]}, "cannot be part of a configuration's name"),
    "same-name": ({"train.lr": [0.001, 0.0010000001]}, "would both be named '4-8-16_train.lr=0.001'"),
    "every-value-fails": ({"train.crop": [256, 512]}, "larger than the slices"),
    "too-many-trials": ({"train.lr": [0.001 * (i + 1) for i in range(1000)]}, "at most 100000"),
}


def _grid_job(folder: Path, grid: dict, **sweep) -> Path:
    _stack(folder / "images.tif", RNG.integers(0, 256, (6, 64, 64), dtype=np.uint8))
    labels = np.full((6, 64, 64), 255, np.uint8)
    labels[:, ::6] = 0
    _stack(folder / "labels.tif", labels)
    job = small_job("images.tif", "labels.tif", name="g", data={"split": {"train": "0:4", "val": "4:6"}})
    job["train"]["crop"] = 16
    job["sweep"] = {"kernels": [[4, 8, 16]], "resources": {"gpu": 0, "cpu": 1}, "grid": grid, **sweep}
    (folder / "job.yaml").write_text(yaml.safe_dump(job, allow_unicode=True))
    return folder / "job.yaml"


@pytest.mark.parametrize("case", sorted(GRIDS))
def test_a_grid_its_trials_cannot_run_is_refused_by_the_dry_run_and_the_sweep_alike(
    tmp_path: Path, monkeypatch, capsys, case: str
) -> None:
    monkeypatch.chdir(tmp_path)
    grid, problem = GRIDS[case]
    sweep = {"kernels": [[4, 8, 16]] * 1, "seeds": 101} if case == "too-many-trials" else {}
    _grid_job(tmp_path, grid, **sweep)
    before = snapshot(tmp_path)
    for extra in (["--dry-run"], ["--storage", "runs"]):
        code, out, err = run_cli(capsys, ["sweep", "job.yaml", *extra])
        assert_one_error(code, err, problem)
        assert out == ""
        assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    code, _, err = run_cli(capsys, ["resume", "g", "--storage", "runs"])  # no state: one line, no traceback
    assert_one_error(code, err, "g")


def test_the_largest_grid_answers_fast(tmp_path: Path, monkeypatch, capsys) -> None:
    import time

    monkeypatch.chdir(tmp_path)
    values = {"train.lr": [0.0001 * (i + 1) for i in range(100)], "train.steps": list(range(2, 102))}
    _grid_job(tmp_path, values)  # 10^4 combinations, the most a grid may make
    started = time.perf_counter()
    code, out, err = run_cli(capsys, ["sweep", "job.yaml", "--dry-run"])
    seconds = time.perf_counter() - started
    assert code == 0, err
    assert out.splitlines()[-1].startswith("10000 grid trials") and seconds < 30, seconds


def test_a_dry_run_says_label_warnings_only_when_no_check_fails(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _grid_job(tmp_path, {})
    labels = np.full((6, 64, 64), 255, np.uint8)
    labels[:, ::6] = 0
    labels[4:] = 0  # the validation slices without foreground, and a test slice inside the training split
    _stack(tmp_path / "labels.tif", labels)
    split = "--set=data.split={train: '0:4', val: '4:6', test: '3:4'}"
    done = process(["sweep", "job.yaml", "--dry-run", split, "--set", "sweep.resources.cpu=100"], tmp_path)
    assert_one_error(done.returncode, done.stderr, "sweep.resources")  # a process: the log lines reach stderr
    assert done.stdout == ""
    code, out, err = run_cli(capsys, ["sweep", "job.yaml", "--dry-run", split])
    assert code == 0 and "warning: slices 4 (val), 5 (val) without any foreground" in err, err


# ----------------------------------------------------------------------------- a killed driver leaves no Ray


@pytest.mark.integration
def test_sigkill_of_a_predict_workers_driver_leaves_no_ray_process(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from dcn_ray.runtime import _descendants, _start_time

    model = _model(tmp_path / "m.pt", "i.tif", "l.tif")
    _stack(tmp_path / "in.tif", RNG.integers(0, 256, (200, SIDE, SIDE), dtype=np.uint8))
    args = [
        sys.executable,
        "-m",
        "dcn_ray",
        "predict",
        model,
        "in.tif",
        "out.tif",
        "--workers",
        "1",
        "--tile",
        "128",
        "--overlap",
        "16",
    ]
    driver = subprocess.Popen(list(map(str, args)), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            for pid in _descendants(driver.pid):
                seen.setdefault(pid, _start_time(pid) or "")
            commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in seen if _start_time(pid) == seen[pid]]
            if any(b"PredictorWorker" in command for command in commands):  # an actor predicts
                break
            time.sleep(0.2)
        assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
        assert any(b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes() for p in seen if _start_time(p) == seen[p])
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = [pid for pid, start in seen.items() if start and _start_time(pid) == start]
            left = [p for p in left if b"dcn_ray.runtime import watch" not in Path(f"/proc/{p}/cmdline").read_bytes()]
            if not left:
                break
            time.sleep(0.5)
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]
    finally:
        for pid, start in seen.items():  # whatever happens, end what this test's driver started
            if start and _start_time(pid) == start:
                os.kill(pid, signal.SIGKILL)


def test_predict_of_a_registered_model_shows_no_download_bar(tmp_path: Path, empty_store: Path) -> None:
    from conftest import sqlite_copy
    from mlflow.tracking import MlflowClient

    uri = sqlite_copy(empty_store, tmp_path)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(model_file(tmp_path)), "checkpoint")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("m")
    client.create_model_version("m", f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id)
    _stack(tmp_path / "in.tif", _images()[:2])
    args = ["predict", "models:/m/1", "in.tif", "out.tif", "--tracking-uri", uri, "--no-tta", "--tile", "256"]
    done = process([*args, "--overlap", "112"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Downloading" not in done.stderr
    assert [line.split(" ", 1)[0] for line in done.stderr.splitlines()] == ["model", "wrote"], done.stderr
