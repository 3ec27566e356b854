"""napari opens a `predict` OME-Zarr output as a biologist would: the probabilities as an image, the
mask as a label layer, at the input's physical scale, beside the raw input (napari-ome-zarr, a real
viewer on a virtual screen)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import run_cli, small_job, train_job
from napari_view import needs_napari, run_viewer
from PIL import Image

from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.job.config import job_from_dict

pytestmark = pytest.mark.integration
SCALE = [40.0, 4.0, 4.0]  # nm: serial-section z, pixel size in y and x

VIEW = """
import json, sys
import napari, numpy, tifffile
viewer = napari.Viewer(show=True)
viewer.add_image(tifffile.imread(sys.argv[1]), name="raw", scale=json.loads(sys.argv[3]))
viewer.open(sys.argv[2], plugin="napari-ome-zarr")
layers = [{"kind": type(l).__name__, "name": l.name, "shape": list(l.data.shape), "scale": [float(s) for s in l.scale],
           "values": sorted(int(v) for v in numpy.unique(numpy.asarray(l.data))) if type(l).__name__ == "Labels" else None}
          for l in viewer.layers]
viewer.layers[1].visible = False  # what a biologist looks at: the raw slice with the mask over it
viewer.layers[-1].visible, viewer.layers[-1].opacity = True, 0.5
viewer.reset_view()
viewer.screenshot(sys.argv[4], canvas_only=False)
print(json.dumps(layers))
viewer.close()
"""


@needs_napari
def test_napari_opens_the_output_with_its_labels_and_scale(synthetic_stack, tmp_path, capsys):
    import h5py

    raw = tmp_path / "raw.h5"  # the CREMI layout: the volume and its resolution (z, y, x) in nm
    stack = tifffile.imread(synthetic_stack[0])
    with h5py.File(raw, "w") as handle:
        handle.create_dataset("volumes/raw", data=stack)
        handle["volumes/raw"].attrs["resolution"] = SCALE
    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 40, "eval_every": 40, "batch_size": 4, "crop": 64}))
    model = tmp_path / "model.pt"
    checkpoint.save(train_job(job, (4, 8, 16), load_data(job.data)).model, model)
    out = tmp_path / "prediction.ome.zarr"
    code, _, err = run_cli(capsys, ["predict", model, f"{raw}:/volumes/raw", out, "--no-tta", "--label-image"])
    assert code == 0, err

    shot = Path(os.environ.get("DCN_RAY_SCREENSHOTS", tmp_path)) / "napari-prediction.png"
    done = run_viewer(VIEW, tmp_path, synthetic_stack[0], out, json.dumps(SCALE), shot)
    assert done.returncode == 0, done.stderr[-3000:]
    layers = json.loads(done.stdout.strip().splitlines()[-1])
    kinds = [(layer["kind"], layer["shape"], layer["scale"]) for layer in layers]
    shape = list(stack.shape)
    assert kinds == [("Image", shape, SCALE), ("Image", shape, SCALE), ("Labels", shape, SCALE)], layers
    assert layers[2]["name"].endswith("mask") and layers[2]["values"] == [0, 1]
    picture = np.asarray(Image.open(shot).convert("L"))
    assert picture.std() > 10  # the canvas shows the slice, not an empty screen
