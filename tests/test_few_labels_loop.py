"""The loop a lab runs with few labels, through the unchanged commands: label a few slices (or
scribble) as napari saves its labels layer (0 unpainted), `dcn-ray sweep`, `dcn-ray suggest`, label
what it suggests, sweep again; and napari opens suggest's map over the stack (TIFF and OME-Zarr)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import run_cli, small_job
from mlflow.tracking import MlflowClient
from napari_view import needs_napari, run_viewer
from processes import SweepDriver

from dcn_ray.core.scribbles import painted_slices, scribbles
from dcn_ray.io.tiff import read_labels

pytestmark = pytest.mark.integration
SPLIT = {"train": "0:8", "val": "9:12"}  # validation: slice 10 labelled, 9 and 11 not (a warning names them)


def _sweep(capsys, name: str, images: Path, labels: Path, folder: Path, uri: str) -> tuple[str, dict]:
    """`dcn-ray sweep FOLDER/job.yaml --storage FOLDER/runs`: its stderr and the child run's metrics.

    With ``capsys`` the command runs in this process, on ``module_ray`` (no Python and Ray start-up of
    its own); without, in a process of its own, its log lines on its stderr as a user sees them.
    """
    raw = small_job(
        images, labels, name=name, data={"foreground": 1, "background": 2, "split": SPLIT},
        train={"steps": 12, "eval_every": 6, "crop": 48, "batch_size": 4},
        sweep={"kernels": [[4, 8, 16]], "resources": {"gpu": 0, "cpu": 1}},
        tracking={"uri": uri, "experiment": name},
    )  # fmt: skip
    folder.mkdir()
    if capsys is None:
        with SweepDriver(raw, folder, folder / "runs") as driver:
            code, err = driver.finish(timeout=600)
    else:
        (folder / "job.yaml").write_text(yaml.safe_dump(raw))
        code, _, err = run_cli(capsys, ["sweep", folder / "job.yaml", "--storage", folder / "runs"])
    assert code == 0, err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name).experiment_id
    (child,) = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
    assert child.info.status == "FINISHED"
    return err, child.data.metrics


def test_label_a_few_slices_sweep_suggest_label_sweep_again(
    module_ray, synthetic_stack, mlflow_server, tmp_path, capsys
):
    images = synthetic_stack[0]
    truth = read_labels(synthetic_stack[1], 255)
    first = tmp_path / "labels-1.tif"  # napari's labels layer: 3 of 12 slices painted
    tifffile.imwrite(first, painted_slices(truth, (1, 5, 10)))
    err, metrics = _sweep(None, "few-1", images, first, tmp_path / "round1", mlflow_server.uri)
    assert "data.split.val: slice(s) [9, 11] hold no labelled pixel and are not scored" in err
    assert 0.0 < metrics["best_val_iou"] <= 1.0 and "val_vrand" in metrics

    out = tmp_path / "suggested"
    args = ["suggest", "sweep:few-1", images, out, "--storage", tmp_path / "round1" / "runs", "--labels", first]
    code, stdout, err = run_cli(capsys, [*args, "--top", "4", "--region", "64"])
    assert code == 0, err
    ranking = json.loads((out / "ranking.json").read_text())
    chosen = [row["z"] for row in ranking["slices"] if row["z"] < 8][:2]  # the training block's best two
    assert len(chosen) == 2 and not {1, 5} & set(chosen)  # labelled slices are not suggested again

    layer = tifffile.imread(first)
    layer[chosen] = painted_slices(truth, chosen)[chosen]  # the lab labels what suggest chose
    second = tmp_path / "labels-2.tif"
    tifffile.imwrite(second, layer)
    code, _, err = run_cli(capsys, ["sweep", tmp_path / "round1" / "job.yaml", "--dry-run",
                                       "--set", f"data.labels={second}"])  # fmt: skip
    assert code == 0 and "(4 of 8 slices hold labels)" in err, err
    _, metrics = _sweep(capsys, "few-2", images, second, tmp_path / "round2", mlflow_server.uri)
    assert 0.0 < metrics["best_val_iou"] <= 1.0


def test_scribbles_alone_train_through_sweep(module_ray, synthetic_stack, mlflow_server, tmp_path, capsys):
    truth = read_labels(synthetic_stack[1], 255)
    labels = tmp_path / "scribbles.tif"
    tifffile.imwrite(labels, scribbles(truth, 0.03, seed=1))
    _, metrics = _sweep(capsys, "scribbled", synthetic_stack[0], labels, tmp_path / "sweep", mlflow_server.uri)
    assert all(np.isfinite(metrics[key]) for key in ("best_val_iou", "val_dice", "train_loss"))


VIEW = """
import json, sys
import napari, numpy, tifffile
viewer = napari.Viewer(show=True)
viewer.add_image(tifffile.imread(sys.argv[1]), name="stack")
viewer.open(sys.argv[2], layer_type="image", name="uncertainty", colormap="magma", opacity=0.6, blending="additive")
viewer.open(sys.argv[3], layer_type="labels", name="suggested")
viewer.open(sys.argv[6], plugin="napari-ome-zarr")  # suggest --format ome-zarr: the map and its label image
layers = [{"kind": type(l).__name__, "name": l.name, "shape": list(l.data.shape), "dtype": str(l.data.dtype)}
          for l in viewer.layers]
viewer.dims.set_point(0, int(sys.argv[5]))
viewer.screenshot(sys.argv[4], canvas_only=True)
print(json.dumps(layers))
viewer.close()
"""


@needs_napari
def test_napari_opens_the_uncertainty_map_over_the_stack(synthetic_stack, tmp_path, capsys):
    from conftest import train_job
    from PIL import Image

    from dcn_ray.core import checkpoint
    from dcn_ray.core.dataset import load_data
    from dcn_ray.job.config import job_from_dict

    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 12, "eval_every": 12, "crop": 48}))
    model = tmp_path / "model.pt"
    checkpoint.save(train_job(job, (4, 8, 16), load_data(job.data)).model, model)
    out = tmp_path / "next"
    code, _, err = run_cli(capsys, ["suggest", model, synthetic_stack[0], out, "--top", "2", "--region", "64"])
    assert code == 0, err
    as_zarr = ["suggest", model, synthetic_stack[0], tmp_path / "zarr", "--top", "2", "--region", "64"]
    code, _, err = run_cli(capsys, [*as_zarr, "--format", "ome-zarr"])
    assert code == 0, err
    top = json.loads((out / "ranking.json").read_text())["tiles"][0]["z"]
    shot = Path(os.environ.get("DCN_RAY_SCREENSHOTS", tmp_path)) / "napari-suggest.png"
    maps = [out / "uncertainty.tif", out / "suggested.tif", shot, top, tmp_path / "zarr" / "uncertainty.ome.zarr"]
    done = run_viewer(VIEW, tmp_path, synthetic_stack[0], *maps)
    assert done.returncode == 0, done.stderr[-3000:]
    layers = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(layer["kind"], layer["name"], layer["shape"]) for layer in layers] == [
        ("Image", "stack", [12, 128, 128]),
        ("Image", "uncertainty", [12, 128, 128]),
        ("Labels", "suggested", [12, 128, 128]),
        ("Image", "uncertainty.ome", [12, 128, 128]),
        ("Labels", "labels/labels/suggested", [12, 128, 128]),
    ], layers
    assert layers[1]["dtype"] == layers[3]["dtype"] == "float32"
    picture = np.asarray(Image.open(shot).convert("L"))
    assert picture.std() > 10  # the canvas shows the slice and the map, not an empty screen
