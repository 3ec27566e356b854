"""Reliability through the CLI (issue 38): no output touches an input, whatever the command.

Every command that writes (``predict`` to TIFF and to OME-Zarr, ``inspect``, ``export``,
``report --atlas``, ``sweep``) is run against one table of hostile outputs: the output is an input
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
from test_hostile_input import assert_one_error, snapshot

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
SUFFIX = {"predict": ".tif", "predict-zarr": ".ome.zarr", "export": ".zip", "inspect": "", "atlas": "", "sweep": ""}


def _command(command: str, work: Path, out: Path, model: Path, images: Path, labels: Path) -> list:
    """The command line of ``command`` writing ``out`` from these inputs."""
    if command in ("predict", "predict-zarr"):
        return ["predict", model, images, out, "--no-tta", "--tile", "32", "--overlap", "8", "--labels", labels]
    if command == "inspect":
        return ["inspect", model, images, out, "--labels", labels, "--slices", "0:2"]
    if command == "export":
        return ["export", model, out]
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
