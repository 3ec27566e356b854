"""A model family from another package (tests/plugins/dcn_ray_toy_family, found by its entry point)
through the unchanged commands: swept, predicted into an OME-Zarr volume, scored and exported."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import run_cli, small_job
from mlflow.tracking import MlflowClient
from plugin_family import toy_family
from processes import SweepDriver

pytestmark = pytest.mark.integration
SPLIT = {"train": "0:7", "val": "8:9", "test": "10:12"}


def test_a_family_of_another_package_sweeps_predicts_scores_and_exports(
    synthetic_stack, mlflow_server, tmp_path, capsys
):
    images, labels = synthetic_stack
    with toy_family(tmp_path / "site"):  # on PYTHONPATH too: the driver and its Ray workers find it
        raw = small_job(
            images, labels, name="toy", data={"split": SPLIT}, model={"family": "toy", "width": 4},
            train={"steps": 12, "eval_every": 6, "crop": 48, "batch_size": 2},
            sweep={"kernels": [[4, 8, 16]], "seeds": 2, "resources": {"gpu": 0, "cpu": 1}},
            tracking={"uri": mlflow_server.uri, "experiment": "toy"},
        )  # fmt: skip
        folder = tmp_path / "sweep"
        folder.mkdir()
        with SweepDriver(raw, folder, folder / "runs") as driver:
            code, err = driver.finish(timeout=600)
        assert code == 0, err
        client = MlflowClient(mlflow_server.uri)
        experiment = client.get_experiment_by_name("toy").experiment_id
        children = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
        assert sorted(r.data.tags["trial_key"] for r in children) == ["toy-s0", "toy-s1"]
        for run in children:
            assert run.info.status == "FINISHED" and run.data.tags["model_family"] == "toy"
            assert run.data.tags["weak_branch"] == "not applicable (toy)" and "k1" not in run.data.params
            assert run.data.params["model.toy_kernel"] == "3" and "test_iou" in run.data.metrics

        storage = ["--storage", folder / "runs"]
        out = tmp_path / "toy.ome.zarr"
        code, _, err = run_cli(capsys, ["predict", "sweep:toy", images, out, *storage, "--no-tta"])
        assert code == 0, err
        assert "toy width 4, kernel 3" in err
        code, stdout, err = run_cli(capsys, ["score", out, labels])
        assert code == 0, err
        assert "iou" in stdout.lower()

        if importlib.util.find_spec("bioimageio.core") is None:
            pytest.skip("bioimageio.core is not installed: pip install -e '.[export]'")
        import bioimageio.core

        package = tmp_path / "toy.zip"
        code, stdout, err = run_cli(
            capsys, ["export", "sweep:toy", package, *storage, "--author", "Ada Lovelace;Analytical Engines Ltd"]
        )
        assert code == 0, err
        summary = bioimageio.core.test_model(package)
        assert summary.status == "passed", summary.format()
